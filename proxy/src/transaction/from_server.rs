//! The server's side of a transaction-mode session: its complete messages go to the
//! client, except the answers to messages Sluice added itself; what they report is
//! tracked (transaction status, prepared statements, COPY, parameters), and a large
//! message Sluice need not read is streamed through as it arrives.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use wire::frame::HEADER_LEN;
use wire::messages::{self, tag};

use super::attached::{header_at, Attached};
use super::client::{Client, End, SETTABLE_REPORTED};
use super::statements::{self, Pending};
use crate::error::ClientError;
use crate::farewell;

/// Server messages longer than this are streamed rather than buffered whole.
const STREAM_ABOVE: usize = 64 * 1024;

/// Server messages whose bodies the relay reads (so they are always whole).
const INSPECTED: [u8; 4] = [
    tag::READY_FOR_QUERY,
    tag::PARSE_COMPLETE,
    tag::CLOSE_COMPLETE,
    tag::PARAMETER_STATUS,
];

impl Client<'_> {
    /// Forwards the server's complete messages, dropping answers to messages Sluice
    /// added, and lets the server go when the client is idle again.
    pub(super) async fn on_server_bytes(&mut self, attached: &mut Option<Attached>) -> Option<End> {
        // A client waiting for its answer is not idle: idleness counts from here.
        let now = Instant::now();
        self.active_at = now;
        let a = attached.as_mut()?;
        let mut out = BytesMut::new();
        // The rest of a large message being streamed goes first, untouched.
        let mut pos = a.passthrough.min(a.buf.len());
        a.passthrough -= pos;
        let mut kept_from = 0;
        // A FATAL or PANIC error: the server's last word, relayed, then the end.
        let mut last_word = None;
        while a.passthrough == 0 {
            let (msg, len) = match header_at(&a.buf, pos) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => return Some(End::ServerGone(e)),
            };
            let end = pos + 1 + len;
            if end > a.buf.len() {
                // A large message Sluice does not need to read (rows, COPY data) is
                // forwarded as it arrives, so relaying it costs no more than a buffer.
                if len > STREAM_ABOVE && !INSPECTED.contains(&msg) {
                    self.pool.stats.server_message(msg, None);
                    a.passthrough = end - a.buf.len();
                    pos = a.buf.len();
                }
                break;
            }
            let body = &a.buf[pos + HEADER_LEN..end];
            self.pool.stats.server_message(msg, body.first().copied());
            let mut drop_it = false;
            match msg {
                tag::READY_FOR_QUERY => {
                    self.pins_pending = false;
                    a.status = body.first().copied().unwrap_or(tag::STATUS_IDLE);
                    a.idle_since = now;
                    if a.in_flight() {
                        let took = a.idle_since.duration_since(a.request_started);
                        self.pool.histograms.query_duration(took);
                    }
                    a.request_started = a.idle_since;
                    a.cancelled = false;
                    while let Some(p) = a.pending.pop_front() {
                        match p {
                            Pending::Sync | Pending::Query => break,
                            // Skipped after an error: the server does not hold it...
                            Pending::Parse {
                                name: Some(name), ..
                            } => a.server.conn().prepared.remove(&name),
                            // (a Close of the unnamed statement Sluice added, too)
                            Pending::Parse { name: None, .. }
                            | Pending::Close {
                                swallow: true,
                                evicted: None,
                            } => a.unnamed_here = false,
                            // ...or still holds the one Sluice meant to evict.
                            Pending::Close {
                                evicted: Some(name),
                                ..
                            } => {
                                a.server.conn().prepared.insert(name);
                            }
                            _ => {}
                        }
                    }
                }
                tag::COPY_IN_RESPONSE => a.copy_in = statements::copy_in_started(&mut a.pending),
                tag::ERROR_RESPONSE => {
                    // An error ends COPY FROM STDIN on the server side.
                    a.copy_in = false;
                    // (A lifted Query's `SET` failed.)
                    a.lifted = a.lifted.saturating_sub(1);
                    last_word = last_word.or_else(|| farewell::session_ended(body));
                    if a.read_only {
                        let message = self.gate.disk.refusal(&self.tenant);
                        if let Some(instead) = crate::quota::rewrite_error(body, &message) {
                            out.extend_from_slice(&a.buf[kept_from..pos]);
                            out.extend_from_slice(&instead);
                            kept_from = pos + 1 + len;
                        }
                    }
                }
                tag::PARSE_COMPLETE | tag::CLOSE_COMPLETE => match a.pending.pop_front() {
                    Some(Pending::Parse { swallow, .. }) if msg == tag::PARSE_COMPLETE => {
                        drop_it = swallow
                    }
                    Some(Pending::Close { swallow, .. }) if msg == tag::CLOSE_COMPLETE => {
                        drop_it = swallow
                    }
                    other => {
                        return Some(End::Failed(ClientError::Protocol(format!(
                            "unexpected {:?} from server while expecting {other:?}",
                            msg as char
                        ))))
                    }
                },
                tag::COMMAND_COMPLETE if a.lifted > 0 && body == b"SET\0" => {
                    // The `SET` that made a freeing Query read-write (quota.rs): the
                    // client did not send it.
                    a.lifted -= 1;
                    drop_it = true;
                }
                tag::COMMAND_COMPLETE => {
                    if statements::server_forgot_all(body) {
                        a.server.conn().prepared.clear();
                    }
                    // State made by a request still running stays, whatever this cleared.
                    if body.starts_with(b"DISCARD ALL\0") && !self.pins_pending && self.drop_pins()
                    {
                        tracing::info!("client unpinned: DISCARD ALL cleared its session state");
                    }
                    if [&b"SET"[..], b"RESET", b"DISCARD"]
                        .iter()
                        .any(|t| body.starts_with(t))
                    {
                        a.server.conn().settings_unknown = true;
                    }
                }
                tag::PARAMETER_STATUS => {
                    if let Ok((name, value)) = messages::parse_parameter_status(body) {
                        if SETTABLE_REPORTED.contains(&name) {
                            self.settings.insert(name.to_owned(), value.to_owned());
                        }
                        a.server
                            .conn()
                            .params
                            .insert(name.to_owned(), value.to_owned());
                    }
                }
                _ => {}
            }
            if drop_it {
                out.extend_from_slice(&a.buf[kept_from..pos]);
                kept_from = end;
            }
            pos = end;
        }
        self.cancel.running(a.in_flight() || a.unsynced);
        let result = if kept_from == 0 {
            self.stream.write_all(&a.buf[..pos]).await
        } else {
            out.extend_from_slice(&a.buf[kept_from..pos]);
            self.stream.write_all(&out).await
        };
        a.buf.advance(pos);
        self.pool
            .stats
            .bytes_to_clients
            .fetch_add(pos as u64, std::sync::atomic::Ordering::Relaxed);
        self.tally.to_client(pos);
        if result.is_err() {
            return Some(End::ClientLeft);
        }
        let _ = self.stream.flush().await;
        if let Some(said) = last_word {
            return Some(End::ServerEnded(said));
        }
        self.release_if_idle(attached).await;
        None
    }
}
