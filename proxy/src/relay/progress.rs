//! What both directions of the session-mode relay know about the conversation
//! ([`Progress`]): the requests the client sent and the answers the server gave, the
//! timeouts' clocks, and whether a client that closed its side is still owed answers,
//! including what a COPY FROM STDIN does to the count (the server ignores the Syncs it
//! reads during one).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

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
    /// What follows the Executes of the extended-protocol batch the client is sending
    /// (since its last Query, FunctionCall or counted Sync), and of the batch its last
    /// counted Sync closed: whether a COPY FROM STDIN one of them begins would still be
    /// running when the server reads that Sync (see [`Batch`]).
    pub(super) batch: AtomicU8,
    pub(super) synced_batch: AtomicU8,
    /// The server is in COPY FROM STDIN and the client has not ended it: the server
    /// ignores its Syncs meanwhile, so they are not counted in `expected_ready`.
    pub(super) copy_in: AtomicBool,
    /// The counts may be off, so the end of the client's answers cannot be told and
    /// the connection is never reused: a COPY FROM STDIN started with more than its
    /// own request outstanding, or the client broke the protocol in a way that makes
    /// the server swallow requests (a Query or FunctionCall after extended-protocol
    /// messages without a Sync, which an error among them makes the server discard;
    /// anything but COPY messages, Sync or Flush during a COPY FROM STDIN, which ends
    /// it with an error that consumes the message).
    pub(super) uncertain: AtomicBool,
    /// The client closed its side at a message boundary: the server side ends once
    /// the answers it is owed have been delivered. `client_done_notify` wakes it.
    pub(super) client_done: AtomicBool,
    pub(super) client_done_notify: Notify,
    /// Wakes the watchdog when any of the above changes.
    pub(super) changed: Notify,
    /// The client's side stopped at rest for the tenant's disk watermark: the server's
    /// side stops at its next message boundary (`pause_notify` wakes it).
    pub(super) pause: AtomicBool,
    pub(super) pause_notify: Notify,
    /// Freeing Queries sent read-write (quota.rs `lifted`) whose `SET` the server has
    /// not answered yet: its CommandComplete is dropped.
    pub(super) lifted: std::sync::atomic::AtomicU32,
}

/// The Executes of an extended-protocol batch, and what the client sent after them,
/// kept as a `u8` in [`Progress::batch`]: a COPY FROM STDIN that an Execute begins
/// consumes every later message of the batch; CopyData, Flush and Sync leave it
/// running (the server ignores Syncs during one), anything else ends it (CopyDone,
/// CopyFail, or any other message, which fails it). Only then is the Sync that
/// closes the batch answered.
mod batch {
    /// No Execute yet.
    pub const NONE: u8 = 0;
    /// One Execute, followed by nothing but CopyData and Flush.
    pub const CLEAN: u8 = 1;
    /// One Execute, followed by a message that would end a COPY it began.
    pub const ENDS_COPY: u8 = 2;
    /// More than one Execute: which one a COPY belongs to cannot be told here.
    pub const MANY: u8 = 3;
}

impl Progress {
    /// A whole client message of type `msg` went by (Terminate is the relay's own),
    /// `now` nanoseconds after the relay began.
    pub(super) fn client_message(&self, msg: u8, now: u64) {
        let copying = self.copy_in.load(Ordering::Acquire);
        let swallowable = match msg {
            tag::QUERY | tag::FUNCTION_CALL => self.unsynced.load(Ordering::Acquire) || copying,
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL | tag::SYNC | tag::FLUSH => false,
            _ => copying,
        };
        if swallowable {
            self.uncertain.store(true, Ordering::Release);
        }
        match msg {
            // Postgres ignores a Sync that arrives during COPY FROM STDIN.
            tag::SYNC if self.copy_in.load(Ordering::Acquire) => {}
            tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => {
                let closed = self.batch.swap(batch::NONE, Ordering::AcqRel);
                let closed = if msg == tag::SYNC {
                    closed
                } else {
                    batch::NONE
                };
                self.synced_batch.store(closed, Ordering::Release);
                self.last_request.store(msg, Ordering::Release);
                self.copy_end_since_request.store(false, Ordering::Release);
                let before = self.expected_ready.fetch_add(1, Ordering::AcqRel);
                if before == self.seen_ready.load(Ordering::Acquire) {
                    self.request_started.store(now, Ordering::Release);
                    self.cancelled.store(false, Ordering::Release);
                }
                self.unsynced.store(false, Ordering::Release);
                self.changed.notify_one();
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                self.copy_in.store(false, Ordering::Release);
                self.copy_end_since_request.store(true, Ordering::Release);
                // The end of a COPY that an Execute began: the server then waits for
                // a Sync of the client's (after CopyFail it skips to it).
                if self.last_request.load(Ordering::Acquire) == tag::SYNC {
                    self.unsynced.store(true, Ordering::Release);
                }
            }
            tag::COPY_DATA => {}
            _ => self.unsynced.store(true, Ordering::Release),
        }
        let batch = self.batch.load(Ordering::Acquire);
        let next = match (msg, batch) {
            (tag::QUERY | tag::SYNC | tag::FUNCTION_CALL, _) => batch,
            (tag::EXECUTE, batch::NONE) => batch::CLEAN,
            (tag::EXECUTE, _) => batch::MANY,
            (tag::COPY_DATA | tag::FLUSH, _) => batch,
            (_, batch::CLEAN) => batch::ENDS_COPY,
            _ => batch,
        };
        if next != batch {
            self.batch.store(next, Ordering::Release);
        }
    }

    /// A whole server message of type `msg` (`first`: its first body byte) went by,
    /// `now` nanoseconds after the relay began. Returns how long the request it
    /// answered ran, when it is the ReadyForQuery that ends one.
    pub(super) fn server_message(&self, msg: u8, first: Option<u8>, now: u64) -> Option<Duration> {
        let mut took = None;
        if msg == tag::READY_FOR_QUERY {
            if let Some(status) = first {
                self.status.store(status, Ordering::Release);
            }
            if self.expected_ready.load(Ordering::Acquire) > self.seen_ready.load(Ordering::Acquire)
            {
                let started = self.request_started.load(Ordering::Acquire);
                took = Some(Duration::from_nanos(now.saturating_sub(started)));
            } else {
                // The answer to a request that was not counted: a Sync sent during a
                // COPY FROM STDIN the server had already ended with an error.
                self.expected_ready.fetch_add(1, Ordering::AcqRel);
            }
            self.last_ready.store(now, Ordering::Release);
            // The next pipelined request, if any, starts running now.
            self.request_started.store(now, Ordering::Release);
            self.cancelled.store(false, Ordering::Release);
            self.seen_ready.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_one();
        }
        match msg {
            tag::COPY_IN_RESPONSE | tag::COPY_BOTH_RESPONSE => self.copy_in_started(),
            // The server left COPY FROM STDIN (an error ends it too).
            tag::COMMAND_COMPLETE | tag::ERROR_RESPONSE => {
                self.copy_in.store(false, Ordering::Release)
            }
            _ => {}
        }
        took
    }

    /// Whether the client has a request on the server that is not answered yet (what
    /// its own cancel may act on).
    pub(super) fn request_running(&self) -> bool {
        self.unsynced.load(Ordering::Acquire)
            || self.copy_in.load(Ordering::Acquire)
            || self.expected_ready.load(Ordering::Acquire) > self.seen_ready.load(Ordering::Acquire)
    }

    /// Whether the conversation is settled: the counts to be trusted, the client's
    /// stream at a message boundary,
    /// no extended-protocol message after its last Sync, the server not in COPY FROM
    /// STDIN (an extended-protocol COPY's Sync is counted as answered when it begins,
    /// though the server still waits for the data), and every request answered with
    /// its ReadyForQuery. Only then may the server connection serve anyone else.
    pub(super) fn settled(&self) -> bool {
        !self.uncertain.load(Ordering::Acquire)
            && self.client_boundary.load(Ordering::Acquire)
            && !self.unsynced.load(Ordering::Acquire)
            && !self.copy_in.load(Ordering::Acquire)
            && self.expected_ready.load(Ordering::Acquire)
                == self.seen_ready.load(Ordering::Acquire)
    }

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
    /// on. An extended-protocol COPY belongs to the batch the server is reading: the
    /// one the client is still sending, or the one its last Sync closed. If the client
    /// sent a message after the Execute that ends the COPY, the COPY is over before
    /// the client could send anything more (and that Sync is answered); if not, the
    /// COPY runs and that Sync gets no answer, so it counts as answered now.
    pub(super) fn copy_in_started(&self) {
        let outstanding = self
            .expected_ready
            .load(Ordering::Acquire)
            .saturating_sub(self.seen_ready.load(Ordering::Acquire));
        match (outstanding, self.last_request.load(Ordering::Acquire)) {
            (0, _) => match self.batch.load(Ordering::Acquire) {
                batch::ENDS_COPY => return,
                batch::MANY => self.uncertain.store(true, Ordering::Release),
                _ => {}
            },
            (1, tag::QUERY) => {
                if self.copy_end_since_request.load(Ordering::Acquire) {
                    // The client sent the COPY's data and its end without waiting.
                    return;
                }
            }
            (1, tag::SYNC) => match self.synced_batch.load(Ordering::Acquire) {
                batch::CLEAN => {
                    self.seen_ready.fetch_add(1, Ordering::AcqRel);
                    if self.copy_end_since_request.load(Ordering::Acquire) {
                        // The client sent the COPY's data and its end after the Sync.
                        return;
                    }
                }
                batch::ENDS_COPY => return,
                _ => self.uncertain.store(true, Ordering::Release),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(progress: &Progress, messages: &[u8]) {
        for &msg in messages {
            progress.client_message(msg, 0);
        }
    }

    fn server(progress: &Progress, messages: &[u8]) {
        for &msg in messages {
            let first = (msg == tag::READY_FOR_QUERY).then_some(b'I');
            progress.server_message(msg, first, 0);
        }
    }

    #[test]
    fn a_message_after_a_copy_starting_execute_ends_the_copy_so_its_sync_is_answered() {
        let progress = Progress::default();
        progress.client_boundary.store(true, Ordering::Release);
        client(
            &progress,
            &[tag::QUERY, tag::EXECUTE, tag::PARSE, tag::SYNC],
        );
        server(&progress, &[tag::READY_FOR_QUERY, tag::COPY_IN_RESPONSE]);
        server(&progress, &[tag::ERROR_RESPONSE]);
        assert!(
            !progress.settled(),
            "the Sync after the Parse is still owed"
        );
        server(&progress, &[tag::READY_FOR_QUERY]);
        assert!(progress.settled());
    }

    #[test]
    fn copy_data_and_its_end_before_the_sync_leave_the_sync_answered() {
        let progress = Progress::default();
        progress.client_boundary.store(true, Ordering::Release);
        let batch = [tag::EXECUTE, tag::COPY_DATA, tag::COPY_DONE, tag::SYNC];
        client(&progress, &batch);
        server(&progress, &[tag::COPY_IN_RESPONSE, tag::COMMAND_COMPLETE]);
        assert!(!progress.settled(), "the Sync after CopyDone is still owed");
        server(&progress, &[tag::READY_FOR_QUERY]);
        assert!(progress.settled());
    }

    #[test]
    fn a_sync_read_during_the_copy_is_ignored_and_the_copy_waits_for_its_data() {
        let progress = Progress::default();
        progress.client_boundary.store(true, Ordering::Release);
        client(&progress, &[tag::PARSE, tag::BIND, tag::EXECUTE, tag::SYNC]);
        server(&progress, &[tag::COPY_IN_RESPONSE]);
        assert!(!progress.settled(), "the server waits for the COPY's data");
        client(&progress, &[tag::COPY_DATA, tag::COPY_DONE, tag::SYNC]);
        server(&progress, &[tag::COMMAND_COMPLETE, tag::READY_FOR_QUERY]);
        assert!(progress.settled());
    }

    #[test]
    fn two_executes_before_a_copy_make_the_counts_uncertain() {
        let progress = Progress::default();
        client(&progress, &[tag::EXECUTE, tag::EXECUTE, tag::SYNC]);
        server(&progress, &[tag::COMMAND_COMPLETE, tag::COPY_IN_RESPONSE]);
        assert!(progress.uncertain.load(Ordering::Acquire));
    }
}
