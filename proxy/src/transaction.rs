//! Transaction pooling: a client holds a server connection from the first message of
//! a transaction until the server reports ReadyForQuery 'I' with nothing outstanding;
//! between transactions it holds none.
//!
//! On every attach the server connection is made to match what the client was told
//! (ParameterStatus values it saw, its startup settings), and prepared statements are
//! carried across server connections by `statements`. Messages are handled whole on
//! both sides (headers are checked, bodies of the few rewritten or tracked types are
//! read), and each batch is written with one write.
//!
//! The files, each using only those listed after it: this one runs a client's session
//! (the loop, the limits, the end); `from_client` forwards the client's messages,
//! attaching a server connection when needed; `from_server` forwards the server's;
//! `pinning` keeps a client whose session holds state on its server connection (or
//! refuses the statement); `client` is the client's state; `attached` the server
//! connection it holds during a transaction; `statements` carries its prepared
//! statements across connections.

mod attached;
mod client;
mod from_client;
mod from_server;
mod pinning;
mod statements;

use std::collections::BTreeMap;
use std::pin::pin;

use bytes::BytesMut;
use pooler::Release;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wire::messages::tag;

use crate::error::ClientError;
use crate::goodbye::{tell_and_close, terminated, REJECT_TIMEOUT};
use crate::login::Session;
use crate::relay::Pace;
use crate::state::Proxy;
use crate::stream::ClientStream;
use crate::successor::{MovedSession, MovedStatement, MovingClient, MAX_MOVED_STATEMENTS};
use attached::{header_at, read_server, Attached, READ_BUFFER};
use client::{Client, End, SETTABLE_REPORTED};
use pooler::registry::ClientEntry;
use router::memory::Exhausted;
use statements::ClientStatements;

/// The read buffer of a client that is idle (nothing buffered, no server attached):
/// big enough for a typical query, so a client that sends one and waits never grows
/// it, and small, because most of the clients a transaction-mode pooler holds are idle.
const IDLE_READ_BUFFER: usize = 512;

/// Serves a logged-in transaction-mode client until it leaves; says how it ended.
pub async fn run(
    proxy: &Proxy,
    stream: ClientStream,
    session: Session,
    client_id: u64,
    registered: &ClientEntry,
    moved_statements: Vec<MovedStatement>,
) -> String {
    let Session {
        tenant,
        pool,
        server,
        params,
        cancel,
        settings,
        credential,
        limits,
        gate,
        counted: _counted,
        ..
    } = session;
    let reported = params.keys().map(|k| k.to_ascii_lowercase()).collect();
    // The client's view: the settable values it was greeted with, then its own settings.
    let mut view: BTreeMap<String, String> = params
        .into_iter()
        .filter(|(k, _)| SETTABLE_REPORTED.contains(&k.as_str()))
        .collect();
    for (name, value) in settings {
        let key = view
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&name))
            .cloned()
            .unwrap_or(name);
        view.insert(key, value);
    }
    // The key leaves the login's server connection before the connection goes back, and
    // a connection a cancel was sent to meanwhile is closed (see cancel.rs).
    let cancelled = cancel.set_target(None);
    if let Some(server) = server {
        let release = if cancelled {
            Release::Close
        } else {
            Release::AtReadyForQuery {
                status: tag::STATUS_IDLE,
                discard: false,
            }
        };
        Box::pin(server.release(release)).await;
    }
    registered.detached();
    let memory = proxy.memory.grant(&gate.id);
    let mut client = Client {
        proxy,
        tally: &registered.tally,
        registered,
        pool,
        tenant,
        addr: registered.info.addr,
        stream,
        cancel,
        settings: view,
        statements: {
            let mut statements = ClientStatements::new(client_id);
            statements.import(moved_statements.iter().map(MovedStatement::as_parse));
            statements
        },
        credential,
        limits,
        ending: gate.session_token(),
        gate,
        active_at: Instant::now(),
        reported,
        pins: Default::default(),
        pins_pending: false,
        skip: 0,
        memory,
        batch: BytesMut::new(),
    };
    let mut attached = None;
    let end = client.serve(&mut attached).await;
    if let End::Moved = end {
        return Box::pin(client.depart()).await;
    }
    Box::pin(client.finish(attached, end)).await
}

impl Client<'_> {
    /// After the loop: the server connection back to its pool (or closed), and the
    /// client told why it ends, if it can still hear it.
    async fn finish(self, mut attached: Option<Attached>, end: End) -> String {
        let proxy = self.proxy;
        let mut client = self;
        let cancelled = client.cancel.set_target(None);
        // A pinned client's state goes with it: DISCARD ALL before anyone else.
        let discard = client.drop_pins();
        let release = match attached.take() {
            // A cancel sent for a timeout or by the client may still land later: never
            // reuse that one.
            Some(a) if a.at_rest() && !a.cancel_sent && !cancelled => {
                let status = a.status;
                Some((
                    a.into_server(),
                    Release::AtReadyForQuery { status, discard },
                ))
            }
            Some(a) if a.at_rest() => Some((a.into_server(), Release::Close)),
            Some(a) => Some((a.into_server(), Release::Dirty)),
            None => None,
        };
        let error = match end {
            End::ClientLeft => None,
            End::ServerEnded(said) => {
                tracing::warn!(said, "the server ended the session");
                drop(release);
                // Its own FATAL was the client's last message, as from Postgres.
                let stream = &mut client.stream;
                let _ = tokio::time::timeout(REJECT_TIMEOUT, stream.shutdown()).await;
                return format!("the server ended the session: {said}");
            }
            End::ServerGone(detail) => {
                tracing::warn!(detail, "server connection lost");
                Some(ClientError::BackendUnavailable {
                    tenant: client.tenant.clone(),
                    detail,
                })
            }
            End::Failed(e) => {
                // Limits applied mid-session are counted with the refusals.
                if let Some(reason) = e.reason().filter(|_| {
                    matches!(
                        e,
                        ClientError::QueryRateLimited(_)
                            | ClientError::MessageTooLarge { .. }
                            | ClientError::OutOfMemory { .. }
                    )
                }) {
                    proxy
                        .rejections
                        .record(router::Who::Tenant(&client.gate.id), reason);
                }
                Some(e)
            }
            // Handled by `depart` before `finish`.
            End::Terminated | End::Moved => Some(terminated(proxy, &client.gate)),
        };
        match (release, &error) {
            // A server that failed is not to be trusted with a reset.
            (Some((server, _)), Some(ClientError::BackendUnavailable { .. })) => drop(server),
            (Some((server, release)), _) => server.release(release).await,
            (None, _) => {}
        }
        let Some(e) = error else {
            return "client left".to_owned();
        };
        if e.can_tell_client() {
            let mut out = BytesMut::new();
            e.to_response(&mut out);
            tell_and_close(&mut client.stream, &out).await;
        }
        e.to_string()
    }
}

impl Client<'_> {
    /// Sizes the client read buffer for what comes next, and charges what the client
    /// makes Sluice hold to its memory grant: room for the whole of a message up to
    /// `max_client_message_buffer` once its header is here (charged beyond
    /// [`READ_BUFFER`]), a busy client's read buffer while it has a message half-read
    /// or a server attached (once a read `filled` the room it had: a client whose
    /// requests fit the small buffer keeps it, and relaying them allocates nothing), a
    /// small buffer again once it is idle (the big one freed). Statement texts it keeps
    /// are charged too. Past the tenant's share or the process budget the client is
    /// refused with 53200.
    fn fit_read_buffer(
        &mut self,
        cbuf: &mut BytesMut,
        attached: &Option<Attached>,
        filled: bool,
    ) -> Result<(), ClientError> {
        let streaming = self.skip > 0 || attached.as_ref().is_some_and(|a| a.inflow > 0);
        let whole = match header_at(cbuf, 0) {
            Ok(Some((_, len)))
                if !streaming && len < self.proxy.config.max_client_message_buffer =>
            {
                Some(len + 1)
            }
            _ => None,
        };
        let capacity = match whole {
            Some(total) if total > READ_BUFFER => total,
            _ if cbuf.is_empty() && attached.is_none() => IDLE_READ_BUFFER,
            _ => READ_BUFFER,
        };
        let charge = capacity.saturating_sub(READ_BUFFER) + self.statements.held_bytes();
        if let Err(exhausted) = self.memory.resize(charge) {
            return Err(ClientError::OutOfMemory {
                tenant: self.tenant.clone(),
                exhausted,
                limit: match exhausted {
                    Exhausted::Tenant => self.proxy.memory.per_tenant(),
                    Exhausted::Process => self.proxy.memory.limit(),
                },
            });
        }
        match whole {
            // Exact (no doubling), so the charge is what is held.
            Some(total) if total > READ_BUFFER => {
                if cbuf.capacity() < total {
                    let mut fitted = BytesMut::with_capacity(total);
                    fitted.extend_from_slice(cbuf);
                    *cbuf = fitted;
                }
            }
            _ if cbuf.is_empty() && attached.is_none() => {
                if cbuf.capacity() > IDLE_READ_BUFFER {
                    *cbuf = BytesMut::with_capacity(IDLE_READ_BUFFER);
                } else {
                    // In place: the messages read before are gone.
                    cbuf.reserve(IDLE_READ_BUFFER);
                }
            }
            _ => {
                if cbuf.capacity() - cbuf.len() < IDLE_READ_BUFFER {
                    // In place when the messages read before are gone (and the buffer
                    // is big enough).
                    cbuf.reserve(if filled || cbuf.capacity() > IDLE_READ_BUFFER {
                        READ_BUFFER
                    } else {
                        IDLE_READ_BUFFER
                    });
                }
                if cbuf.capacity() > 4 * READ_BUFFER && cbuf.len() < READ_BUFFER {
                    // The room a large message had: given back.
                    let mut fitted = BytesMut::with_capacity(READ_BUFFER);
                    fitted.extend_from_slice(cbuf);
                    *cbuf = fitted;
                }
            }
        }
        Ok(())
    }
}

impl Client<'_> {
    async fn serve(&mut self, attached: &mut Option<Attached>) -> End {
        let mut cbuf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        let terminate = self.ending.clone();
        // The client closed its side (EOF, or a TLS close_notify) after whole messages:
        // the server's answers to them are still relayed, as Postgres would send them.
        let mut client_done = false;
        let mut pace = Pace::default();
        let moving = self.proxy.successor.moving();
        // Made once, not per turn of the loop: each would register a waiter anew.
        let mut terminated = pin!(terminate.cancelled());
        let mut moved = pin!(moving.cancelled());
        // The last read took all the room the buffer had: more may be waiting.
        let mut filled = false;
        loop {
            if let Err(e) = self.fit_read_buffer(&mut cbuf, attached, filled) {
                return End::Failed(e);
            }
            let room = cbuf.capacity() - cbuf.len();
            let deadline = match attached.as_ref() {
                Some(a) if !a.idle() => a.deadline(&self.limits),
                // Holding nothing (or nothing in progress): the client is idle.
                _ => self.limits.client_idle_timeout.map(|t| self.active_at + t),
            };
            tokio::select! {
                read = self.stream.read_buf(&mut cbuf), if !client_done => match read {
                    Ok(0) if cbuf.is_empty() && owed(attached) => client_done = true,
                    Ok(0) | Err(_) => return End::ClientLeft,
                    Ok(n) => {
                        filled = n >= room;
                        pace.relayed(n, &self.gate.client_bytes).await;
                        // Boxed, like `on_deadline`: its state (a checkout, a
                        // parameter sync) exists only while it runs, not in every idle
                        // client's task.
                        if let Some(end) = Box::pin(self.on_client_bytes(&mut cbuf, attached)).await {
                            return end;
                        }
                    }
                },
                read = read_server(attached) => match read {
                    Ok(0) => return End::ServerGone("server closed the connection".into()),
                    Err(e) => return End::ServerGone(e.to_string()),
                    Ok(n) => {
                        pace.relayed(n, &self.gate.server_bytes).await;
                        // Not boxed: what it awaits is small (releasing the server
                        // connection boxes its reset when one is needed).
                        if let Some(end) = self.on_server_bytes(attached).await {
                            return end;
                        }
                        if client_done && !owed(attached) {
                            return End::ClientLeft;
                        }
                    }
                },
                _ = sleep_until(deadline) => {
                    if let Some(end) = Box::pin(self.on_deadline(attached)).await {
                        return end;
                    }
                }
                _ = &mut terminated => return End::Terminated,
                _ = &mut moved, if self.movable(&cbuf, attached, client_done) => {
                    return End::Moved;
                }
            }
        }
    }

    /// Whether the client can move to the successor now: between transactions (no
    /// server connection, nothing read and not handled, nothing to skip), not pinned,
    /// plaintext, and with at most [`MAX_MOVED_STATEMENTS`] of statement text.
    fn movable(&self, cbuf: &BytesMut, attached: &Option<Attached>, client_done: bool) -> bool {
        attached.is_none()
            && cbuf.is_empty()
            && self.skip == 0
            && !client_done
            && !self.pins.any()
            && !self.pins_pending
            && self.statements.held_bytes() <= MAX_MOVED_STATEMENTS
            && !self.stream.is_tls()
    }

    /// Hands the client to the successor: its socket (the bytes it sent meanwhile wait
    /// in it) and its session. If that fails, the client is told 57P01 as at the end
    /// of the grace period.
    async fn depart(self) -> String {
        let session = MovedSession {
            client: self.addr,
            key: self.pool.key.clone(),
            cancel: self.cancel.key,
            credential: self.credential.clone(),
            reported: self.reported.clone(),
            settings: self.settings.clone(),
            statements: self
                .statements
                .export()
                .iter()
                .map(MovedStatement::from_parse)
                .collect(),
        };
        let ClientStream::Plain(tcp) = self.stream else {
            unreachable!("only plaintext clients move");
        };
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => return format!("could not move to the new process: {e}"),
        };
        let moving = MovingClient {
            tcp,
            state: session.encode(),
            done: None,
        };
        match self.proxy.successor.send(moving).await {
            Ok(()) => "moved to the new process".to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "could not move the client to the new process");
                format!("could not move to the new process: {e}")
            }
        }
    }

    /// A limit ran out: cancel the running query, or end a client idle in a transaction.
    async fn on_deadline(&mut self, attached: &mut Option<Attached>) -> Option<End> {
        let Some(a) = attached.as_mut().filter(|a| !a.idle()) else {
            return Some(End::Failed(ClientError::IdleSessionTimeout));
        };
        if a.in_flight() {
            a.cancelled = true;
            a.cancel_sent = true;
            let conn = a.server.conn();
            if let Some(key) = conn.cancel_key {
                tracing::info!("query timeout: cancelling the query on the backend");
                if let Err(e) = pooler::cancel::send_cancel(&conn.addr, key).await {
                    tracing::warn!(error = %e, "cancel for query timeout failed");
                }
            }
            None
        } else {
            Some(End::Failed(ClientError::IdleInTransactionTimeout))
        }
    }
}

/// Whether the server still owes the client answers it can give: a ReadyForQuery is
/// pending, and the server is not waiting for COPY data or the rest of a streamed
/// message (from a client that closed its side, none can come).
fn owed(attached: &Option<Attached>) -> bool {
    attached
        .as_ref()
        .is_some_and(|a| a.in_flight() && !a.copy_in && a.inflow == 0)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
