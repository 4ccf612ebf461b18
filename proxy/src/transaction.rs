//! Transaction pooling: a client holds a server connection from the first message of
//! a transaction until the server reports ReadyForQuery 'I' with nothing outstanding;
//! between transactions it holds none.
//!
//! On every attach the server connection is made to match what the client was told
//! (ParameterStatus values it saw, its startup settings), and prepared statements are
//! carried across server connections by `statements`. Messages are handled whole on
//! both sides (headers are checked, bodies of the few rewritten or tracked types are
//! read), and each batch is written with one write.

mod statements;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pooler::{Pool, PooledConn, Release};
use router::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use wire::messages::{self, tag};

use crate::admit::TenantGate;
use crate::cancel::{CancelHandle, CancelTarget};
use crate::error::ClientError;
use crate::goodbye::{terminated, REJECT_TIMEOUT};
use crate::login::{checkout, Session};
use crate::relay::Tally;
use crate::state::Proxy;
use crate::stream::ClientStream;
use statements::{ClientStatements, Conversation, Pending};

/// Reported parameters a client may change with SET, and so may differ between the
/// client's view and a server connection's.
const SETTABLE_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
];

const READ_BUFFER: usize = 16 * 1024;

/// The read buffer of a client that is idle (nothing buffered, no server attached):
/// big enough for a typical query, so a client that sends one and waits never grows
/// it, and small, because most of the clients a transaction-mode pooler holds are idle.
const IDLE_READ_BUFFER: usize = 512;

/// Server messages longer than this are streamed rather than buffered whole.
const STREAM_ABOVE: usize = 64 * 1024;

/// Server messages whose bodies the relay reads (so they are always whole).
const INSPECTED: [u8; 4] = [
    tag::READY_FOR_QUERY,
    tag::PARSE_COMPLETE,
    tag::CLOSE_COMPLETE,
    tag::PARAMETER_STATUS,
];

/// While writing a client batch, server output buffered beyond this waits.
const DRAIN_LIMIT: usize = 1 << 20;

/// How a transaction-mode session ended.
enum End {
    ClientLeft,
    ServerGone(String),
    Failed(ClientError),
    Terminated,
}

/// The server connection a client holds during one transaction.
struct Attached {
    server: PooledConn,
    buf: BytesMut,
    pending: VecDeque<Pending>,
    /// Messages sent after the last Sync/Query (so a ReadyForQuery is not the end).
    unsynced: bool,
    status: u8,
    /// When the request now running was sent (for `query_timeout`), and whether it
    /// has been cancelled already.
    request_started: Instant,
    cancelled: bool,
    /// A cancel was sent during this attachment: the connection is not reused.
    cancel_sent: bool,
    /// When the server last became idle inside a transaction.
    idle_since: Instant,
    /// Bytes of a large message still to be forwarded as they arrive, unbuffered.
    passthrough: usize,
    /// A batch is being written: the server has part of a message.
    writing: bool,
    /// The server is in COPY FROM STDIN (it ignores Syncs until CopyDone/CopyFail).
    copy_in: bool,
    /// This client's unnamed statement is prepared on this server connection.
    unnamed_here: bool,
}

impl Attached {
    fn in_flight(&self) -> bool {
        self.pending.iter().any(Pending::is_ready)
    }

    /// The next moment a limit needs attention, if any applies now.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
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
    fn idle(&self) -> bool {
        self.status == tag::STATUS_IDLE && self.at_rest()
    }

    /// At a clean boundary (a transaction may be open): safe to roll back and reuse.
    fn at_rest(&self) -> bool {
        !self.unsynced
            && !self.in_flight()
            && !self.copy_in
            && !self.writing
            && self.buf.is_empty()
            && self.passthrough == 0
    }
}

struct Client<'a> {
    proxy: &'a Proxy,
    tally: &'a Tally,
    pool: Arc<Pool>,
    tenant: String,
    stream: ClientStream,
    cancel: CancelHandle,
    /// What the client believes its session settings are.
    settings: BTreeMap<String, String>,
    statements: ClientStatements,
    credential: pooler::ServerCredential,
    limits: Limits,
    gate: Arc<TenantGate>,
    /// When the client last sent anything (for `client_idle_timeout`).
    active_at: Instant,
}

/// Serves a logged-in transaction-mode client until it leaves; says how it ended.
pub async fn run(
    proxy: &Proxy,
    stream: ClientStream,
    session: Session,
    client_id: u64,
    tally: &Tally,
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
            Release::Dirty
        } else {
            Release::AtReadyForQuery {
                status: tag::STATUS_IDLE,
                discard: false,
            }
        };
        Box::pin(server.release(release)).await;
    }
    let mut client = Client {
        proxy,
        tally,
        pool,
        tenant,
        stream,
        cancel,
        settings: view,
        statements: ClientStatements::new(client_id),
        credential,
        limits,
        gate,
        active_at: Instant::now(),
    };
    let mut attached = None;
    let end = client.serve(&mut attached).await;
    Box::pin(client.finish(attached, end)).await
}

impl Client<'_> {
    /// After the loop: the server connection back to its pool (or closed), and the
    /// client told why it ends, if it can still hear it.
    async fn finish(self, mut attached: Option<Attached>, end: End) -> String {
        let proxy = self.proxy;
        let mut client = self;
        let cancelled = client.cancel.set_target(None);
        let release = match attached.take() {
            // A cancel sent for a timeout or by the client may still land later: never
            // reuse that one.
            Some(a) if a.at_rest() && !a.cancel_sent && !cancelled => Some((
                a.server,
                Release::AtReadyForQuery {
                    status: a.status,
                    discard: false,
                },
            )),
            Some(a) => Some((a.server, Release::Dirty)),
            None => None,
        };
        let error = match end {
            End::ClientLeft => None,
            End::ServerGone(detail) => {
                tracing::warn!(detail, "server connection lost");
                Some(ClientError::BackendUnavailable {
                    tenant: client.tenant.clone(),
                    detail,
                })
            }
            End::Failed(e) => {
                if matches!(e, ClientError::QueryRateLimited(_)) {
                    let who = router::Who::Tenant(&client.gate.id);
                    proxy.rejections.record(who, router::Reason::QueryRate);
                }
                Some(e)
            }
            End::Terminated => Some(terminated(proxy, &client.gate)),
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
            let stream = &mut client.stream;
            let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
                stream.write_all(&out).await?;
                stream.shutdown().await
            })
            .await;
        }
        e.to_string()
    }
}

/// Sizes the client read buffer for what comes next: room for a large read while a
/// message is half-read or a server is attached, a small buffer again once the client
/// is idle (the big one is freed).
fn fit_read_buffer(cbuf: &mut BytesMut, attached: bool) {
    if cbuf.is_empty() && !attached {
        if cbuf.capacity() > IDLE_READ_BUFFER {
            *cbuf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        }
    } else if cbuf.capacity() - cbuf.len() < IDLE_READ_BUFFER {
        cbuf.reserve(READ_BUFFER);
    }
}

impl Client<'_> {
    async fn serve(&mut self, attached: &mut Option<Attached>) -> End {
        let mut cbuf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        let terminate = self.gate.session_token();
        loop {
            fit_read_buffer(&mut cbuf, attached.is_some());
            let deadline = match attached.as_ref() {
                Some(a) if !a.idle() => a.deadline(&self.limits),
                // Holding nothing (or nothing in progress): the client is idle.
                _ => self.limits.client_idle_timeout.map(|t| self.active_at + t),
            };
            tokio::select! {
                read = self.stream.read_buf(&mut cbuf) => match read {
                    Ok(0) | Err(_) => return End::ClientLeft,
                    Ok(_) => {
                        // Boxed, like the other two: their states (a checkout, a
                        // parameter sync) exist only while they run, not in every idle
                        // client's task.
                        if let Some(end) = Box::pin(self.on_client_bytes(&mut cbuf, attached)).await {
                            return end;
                        }
                    }
                },
                read = read_server(attached) => match read {
                    Ok(0) => return End::ServerGone("server closed the connection".into()),
                    Err(e) => return End::ServerGone(e.to_string()),
                    Ok(_) => {
                        if let Some(end) = Box::pin(self.on_server_bytes(attached)).await {
                            return end;
                        }
                    }
                },
                _ = sleep_until(deadline) => {
                    if let Some(end) = Box::pin(self.on_deadline(attached)).await {
                        return end;
                    }
                }
                _ = terminate.cancelled() => return End::Terminated,
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

    /// Forwards the client's complete messages, attaching a server first if needed.
    async fn on_client_bytes(
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
    async fn send(&mut self, attached: &mut Option<Attached>, bytes: &[u8]) -> Option<End> {
        self.pool
            .stats
            .bytes_from_clients
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.tally.from_client(bytes.len());
        let mut written = 0;
        if let Some(a) = attached.as_mut() {
            a.writing = true;
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

    /// Lets the server connection go if the client owes and is owed nothing. A
    /// connection a cancel was sent to (for a timeout, or by the client) is closed
    /// instead: the cancel signal may still be in flight and must not hit another
    /// client's query.
    async fn release_if_idle(&mut self, attached: &mut Option<Attached>) {
        if !attached.as_ref().is_some_and(Attached::idle) {
            return;
        }
        let a = attached.take().expect("checked");
        let cancelled = self.cancel.set_target(None);
        let release = if a.cancel_sent || cancelled {
            Release::Dirty
        } else {
            Release::AtReadyForQuery {
                status: tag::STATUS_IDLE,
                discard: false,
            }
        };
        a.server.release(release).await;
    }

    /// Takes a server connection from the pool and makes it match this client.
    async fn attach(&mut self) -> Result<Attached, ClientError> {
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

    /// Forwards the server's complete messages, dropping answers to messages Sluice
    /// added, and lets the server go when the client is idle again.
    async fn on_server_bytes(&mut self, attached: &mut Option<Attached>) -> Option<End> {
        // A client waiting for its answer is not idle: idleness counts from here.
        self.active_at = Instant::now();
        let a = attached.as_mut()?;
        let mut out = BytesMut::new();
        // The rest of a large message being streamed goes first, untouched.
        let mut pos = a.passthrough.min(a.buf.len());
        a.passthrough -= pos;
        let mut kept_from = 0;
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
                    a.status = body.first().copied().unwrap_or(tag::STATUS_IDLE);
                    a.idle_since = Instant::now();
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
                // An error ends COPY FROM STDIN on the server side.
                tag::ERROR_RESPONSE if a.copy_in => a.copy_in = false,
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
                tag::COMMAND_COMPLETE => {
                    if statements::server_forgot_all(body) {
                        a.server.conn().prepared.clear();
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
        self.release_if_idle(attached).await;
        None
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads from the attached server, or waits forever when there is none.
async fn read_server(attached: &mut Option<Attached>) -> std::io::Result<usize> {
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
fn header_at(buf: &[u8], pos: usize) -> Result<Option<(u8, usize)>, String> {
    let Some(header) = buf.get(pos..pos + HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=DEFAULT_MAX_FRAME_LEN).contains(&len) {
        return Err(format!("server sent a message of length {len}"));
    }
    Ok(Some((header[0], len)))
}
