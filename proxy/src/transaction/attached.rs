//! The server connection a transaction-mode client holds during one transaction
//! ([`Attached`]): what is still owed in each direction, which limit runs next, and
//! reading the server's stream (message headers, or nothing while none is attached).

use std::collections::VecDeque;

use bytes::BytesMut;
use pooler::PooledConn;
use router::Limits;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use wire::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use wire::messages::tag;

use super::statements::{Conversation, Pending};

/// The read buffer of a side that is busy: an attached server's, and a client's while
/// it has a message half-read or a server attached.
pub(super) const READ_BUFFER: usize = 16 * 1024;

/// The server connection a client holds during one transaction.
pub(super) struct Attached {
    pub(super) server: PooledConn,
    pub(super) buf: BytesMut,
    pub(super) pending: VecDeque<Pending>,
    /// Messages sent after the last Sync/Query (so a ReadyForQuery is not the end).
    pub(super) unsynced: bool,
    pub(super) status: u8,
    /// When the request now running was sent (for `query_timeout`), and whether it
    /// has been cancelled already.
    pub(super) request_started: Instant,
    pub(super) cancelled: bool,
    /// A cancel was sent during this attachment: the connection is not reused.
    pub(super) cancel_sent: bool,
    /// When the server last became idle inside a transaction.
    pub(super) idle_since: Instant,
    /// Bytes of a large message still to be forwarded as they arrive, unbuffered.
    pub(super) passthrough: usize,
    /// A batch is being written: the server has part of a message.
    pub(super) writing: bool,
    /// The server is in COPY FROM STDIN (it ignores Syncs until CopyDone/CopyFail).
    pub(super) copy_in: bool,
    /// This client's unnamed statement is prepared on this server connection.
    pub(super) unnamed_here: bool,
    /// Bytes of a client message too large to hold still to be forwarded as they
    /// arrive: the server has part of it.
    pub(super) inflow: usize,
    /// The connection runs with `default_transaction_read_only = on` because the
    /// tenant is over its disk quota (quota.rs).
    pub(super) read_only: bool,
    /// Freeing Queries sent read-write (quota.rs `lifted`) whose `SET` is not answered
    /// yet: its CommandComplete is dropped.
    pub(super) lifted: u32,
}

impl Attached {
    /// The server connection, with its read buffer given back (see
    /// [`pooler::ServerConn::lend_buffer`]).
    pub(super) fn into_server(self) -> PooledConn {
        let Attached {
            mut server, buf, ..
        } = self;
        server.conn().return_buffer(buf);
        server
    }

    /// A client message of type `tag` is on its way to the server (read at `now`):
    /// the clocks of the limits restart, and what its answers will be is recorded in
    /// the `Conversation` returned (for `statements` to fill in).
    pub(super) fn sending(&mut self, tag: u8, now: Instant) -> Conversation<'_> {
        if !self.in_flight() {
            self.request_started = now;
        }
        // The client is talking: it is not idle in its transaction.
        self.idle_since = now;
        self.unsynced = match tag {
            tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => false,
            // COPY data belongs to the Query that started it.
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => self.unsynced,
            _ => true,
        };
        Conversation {
            prepared: &mut self.server.conn().prepared,
            pending: &mut self.pending,
            copy_in: &mut self.copy_in,
            unnamed_here: &mut self.unnamed_here,
        }
    }

    pub(super) fn in_flight(&self) -> bool {
        self.pending.iter().any(Pending::is_ready)
    }

    /// The next moment a limit needs attention, if any applies now.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight() {
            limits
                .query_timeout
                .filter(|_| !self.cancelled)
                .map(|t| self.request_started + t)
        } else if self.status != tag::STATUS_IDLE {
            limits
                .idle_in_transaction_timeout
                .map(|t| self.idle_since + t)
        } else {
            None
        }
    }

    /// Nothing is owed in either direction and no transaction is open: the server
    /// connection can go back to the pool.
    pub(super) fn idle(&self) -> bool {
        self.status == tag::STATUS_IDLE && self.at_rest()
    }

    /// At a clean boundary (a transaction may be open): safe to roll back and reuse.
    pub(super) fn at_rest(&self) -> bool {
        !self.unsynced
            && !self.in_flight()
            && !self.copy_in
            && !self.writing
            && self.buf.is_empty()
            && self.passthrough == 0
            && self.inflow == 0
    }
}

/// Reads from the attached server, or waits forever when there is none.
pub(super) async fn read_server(attached: &mut Option<Attached>) -> std::io::Result<usize> {
    match attached {
        Some(a) => {
            let Attached { server, buf, .. } = a;
            server.conn().stream_mut().read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

/// The tag and length (after the tag) of the message starting at `pos`, once its
/// header is complete.
pub(super) fn header_at(buf: &[u8], pos: usize) -> Result<Option<(u8, usize)>, String> {
    let Some(header) = buf.get(pos..pos + HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=DEFAULT_MAX_FRAME_LEN).contains(&len) {
        return Err(format!("server sent a message of length {len}"));
    }
    Ok(Some((header[0], len)))
}
