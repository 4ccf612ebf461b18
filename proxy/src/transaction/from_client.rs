//! The client's side of a transaction-mode session: its complete messages go to the
//! server, rewritten by `statements`, after attaching a server connection (made to
//! match the client) when it holds none; a batch is written whole while whatever the
//! server sends meanwhile is relayed back. Messages a client sends outside a
//! transaction that need no server are answered without one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use wire::messages::tag;

use super::attached::{header_at, Attached, READ_BUFFER};
use super::client::{Client, End, KEPT_BATCH_ROOM};
use crate::cancel::CancelTarget;
use crate::error::ClientError;
use crate::goodbye::terminated;
use crate::login::checkout;
use crate::quota;
use crate::session_state::PinReason;

/// What happened first while a batch was being written: some of it was written, or
/// the server sent something meanwhile.
enum Step {
    Wrote(std::io::Result<usize>),
    Read(std::io::Result<usize>),
}

/// While writing a client batch, server output buffered beyond this waits.
const DRAIN_LIMIT: usize = 1 << 20;

/// A batch for the server is written once it is this long: statements prepared again
/// for the client's Binds can make it far longer than what the client sent.
const MAX_BATCH: usize = 64 * 1024;

impl Client<'_> {
    /// Forwards the client's complete messages, attaching a server first if needed.
    pub(super) async fn on_client_bytes(
        &mut self,
        cbuf: &mut BytesMut,
        attached: &mut Option<Attached>,
    ) -> Option<End> {
        let mut out = std::mem::take(&mut self.batch);
        let end = self.forward_client_bytes(cbuf, attached, &mut out).await;
        out.clear();
        if out.capacity() <= KEPT_BATCH_ROOM {
            self.batch = out;
        }
        end
    }

    /// [`Self::on_client_bytes`], building the batches for the server in `out`
    /// (empty).
    async fn forward_client_bytes(
        &mut self,
        cbuf: &mut BytesMut,
        attached: &mut Option<Attached>,
        out: &mut BytesMut,
    ) -> Option<End> {
        // Answers Sluice gives itself; they precede anything a server will answer.
        let mut local = BytesMut::new();
        // When these messages arrived (read again after waiting for a server or for
        // one to take a batch, so a request's clock starts when it is sent).
        let mut now = Instant::now();
        loop {
            // The rest of a message too large to hold, forwarded (or skipped) as it
            // arrives.
            if self.skip > 0 {
                let n = self.skip.min(cbuf.len());
                cbuf.advance(n);
                self.skip -= n;
                if cbuf.is_empty() {
                    break;
                }
                continue;
            }
            if let Some(a) = attached.as_mut().filter(|a| a.inflow > 0) {
                let n = a.inflow.min(cbuf.len());
                out.extend_from_slice(&cbuf[..n]);
                cbuf.advance(n);
                a.inflow -= n;
                if cbuf.is_empty() {
                    break;
                }
                continue;
            }
            let cap = self.proxy.config.max_client_message_buffer;
            // (A malformed length is split_frame's to report.)
            if let Ok(Some((tag, len))) = header_at(cbuf, 0) {
                if len + 1 > cap {
                    let body_len = len - 4;
                    match Box::pin(
                        self.start_stream(tag, body_len, cbuf, attached, out, &mut local),
                    )
                    .await
                    {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(end) => return Some(end),
                    }
                }
            }
            let frame = match split_frame(cbuf, DEFAULT_MAX_FRAME_LEN) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Some(End::Failed(ClientError::Protocol(e.to_string()))),
            };
            self.active_at = now;
            if frame.tag == tag::QUERY || frame.tag == tag::EXECUTE {
                let pool = &self.pool;
                if let Err(e) = self.gate.queries(1, || pool.settings().max_wait).await {
                    return Some(End::Failed(e));
                }
                if self.gate.limits_queries() {
                    // It may have waited for the query rate.
                    now = Instant::now();
                }
            }
            if frame.tag == tag::TERMINATE {
                if !out.is_empty() {
                    if let Some(end) = self.send(attached, out).await {
                        return Some(end);
                    }
                }
                return Some(End::ClientLeft);
            }
            let (frame, databases) = self.watch_session_state(frame);
            let frame = self.screen_for_quota(frame);
            for database in databases {
                // Sluice's idle connections would make it fail "being accessed by
                // other users"; the client's own sessions elsewhere still count.
                let closed = self
                    .proxy
                    .pools
                    .close_idle_of(&self.pool.key.tenant, &database)
                    .await;
                tracing::info!(database, closed, "idle server connections to a database closed before a statement that needs it free");
            }
            if attached.is_none() {
                if self.statements.answer_locally(&frame, &mut local) {
                    continue;
                }
                if !local.is_empty() {
                    if self.stream.write_all(&local).await.is_err() {
                        return Some(End::ClientLeft);
                    }
                    local.clear();
                }
                match self.attach().await {
                    Ok(a) => *attached = Some(a),
                    Err(e) => return Some(End::Failed(e)),
                }
                now = Instant::now();
            }
            let a = attached.as_mut().expect("attached above");
            if a.read_only != self.gate.disk.full() && a.idle() && out.is_empty() {
                // A pinned client between transactions: its connection follows the
                // tenant's watermark now.
                if let Err(e) = self.follow_quota(a).await {
                    return Some(e);
                }
            }
            // A Query that only frees space, at the start of a transaction, runs
            // read-write in a transaction of its own (quota.rs).
            let frame = match quota::freeing_query(frame.tag, &frame.body)
                .filter(|_| a.read_only && a.idle())
            {
                Some(sql) => {
                    a.lifted += 1;
                    let mut lifted = quota::lifted(sql);
                    wire::frame::Frame {
                        tag: frame.tag,
                        body: lifted.split_off(HEADER_LEN).freeze(),
                    }
                }
                None => frame,
            };
            self.pool.stats.client_message(frame.tag);
            self.statements
                .rewrite(&frame, &mut a.sending(frame.tag, now), out);
            if out.len() >= MAX_BATCH {
                if let Some(end) = self.send(attached, out).await {
                    return Some(end);
                }
                out.clear();
                now = Instant::now();
            }
        }
        if !local.is_empty() {
            if self.stream.write_all(&local).await.is_err() {
                return Some(End::ClientLeft);
            }
            let _ = self.stream.flush().await;
        }
        if !out.is_empty() {
            return self.send(attached, out).await;
        }
        None
    }

    /// The start of a message over `max_client_message_buffer` (`body_len` bytes of
    /// body) at the front of `cbuf`: a Query, FunctionCall, CopyData or Bind is
    /// forwarded as it arrives, once its head is here (a server attached first; the
    /// message holds it until the last byte is through); CopyData outside COPY is
    /// skipped, as Postgres ignores it; any other type must be held whole and is
    /// refused. True once streaming has begun, false while the head is incomplete.
    async fn start_stream(
        &mut self,
        tag: u8,
        body_len: usize,
        cbuf: &mut BytesMut,
        attached: &mut Option<Attached>,
        out: &mut BytesMut,
        local: &mut BytesMut,
    ) -> Result<bool, End> {
        let too_large = || {
            End::Failed(ClientError::MessageTooLarge {
                len: body_len + HEADER_LEN,
                limit: self.proxy.config.max_client_message_buffer,
            })
        };
        if !matches!(
            tag,
            tag::QUERY | tag::FUNCTION_CALL | tag::COPY_DATA | tag::BIND
        ) {
            return Err(too_large());
        }
        let head = &cbuf[HEADER_LEN..cbuf.len().min(HEADER_LEN + body_len)];
        if tag == tag::BIND && head.iter().filter(|&&b| b == 0).count() < 2 {
            // A Bind's names come first; they must fit the read buffer.
            return if head.len() >= READ_BUFFER {
                Err(too_large())
            } else {
                Ok(false)
            };
        }
        self.active_at = Instant::now();
        if tag == tag::QUERY {
            let pool = &self.pool;
            if let Err(e) = self.gate.queries(1, || pool.settings().max_wait).await {
                return Err(End::Failed(e));
            }
        }
        if attached.is_none() {
            if tag == tag::COPY_DATA {
                self.skip = HEADER_LEN + body_len;
                return Ok(true);
            }
            if !local.is_empty() {
                if self.stream.write_all(local).await.is_err() {
                    return Err(End::ClientLeft);
                }
                local.clear();
            }
            *attached = Some(self.attach().await.map_err(End::Failed)?);
        }
        if tag == tag::QUERY {
            // Its text is not looked into: it may make any session state.
            self.pin(PinReason::Unscanned);
        }
        let a = attached.as_mut().expect("attached above");
        self.pool.stats.client_message(tag);
        let head = &cbuf[HEADER_LEN..cbuf.len().min(HEADER_LEN + body_len)];
        let replaced = self
            .statements
            .stream_head(
                tag,
                body_len,
                head,
                &mut a.sending(tag, Instant::now()),
                out,
            )
            .expect("a Bind's names are here");
        cbuf.advance(HEADER_LEN + replaced);
        a.inflow = body_len - replaced;
        Ok(true)
    }

    /// Writes a batch to the server. While the server is not taking it, whatever the
    /// server sends is relayed to the client meanwhile: a server blocked writing
    /// results stops reading, and must not wait for Sluice while Sluice waits for it.
    pub(super) async fn send(
        &mut self,
        attached: &mut Option<Attached>,
        bytes: &[u8],
    ) -> Option<End> {
        self.pool
            .stats
            .bytes_from_clients
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.tally.from_client(bytes.len());
        let mut written = 0;
        if let Some(a) = attached.as_mut() {
            a.writing = true;
            // From now on the client's own cancel may act on what it sent.
            self.cancel.running(a.in_flight() || a.unsynced);
        }
        while written < bytes.len() {
            let a = attached.as_mut()?;
            let Attached { server, buf, .. } = a;
            let stream = server.conn().stream_mut();
            // Writing and, meanwhile, reading one stream: both polled in turn on the
            // one `&mut` (no split halves, which would cost an allocation and a lock
            // per poll); each registers its own wake-up.
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(n) = pin!(stream.write(&bytes[written..])).poll(cx) {
                    return Poll::Ready(Step::Wrote(n));
                }
                if buf.len() < DRAIN_LIMIT {
                    if let Poll::Ready(n) = pin!(stream.read_buf(&mut *buf)).poll(cx) {
                        return Poll::Ready(Step::Read(n));
                    }
                }
                Poll::Pending
            })
            .await;
            let drained = match step {
                Step::Wrote(Ok(0)) => {
                    return Some(End::ServerGone("server stopped reading".into()))
                }
                Step::Wrote(Ok(n)) => {
                    written += n;
                    false
                }
                Step::Read(Ok(0)) => {
                    return Some(End::ServerGone("server closed the connection".into()))
                }
                Step::Read(Ok(_)) => true,
                Step::Wrote(Err(e)) | Step::Read(Err(e)) => {
                    return Some(End::ServerGone(e.to_string()))
                }
            };
            if drained {
                // `writing` keeps the connection attached: it has part of a message.
                if let Some(end) = self.on_server_bytes(attached).await {
                    return Some(end);
                }
            }
        }
        let a = attached.as_mut()?;
        if let Err(e) = a.server.conn().stream_mut().flush().await {
            return Some(End::ServerGone(e.to_string()));
        }
        a.writing = false;
        // What was drained meanwhile may have finished the client's last request.
        self.release_if_idle(attached).await;
        None
    }

    /// A Query or Parse that would let a transaction write while the tenant is over
    /// its disk quota, swapped for one that fails with 53100 (quota.rs).
    fn screen_for_quota(&self, frame: wire::frame::Frame) -> wire::frame::Frame {
        if !matches!(frame.tag, tag::QUERY | tag::PARSE) || !self.gate.disk.full() {
            return frame;
        }
        let message = self.gate.disk.refusal(&self.tenant);
        match crate::quota::screen(frame.tag, &frame.body, &message) {
            Some(mut instead) => wire::frame::Frame {
                tag: frame.tag,
                body: instead.split_off(HEADER_LEN).freeze(),
            },
            None => frame,
        }
    }

    /// Makes the idle attached connection of a pinned client read-only, or lets it
    /// write again, as the tenant's watermark now says.
    async fn follow_quota(&mut self, a: &mut Attached) -> Result<(), End> {
        let full = self.gate.disk.full();
        let view: Vec<(String, String)> = self
            .settings
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(crate::quota::SETTING))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sql = if full {
            crate::quota::FORCE.to_owned()
        } else {
            crate::quota::restore(&view)
        };
        match a.server.conn().simple_query(&sql).await {
            Ok(outcome) if outcome.error.is_none() => {
                a.read_only = full;
                Ok(())
            }
            Ok(outcome) => Err(End::Failed(ClientError::BackendRefused(
                outcome.error.expect("checked"),
            ))),
            Err(e) => Err(End::ServerGone(e.to_string())),
        }
    }

    /// Takes a server connection from the pool and makes it match this client.
    pub(super) async fn attach(&mut self) -> Result<Attached, ClientError> {
        self.registered.waiting();
        let mut server = tokio::select! {
            server = checkout(self.proxy, &self.pool, &self.credential) => server?,
            // A client waiting for a connection (a full pool, a PAUSE) ends at once
            // when its tenant's sessions are ended (KILL, a suspension), not at max_wait.
            () = self.ending.cancelled() => return Err(terminated(self.proxy, &self.gate)),
        };
        server.lend_to(self.registered);
        // A tenant over its disk quota gets read-only transactions (quota.rs); the
        // client's own view of the setting stays as it was.
        let read_only = self.gate.disk.full();
        let own = self
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(move |(k, _)| !(read_only && k.eq_ignore_ascii_case(crate::quota::SETTING)));
        let forced = read_only.then_some((crate::quota::SETTING, "on"));
        crate::params::sync(server.conn(), own.chain(forced), &self.tenant).await?;
        let conn = server.conn();
        // The client now sees what the server reports, in the server's spelling
        // (`iso` becomes `ISO, MDY`), so the next sync finds nothing to change.
        for (name, value) in self.settings.iter_mut() {
            if read_only && name.eq_ignore_ascii_case(crate::quota::SETTING) {
                continue;
            }
            if let Some((_, reported)) = conn
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                value.clone_from(reported);
            }
        }
        if let Some(key) = conn.cancel_key {
            let cancelled = self.cancel.set_target(Some(CancelTarget {
                addr: conn.addr.clone(),
                key,
            }));
            debug_assert!(
                !cancelled,
                "the key pointed at no connection between attachments"
            );
        }
        let now = Instant::now();
        // The connection's own buffer, grown once to the relay's size and kept with it.
        let mut buf = server.conn().lend_buffer();
        buf.reserve(READ_BUFFER);
        Ok(Attached {
            server,
            buf,
            pending: VecDeque::new(),
            unsynced: false,
            status: tag::STATUS_IDLE,
            request_started: now,
            cancelled: false,
            cancel_sent: false,
            idle_since: now,
            passthrough: 0,
            writing: false,
            copy_in: false,
            unnamed_here: false,
            inflow: 0,
            read_only,
            lifted: 0,
        })
    }
}
