//! The relay: bytes flow both ways verbatim; only message headers are read, to know
//! when the server is back at ReadyForQuery and whether the client left cleanly.
//!
//! Both directions run concurrently inside the connection's one task (`join!`), so a
//! server blocked writing a large result while the client is writing a large request
//! cannot deadlock the relay. A client that closes its side (a TCP half-close, or a TLS
//! close_notify) at a message boundary still gets the answers to what it sent: the
//! server's side runs on until they are delivered, as Postgres would answer them.

mod progress;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pooler::{Pool, Release, ServerStream};
use router::{BackendAddr, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wire::frame::DEFAULT_MAX_FRAME_LEN;
use wire::messages::tag;
use wire::scan::Scanner;
use wire::startup::CancelKey;

use crate::admit::{ByteRate, TenantGate};
use crate::cancel::CancelHandle;
use crate::farewell::LastWord;
use crate::quota;
use crate::stream::ClientStream;
use progress::Progress;

/// Per-direction read buffer. Reads take what is there up to this size, and each read
/// becomes one write, so batches of small messages cost one syscall each way.
const RELAY_BUFFER: usize = 16 * 1024;

/// The longest Query or Parse held whole to be screened while read-only for the disk
/// quota (`session_state::MAX_SCANNED`); a longer one is relayed as it comes.
const MAX_SCREENED: usize = crate::session_state::MAX_SCANNED + 64;
/// The longest ErrorResponse held whole to be rewritten while read-only.
const MAX_SCREENED_ERROR: usize = 64 * 1024;

/// The whole Terminate message.
const TERMINATE: [u8; 5] = [tag::TERMINATE, 0, 0, 0, 4];

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client left (Terminate, EOF or an error on its side); `Release` says whether
    /// the server connection may go back to the pool.
    ClientLeft(Release),
    /// The server closed or failed; the client should be told and disconnected.
    ServerGone(String),
    /// The server ended the session with a FATAL or PANIC error, which the client has
    /// been sent: it needs no other (what the error said, for the log).
    ServerEnded(String),
    /// Sluice is shutting down and the grace period is over.
    Terminated,
    /// The client sat idle inside a transaction past the tenant's limit; `Release`
    /// says whether the server connection may be rolled back and reused.
    IdleInTransaction(Release),
    /// The client sat idle outside a transaction past `client_idle_timeout`.
    IdleSession(Release),
    /// The client's queries waited longer than `max_wait` for the tenant's query rate.
    QueryRateLimited,
    /// The tenant's disk watermark no longer matches the session's `read_only`, and
    /// the session is at rest (every request answered, no transaction): the caller
    /// changes the server connection's setting and relays again, starting with
    /// `unread`, the client's bytes read but not relayed yet (quota.rs).
    Quota { unread: BytesMut, cancel_sent: bool },
}

/// Bytes a relay moves in a row before it lets the runtime's other tasks run.
const PACE_BYTES: usize = 64 * 1024;

/// Keeps one connection's bulk transfer from holding a runtime thread: after every
/// [`PACE_BYTES`] relayed the task yields, so the clients of every other tenant
/// waiting on the same thread get their turn within one such slice (tokio's own
/// budget would let a task run about a hundred reads and writes, a few MiB, first).
/// Ordinary requests never reach it. It also charges the tenant's byte rate for what
/// was read, and waits when the tenant is over it.
#[derive(Debug, Default)]
pub(crate) struct Pace(usize);

impl Pace {
    pub(crate) async fn relayed(&mut self, bytes: usize, rate: &ByteRate) {
        let wait = rate.charge(bytes);
        if !wait.is_zero() {
            self.0 = 0;
            tokio::time::sleep(wait).await;
            return;
        }
        self.0 += bytes;
        if self.0 >= PACE_BYTES {
            self.0 = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// What one client connection relayed (its registry entry's counters: SHOW CLIENTS and
/// its closing log line read them).
pub use pooler::registry::Tally;

/// The tenant's limits and what is needed to act on them.
#[derive(Debug)]
pub struct Watch<'a> {
    pub limits: &'a Limits,
    /// The tenant's query rate.
    pub gate: &'a TenantGate,
    /// Where to send a cancel for a query that runs too long.
    pub cancel: Option<(Arc<BackendAddr>, CancelKey)>,
    /// The client's own cancel key, told whether a request is running (a client's
    /// cancel is forwarded only then).
    pub client_key: &'a CancelHandle,
    /// The session runs with `default_transaction_read_only = on` for its tenant's
    /// disk quota: escapes are refused and the server's 25006 says 53100 (quota.rs).
    pub read_only: bool,
}

#[derive(Debug)]
enum Ended {
    ClientTerminate,
    /// The client closed its side (EOF, or a TLS close_notify).
    ClientEof,
    /// The client's connection broke (a reset, a TLS close without close_notify).
    ClientVanished,
    ClientFailed(String),
    /// The tenant's watermark changed at rest: what the client sent that is not relayed.
    Quota(BytesMut),
    ServerEof,
    ServerFailed(String),
    /// The other direction ended first.
    Stopped,
}

pub async fn relay(
    client: &mut ClientStream,
    server: &mut ServerStream,
    terminate: &CancellationToken,
    pool: &Pool,
    tally: &Tally,
    watch: Watch<'_>,
    unread: BytesMut,
) -> RelayEnd {
    let epoch = Instant::now();
    let progress = Progress {
        status: AtomicU8::new(tag::STATUS_IDLE),
        client_boundary: AtomicBool::new(true),
        ..Progress::default()
    };
    let stop = CancellationToken::new();
    let mut last_word = LastWord::default();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let upstream = async {
        let end = client_to_server(
            &mut client_read,
            &mut server_write,
            &progress,
            &stop,
            (pool, tally),
            (&watch, epoch),
            unread,
        )
        .await;
        if matches!(end, (Ended::ClientEof, true) | (Ended::Quota(_), _)) {
            // Only the client's side is closed: the server side decides when the
            // answers it is owed are delivered.
            progress.client_done.store(true, Ordering::Release);
            progress.client_done_notify.notify_one();
            stop.cancelled().await;
        }
        stop.cancel();
        end
    };
    let downstream = async {
        let end = server_to_client(
            &mut server_read,
            &mut client_write,
            &progress,
            &stop,
            (pool, tally),
            (&watch, epoch),
            &mut last_word,
        )
        .await;
        stop.cancel();
        end
    };
    let ((up, up_boundary), (down, down_boundary)) = tokio::select! {
        ends = async { tokio::join!(upstream, downstream) } => ends,
        _ = terminate.cancelled() => return RelayEnd::Terminated,
        idle = watchdog(&progress, &watch, epoch) => {
            let release = if progress.settled() {
                progress.at_rest(true)
            } else {
                Release::Dirty
            };
            return match idle {
                Idle::InTransaction => RelayEnd::IdleInTransaction(release),
                Idle::Session => RelayEnd::IdleSession(release),
            };
        }
    };
    if progress.rate_limited.load(Ordering::Acquire) {
        return RelayEnd::QueryRateLimited;
    }
    if let Some(said) = last_word.said.take() {
        // Whatever else ended, the server connection is over, and the client heard why.
        return RelayEnd::ServerEnded(said);
    }
    tracing::trace!(?up, ?down, "relay ended");
    match (up, down) {
        (Ended::Quota(unread), Ended::Stopped) if down_boundary => RelayEnd::Quota {
            unread,
            cancel_sent: progress.cancel_sent.load(Ordering::Acquire),
        },
        (_, Ended::ServerEof) => RelayEnd::ServerGone("server closed the connection".into()),
        (Ended::ServerFailed(e), _) | (_, Ended::ServerFailed(e)) => RelayEnd::ServerGone(e),
        (Ended::ClientTerminate | Ended::ClientEof | Ended::ClientVanished, Ended::Stopped) => {
            let clean = up_boundary && down_boundary && progress.settled();
            RelayEnd::ClientLeft(if clean {
                progress.at_rest(progress.used.load(Ordering::Acquire))
            } else {
                Release::Dirty
            })
        }
        (Ended::ClientFailed(e), _) | (_, Ended::ClientFailed(e)) => {
            tracing::debug!(error = %e, "client side of the relay failed");
            RelayEnd::ClientLeft(Release::Dirty)
        }
        _ => RelayEnd::ClientLeft(Release::Dirty),
    }
}

/// A read error that only says the client's connection ended.
fn client_vanished(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Which idle limit ran out.
#[derive(Debug)]
enum Idle {
    InTransaction,
    Session,
}

/// Enforces the tenant's query, idle-in-transaction and client idle timeouts. Cancels
/// a query that runs too long (the client then gets 57014 from the server and carries
/// on); returns when the client has been idle too long. Sleeps between changes.
async fn watchdog(progress: &Progress, watch: &Watch<'_>, epoch: Instant) -> Idle {
    let limits = watch.limits;
    if limits.query_timeout.is_none()
        && limits.idle_in_transaction_timeout.is_none()
        && limits.client_idle_timeout.is_none()
    {
        return std::future::pending().await;
    }
    loop {
        let changed = progress.changed.notified();
        let in_flight = progress.expected_ready.load(Ordering::Acquire)
            > progress.seen_ready.load(Ordering::Acquire);
        let at = |nanos: &AtomicU64| epoch + Duration::from_nanos(nanos.load(Ordering::Acquire));
        let deadline = if in_flight {
            limits
                .query_timeout
                .filter(|_| !progress.cancelled.load(Ordering::Acquire))
                .map(|t| at(&progress.request_started) + t)
        } else {
            // Idle since the later of the last answer and the last bytes from the
            // client (a request still arriving is not idleness).
            let since = progress
                .last_ready
                .load(Ordering::Acquire)
                .max(progress.client_active.load(Ordering::Acquire));
            let limit = if progress.status.load(Ordering::Acquire) != tag::STATUS_IDLE {
                limits.idle_in_transaction_timeout
            } else {
                limits.client_idle_timeout
            };
            limit.map(|t| epoch + Duration::from_nanos(since) + t)
        };
        let Some(deadline) = deadline else {
            changed.await;
            continue;
        };
        if Instant::now() < deadline {
            // Look again when it is due, or when something changed (the client may
            // have sent bytes meanwhile, which moves the deadline).
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            continue;
        }
        if !in_flight {
            return if progress.status.load(Ordering::Acquire) == tag::STATUS_IDLE {
                Idle::Session
            } else {
                Idle::InTransaction
            };
        }
        progress.cancelled.store(true, Ordering::Release);
        progress.cancel_sent.store(true, Ordering::Release);
        if let Some((addr, key)) = &watch.cancel {
            tracing::info!("query timeout: cancelling the query on the backend");
            if let Err(e) = pooler::cancel::send_cancel(addr, *key).await {
                tracing::warn!(error = %e, "cancel for query timeout failed");
            }
        }
    }
}

async fn client_to_server<R, W>(
    client: &mut R,
    server: &mut W,
    progress: &Progress,
    stop: &CancellationToken,
    (pool, tally): (&Pool, &Tally),
    (watch, epoch): (&Watch<'_>, Instant),
    unread: BytesMut,
) -> (Ended, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
    // Bytes an earlier run read and did not relay come first, without a read.
    let mut carried = !unread.is_empty();
    let mut buf = if carried {
        unread
    } else {
        BytesMut::with_capacity(RELAY_BUFFER)
    };
    let mut pace = Pace::default();
    // While read-only for the disk quota: Queries and Parses held whole and screened.
    let mut screen = quota::Screen::default();
    let mut screened = BytesMut::new();
    // One registration with the token for the whole loop, not one per read or write.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let read = if std::mem::take(&mut carried) {
            Ok(buf.len())
        } else {
            let read = tokio::select! {
                _ = &mut stopped => return (Ended::Stopped, scanner.at_boundary() && screen.at_rest(&buf)),
                read = client.read_buf(&mut buf) => read,
            };
            if let Ok(n) = read {
                tokio::select! {
                    _ = &mut stopped => return (Ended::Stopped, false),
                    () = pace.relayed(n, &watch.gate.client_bytes) => {}
                }
            }
            read
        };
        progress
            .client_active
            .store(since(epoch), Ordering::Release);
        let at_boundary = scanner.at_boundary() && screen.at_rest(&buf);
        match read {
            Ok(0) => return (Ended::ClientEof, at_boundary),
            Ok(_) => {}
            // The client is gone without a goodbye: a TLS client that closed without
            // close_notify, or a reset. Like an EOF, what the server connection is
            // worth depends only on where the client's messages stopped.
            Err(e) if client_vanished(&e) => {
                tracing::debug!(error = %e, "client went away without a goodbye");
                return (Ended::ClientVanished, at_boundary);
            }
            Err(e) => return (Ended::ClientFailed(e.to_string()), false),
        }
        // The tenant crossed its disk limit (either way): at rest, the caller changes
        // the server connection's setting before these bytes go.
        if watch.gate.disk.full() != watch.read_only
            && scanner.at_boundary()
            && screen.passthrough_done()
            && progress.settled()
            && progress.status.load(Ordering::Acquire) == tag::STATUS_IDLE
        {
            progress.pause.store(true, Ordering::Release);
            progress.pause_notify.notify_one();
            return (Ended::Quota(buf), true);
        }
        let chunk: &[u8] = if watch.read_only {
            let tenant = watch.gate.id.as_str();
            // A Query that only frees space, first of a session at rest, runs
            // read-write in a transaction of its own.
            let at_rest = scanner.at_boundary()
                && screen.passthrough_done()
                && progress.settled()
                && progress.status.load(Ordering::Acquire) == tag::STATUS_IDLE;
            screen.run(
                &mut buf,
                &mut screened,
                &[tag::QUERY, tag::PARSE],
                MAX_SCREENED,
                |msg, body, first| {
                    if let Some(sql) = quota::freeing_query(msg, body).filter(|_| first && at_rest)
                    {
                        progress.lifted.fetch_add(1, Ordering::AcqRel);
                        return Some(quota::lifted(sql));
                    }
                    quota::screen(msg, body, &watch.gate.disk.refusal(tenant))
                },
            );
            &screened
        } else {
            &buf
        };
        let mut terminated = false;
        let mut after_terminate = false;
        let mut queries = 0u32;
        let scanned = scanner.feed(chunk, |msg, _| {
            pool.stats.client_message(msg);
            if msg == tag::QUERY || msg == tag::EXECUTE {
                queries += 1;
            }
            if terminated {
                after_terminate = true;
            }
            if msg == tag::TERMINATE {
                terminated = true;
            } else {
                progress.client_message(msg, since(epoch));
            }
        });
        if let Err(e) = scanned {
            return (Ended::ClientFailed(e.to_string()), false);
        }
        progress
            .client_boundary
            .store(scanner.at_boundary(), Ordering::Release);
        watch.client_key.running(progress.request_running());
        let forward: &[u8] = if terminated {
            // Terminate is the client's last word: anything after it is a violation,
            // and the Terminate itself is Sluice's to act on, not the server's.
            // (Read-only, `buf` keeps what the screen holds: a message begun after it.)
            let held = watch.read_only && !screen.at_rest(&buf);
            if after_terminate || !chunk.ends_with(&TERMINATE) || held {
                return (Ended::ClientFailed("data after Terminate".into()), false);
            }
            &chunk[..chunk.len() - TERMINATE.len()]
        } else {
            chunk
        };
        if queries > 0 {
            // Held back until the tenant's query rate lets them through.
            let admitted = tokio::select! {
                _ = &mut stopped => return (Ended::Stopped, false),
                admitted = watch.gate.queries(queries, || pool.settings().max_wait) => admitted,
            };
            if admitted.is_err() {
                progress.rate_limited.store(true, Ordering::Release);
                return (Ended::ClientFailed("query rate limit".into()), false);
            }
        }
        if !forward.is_empty() {
            progress.used.store(true, Ordering::Release);
            pool.stats
                .bytes_from_clients
                .fetch_add(forward.len() as u64, Ordering::Relaxed);
            tally.from_client(forward.len());
            // A server that stopped reading must not pin this task once the other
            // direction has ended (the connection is then dirty anyway).
            tokio::select! {
                _ = &mut stopped => return (Ended::Stopped, false),
                written = write_out(server, forward) => if let Err(e) = written {
                    return (Ended::ServerFailed(e.to_string()), false);
                },
            }
        }
        if !watch.read_only {
            buf.clear();
        }
        screened.clear();
        if terminated {
            return (Ended::ClientTerminate, scanner.at_boundary());
        }
    }
}

async fn server_to_client<R, W>(
    server: &mut R,
    client: &mut W,
    progress: &Progress,
    stop: &CancellationToken,
    (pool, tally): (&Pool, &Tally),
    (watch, epoch): (&Watch<'_>, Instant),
    last_word: &mut LastWord,
) -> (Ended, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = BytesMut::with_capacity(RELAY_BUFFER);
    let mut pace = Pace::default();
    // While read-only for the disk quota: ErrorResponses held whole, 25006 rewritten.
    let mut screen = quota::Screen::default();
    let mut screened = BytesMut::new();
    // One registration with the token for the whole loop, not one per read or write.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let at_boundary = scanner.at_boundary() && screen.at_rest(&buf);
        if let Some(clean) = progress.client_may_go() {
            return (Ended::Stopped, clean && at_boundary);
        }
        if at_boundary && progress.pause.load(Ordering::Acquire) {
            return (Ended::Stopped, true);
        }
        let read = tokio::select! {
            _ = &mut stopped => return (Ended::Stopped, at_boundary),
            () = progress.client_done_notify.notified() => continue,
            () = progress.pause_notify.notified() => continue,
            read = server.read_buf(&mut buf) => read,
        };
        if let Ok(n) = read {
            tokio::select! {
                _ = &mut stopped => return (Ended::Stopped, false),
                () = pace.relayed(n, &watch.gate.server_bytes) => {}
            }
        }
        match read {
            Ok(0) => return (Ended::ServerEof, false),
            Ok(_) => {}
            Err(e) => return (Ended::ServerFailed(e.to_string()), false),
        }
        let chunk: &[u8] = if watch.read_only {
            let tenant = watch.gate.id.as_str();
            // The first CommandComplete or ErrorResponse after a lifted Query answers
            // its `SET`: a CommandComplete is dropped.
            let held: &[u8] = if progress.lifted.load(Ordering::Acquire) > 0 {
                &[tag::ERROR_RESPONSE, tag::COMMAND_COMPLETE]
            } else {
                &[tag::ERROR_RESPONSE]
            };
            screen.run(
                &mut buf,
                &mut screened,
                held,
                MAX_SCREENED_ERROR,
                |msg, body, _| {
                    let lifted = progress.lifted.load(Ordering::Acquire) > 0;
                    if lifted && (msg == tag::ERROR_RESPONSE || body == b"SET\0") {
                        progress.lifted.fetch_sub(1, Ordering::AcqRel);
                        if msg == tag::COMMAND_COMPLETE {
                            return Some(BytesMut::new());
                        }
                    }
                    if msg == tag::ERROR_RESPONSE {
                        return quota::rewrite_error(body, &watch.gate.disk.refusal(tenant));
                    }
                    None
                },
            );
            &screened
        } else {
            &buf
        };
        last_word.chunk_begins(scanner.at_boundary());
        let scanned = scanner.feed_ends(chunk, |msg, first, end| {
            last_word.message_ends(chunk, msg, end);
            pool.stats.server_message(msg, first);
            if let Some(took) = progress.server_message(msg, first, since(epoch)) {
                pool.histograms.query_duration(took);
            }
        });
        if let Err(e) = scanned {
            return (Ended::ServerFailed(e.to_string()), false);
        }
        watch.client_key.running(progress.request_running());
        last_word.chunk_ends(chunk);
        pool.stats
            .bytes_to_clients
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        tally.to_client(chunk.len());
        tokio::select! {
            _ = &mut stopped => return (Ended::Stopped, false),
            written = write_out(client, chunk) => if let Err(e) = written {
                return (Ended::ClientFailed(e.to_string()), false);
            },
        }
        if !watch.read_only {
            buf.clear();
        }
        screened.clear();
    }
}

async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
