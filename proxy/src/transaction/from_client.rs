//! The client's side of a transaction-mode session: its complete messages go to the
//! server, rewritten by `statements`, after attaching a server connection (made to
//! match the client) when it holds none; a batch is written whole while whatever the
//! server sends meanwhile is relayed back. Messages a client sends outside a
//! transaction that need no server are answered without one.

use std::collections::VecDeque;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages::tag;

use super::attached::{Attached, READ_BUFFER};
use super::client::{Client, End};
use super::statements::Conversation;
use crate::cancel::CancelTarget;
use crate::error::ClientError;
use crate::login::checkout;

/// While writing a client batch, server output buffered beyond this waits.
const DRAIN_LIMIT: usize = 1 << 20;

impl Client<'_> {
    /// Forwards the client's complete messages, attaching a server first if needed.
    pub(super) async fn on_client_bytes(
        &mut self,
        cbuf: &mut BytesMut,
        attached: &mut Option<Attached>,
    ) -> Option<End> {
        let mut out = BytesMut::new();
        // Answers Sluice gives itself; they precede anything a server will answer.
        let mut local = BytesMut::new();
        loop {
            let frame = match split_frame(cbuf, DEFAULT_MAX_FRAME_LEN) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Some(End::Failed(ClientError::Protocol(e.to_string()))),
            };
            self.active_at = Instant::now();
            if frame.tag == tag::QUERY || frame.tag == tag::EXECUTE {
                let pool = &self.pool;
                if let Err(e) = self.gate.queries(1, || pool.settings().max_wait).await {
                    return Some(End::Failed(e));
                }
            }
            if frame.tag == tag::TERMINATE {
                if !out.is_empty() {
                    if let Some(end) = self.send(attached, &out).await {
                        return Some(end);
                    }
                }
                return Some(End::ClientLeft);
            }
            let (frame, databases) = self.watch_session_state(frame);
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
            }
            let a = attached.as_mut().expect("attached above");
            self.pool.stats.client_message(frame.tag);
            let now = Instant::now();
            if !a.in_flight() {
                a.request_started = now;
            }
            // The client is talking: it is not idle in its transaction.
            a.idle_since = now;
            let mut conv = Conversation {
                prepared: &mut a.server.conn().prepared,
                pending: &mut a.pending,
                copy_in: &mut a.copy_in,
                unnamed_here: &mut a.unnamed_here,
            };
            self.statements.rewrite(&frame, &mut conv, &mut out);
            a.unsynced = match frame.tag {
                tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => false,
                // COPY data belongs to the Query that started it.
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => a.unsynced,
                _ => true,
            };
        }
        if !local.is_empty() {
            if self.stream.write_all(&local).await.is_err() {
                return Some(End::ClientLeft);
            }
            let _ = self.stream.flush().await;
        }
        if !out.is_empty() {
            return self.send(attached, &out).await;
        }
        None
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
            let (mut reader, mut writer) = tokio::io::split(server.conn().stream_mut());
            let drained = tokio::select! {
                n = writer.write(&bytes[written..]) => match n {
                    Ok(0) => return Some(End::ServerGone("server stopped reading".into())),
                    Ok(n) => {
                        written += n;
                        false
                    }
                    Err(e) => return Some(End::ServerGone(e.to_string())),
                },
                n = reader.read_buf(buf), if buf.len() < DRAIN_LIMIT => match n {
                    Ok(0) => return Some(End::ServerGone("server closed the connection".into())),
                    Ok(_) => true,
                    Err(e) => return Some(End::ServerGone(e.to_string())),
                },
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

    /// Takes a server connection from the pool and makes it match this client.
    pub(super) async fn attach(&mut self) -> Result<Attached, ClientError> {
        let mut server = checkout(self.proxy, &self.pool, &self.credential).await?;
        let settings: Vec<(String, String)> = self
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        crate::params::sync(server.conn(), &settings, &self.tenant).await?;
        let conn = server.conn();
        // The client now sees what the server reports, in the server's spelling
        // (`iso` becomes `ISO, MDY`), so the next sync finds nothing to change.
        for (name, value) in self.settings.iter_mut() {
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
        Ok(Attached {
            server,
            buf: BytesMut::with_capacity(READ_BUFFER),
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
        })
    }
}
