//! One transaction-mode client as the relay sees it ([`Client`]): its stream, its pool,
//! the settings it believes it has, its statements and limits; how its session ends
//! ([`End`]); and letting its server connection go once nothing is owed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;

use pooler::{Pool, Release};
use router::Limits;
use tokio::time::Instant;
use wire::messages::tag;

use super::attached::Attached;
use super::statements::ClientStatements;
use crate::admit::TenantGate;
use crate::cancel::CancelHandle;
use crate::error::ClientError;
use crate::relay::Tally;
use crate::session_state::PinReason;
use crate::state::Proxy;
use crate::stream::ClientStream;
use pooler::registry::ClientEntry;
use router::memory::Grant;

/// Reported parameters a client may change with SET, and so may differ between the
/// client's view and a server connection's.
pub(super) const SETTABLE_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
];

/// How a transaction-mode session ended.
pub(super) enum End {
    ClientLeft,
    ServerGone(String),
    /// The server sent a FATAL or PANIC error (relayed) and is going away.
    ServerEnded(String),
    Failed(ClientError),
    Terminated,
    /// Between transactions while this process drains: the client goes to the
    /// successor (`successor.rs`).
    Moved,
}

pub(super) struct Client<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) tally: &'a Tally,
    /// Its entry in the registry (SHOW CLIENTS): waiting, holding a server, or idle.
    pub(super) registered: &'a ClientEntry,
    pub(super) pool: Arc<Pool>,
    pub(super) tenant: String,
    /// The client's address (from the PROXY header behind a balancer).
    pub(super) addr: std::net::SocketAddr,
    pub(super) stream: ClientStream,
    pub(super) cancel: CancelHandle,
    /// What the client believes its session settings are.
    pub(super) settings: BTreeMap<String, String>,
    pub(super) statements: ClientStatements,
    pub(super) credential: pooler::ServerCredential,
    pub(super) limits: Limits,
    pub(super) gate: Arc<TenantGate>,
    /// The tenant's session token at login (a suspension with `terminate`, KILL, the
    /// end of shutdown's grace): it ends the client's loop and a wait for a server
    /// connection alike.
    pub(super) ending: tokio_util::sync::CancellationToken,
    /// When the client last sent anything (for `client_idle_timeout`).
    pub(super) active_at: Instant,
    /// The parameters the server reports (lowercase): a `SET` of one of them is
    /// carried across server connections by `settings`, not by pinning.
    pub(super) reported: Vec<String>,
    /// The session state the client holds on its server connection: while any, it
    /// keeps that connection (see `pinning`).
    pub(super) pins: Pins,
    /// A request that pins was sent since the last ReadyForQuery: a `DISCARD ALL`
    /// answered meanwhile does not unpin (the request may make state after it).
    pub(super) pins_pending: bool,
    /// Bytes of a client message too large to hold still to be read and dropped
    /// (CopyData outside COPY, which Postgres ignores).
    pub(super) skip: usize,
    /// What this client holds of the memory budget: a message held whole beyond the
    /// read buffer, and its statement texts.
    pub(super) memory: Grant,
    /// The room a batch for the server is built in, kept from one batch to the next
    /// (up to [`KEPT_BATCH_ROOM`]) so that relaying a request allocates nothing.
    pub(super) batch: BytesMut,
}

/// The most room [`Client::batch`] keeps between batches: enough for the requests of
/// most clients, small beside an idle client's read buffer.
pub(super) const KEPT_BATCH_ROOM: usize = 1024;

/// The reasons a client keeps its server connection, as a set of
/// [`PinReason::index`] bits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pins(u16);

impl Pins {
    pub(super) fn any(self) -> bool {
        self.0 != 0
    }

    pub(super) fn has(self, reason: PinReason) -> bool {
        self.0 & (1 << reason.index()) != 0
    }

    pub(super) fn add(&mut self, reason: PinReason) {
        self.0 |= 1 << reason.index();
    }
}

impl Client<'_> {
    /// Lets the server connection go if the client owes and is owed nothing. A
    /// connection a cancel was sent to (for a timeout, or by the client) is closed
    /// instead: the cancel signal may still be in flight and must not hit another
    /// client's query.
    pub(super) async fn release_if_idle(&mut self, attached: &mut Option<Attached>) {
        if self.pins.any() || !attached.as_ref().is_some_and(Attached::idle) {
            return;
        }
        let a = attached.take().expect("checked");
        let cancelled = self.cancel.set_target(None);
        let release = if a.cancel_sent || cancelled {
            Release::Close
        } else {
            Release::AtReadyForQuery {
                status: tag::STATUS_IDLE,
                discard: false,
            }
        };
        // At once when no I/O is needed (the usual case); otherwise boxed, so that the
        // reset's state is not part of every client's task.
        if let Some(server) = a.into_server().release_idle(release) {
            Box::pin(server.release(release)).await;
        }
        self.registered.detached();
    }
}
