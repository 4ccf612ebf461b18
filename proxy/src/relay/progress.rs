//! What both directions of the session-mode relay know about the conversation
//! ([`Progress`]): the requests the client sent and the answers the server gave, the
//! timeouts' clocks, and whether a client that closed its side is still owed answers,
//! including what a COPY FROM STDIN does to the count (the server ignores the Syncs it
//! reads during one).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use pooler::Release;
use tokio::sync::Notify;
use wire::messages::tag;

/// What both directions know about the conversation.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// ReadyForQuery messages the client's requests will produce (one per Query,
    /// Sync and FunctionCall).
    pub(super) expected_ready: AtomicU64,
    /// ReadyForQuery messages the server has sent.
    pub(super) seen_ready: AtomicU64,
    /// Transaction status of the last ReadyForQuery.
    pub(super) status: AtomicU8,
    /// Extended-protocol messages sent after the last Sync.
    pub(super) unsynced: AtomicBool,
    /// The client sent anything at all.
    pub(super) used: AtomicBool,
    /// The client's stream is at a message boundary.
    pub(super) client_boundary: AtomicBool,
    /// Nanoseconds since the relay began: when the running request was sent, when
    /// the server last reported ReadyForQuery, and when the client last sent bytes.
    pub(super) request_started: AtomicU64,
    pub(super) last_ready: AtomicU64,
    pub(super) client_active: AtomicU64,
    /// The running request was cancelled for its timeout already.
    pub(super) cancelled: AtomicBool,
    /// A cancel was sent to the server connection for a timeout: its signal may land
    /// after the query ended, so the connection is never reused.
    pub(super) cancel_sent: AtomicBool,
    /// The client's queries were refused by the tenant's query rate.
    pub(super) rate_limited: AtomicBool,
    /// The type of the client's last Query, FunctionCall or Sync, to tell which one a
    /// COPY FROM STDIN belongs to, and whether a CopyDone or CopyFail followed it.
    pub(super) last_request: AtomicU8,
    pub(super) copy_end_since_request: AtomicBool,
    /// The server is in COPY FROM STDIN and the client has not ended it: the server
    /// ignores its Syncs meanwhile, so they are not counted in `expected_ready`.
    pub(super) copy_in: AtomicBool,
    /// A COPY FROM STDIN started with more than its own request outstanding: the
    /// counts may be off, so the end of the client's answers cannot be told.
    pub(super) uncertain: AtomicBool,
    /// The client closed its side at a message boundary: the server side ends once
    /// the answers it is owed have been delivered. `client_done_notify` wakes it.
    pub(super) client_done: AtomicBool,
    pub(super) client_done_notify: Notify,
    /// Wakes the watchdog when any of the above changes.
    pub(super) changed: Notify,
}

impl Progress {
    /// How a server connection at rest goes back to its pool: reset and reused, unless
    /// a cancel was sent to it (then closed).
    pub(super) fn at_rest(&self, discard: bool) -> Release {
        if self.cancel_sent.load(Ordering::Acquire) {
            Release::Close
        } else {
            Release::AtReadyForQuery {
                status: self.status.load(Ordering::Acquire),
                discard,
            }
        }
    }

    /// The server entered COPY FROM STDIN for the request it is answering. Until the
    /// client ends the COPY, the server ignores its Syncs, so none is counted from now
    /// on; a Sync the client already sent after that request (the one after the Execute
    /// of an extended-protocol COPY) gets no answer either, so it counts as answered.
    pub(super) fn copy_in_started(&self) {
        let outstanding = self
            .expected_ready
            .load(Ordering::Acquire)
            .saturating_sub(self.seen_ready.load(Ordering::Acquire));
        match (outstanding, self.last_request.load(Ordering::Acquire)) {
            (0, _) => {}
            (1, tag::QUERY) => {
                if self.copy_end_since_request.load(Ordering::Acquire) {
                    // The client sent the COPY's data and its end without waiting.
                    return;
                }
            }
            (1, tag::SYNC) => {
                self.seen_ready.fetch_add(1, Ordering::AcqRel);
            }
            // Requests pipelined after the COPY: which Syncs the server reads during it
            // cannot be told from here.
            _ => self.uncertain.store(true, Ordering::Release),
        }
        self.copy_in.store(true, Ordering::Release);
    }

    /// Whether the server side may end for a client that closed its side: `None` while
    /// the client is still there or still owed answers; `Some(true)` once every answer
    /// has been delivered (the connection is then judged as usual), or when which are
    /// owed cannot be told (the counts then disagree and it is not reused); `Some(false)`
    /// at once if the server waits for COPY data that can no longer come.
    pub(super) fn client_may_go(&self) -> Option<bool> {
        if !self.client_done.load(Ordering::Acquire) {
            return None;
        }
        if self.copy_in.load(Ordering::Acquire) {
            return Some(false);
        }
        let owed =
            self.expected_ready.load(Ordering::Acquire) > self.seen_ready.load(Ordering::Acquire);
        (!owed || self.uncertain.load(Ordering::Acquire)).then_some(true)
    }
}
