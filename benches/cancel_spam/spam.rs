//! The attacker: CancelRequests at a fixed rate, each on its own plaintext connection
//! (as libpq up to 17 sends them), carrying one client's own key or a forged one.
//!
//! With an owner, a client logged in at the target runs `select pg_sleep(0.01)` in a
//! loop, so its key nearly always points at a request running on a server
//! connection: what a cancel can act on, and what costs the most when it does. It
//! runs, like the senders, on one thread of its own (a current-thread runtime): the
//! attacker's CPU is at most one core.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use testkit::raw::{RawClient, Transport};
use testkit::PgTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::startup::{self, CancelKey};

/// Cancel requests in flight at once (each waits for the target to close it).
const SENDERS: usize = 64;
/// How long one cancel request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a spam run did.
#[derive(Debug, Default, Clone)]
pub struct SpamStats {
    /// Requests the target closed after reading them: in order, or with a reset.
    pub sent: u64,
    pub reset: u64,
    /// Requests that failed (connect, write, reset, timeout), and the first error.
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    /// The owner's sleeps: completed, and ended by a cancel (57014).
    pub owner_queries: u64,
    pub owner_cancelled: u64,
}

impl SpamStats {
    /// Requests the target took (closed in order or with a reset), per second.
    pub fn rate(&self) -> f64 {
        (self.sent + self.reset) as f64 / self.secs.max(1e-9)
    }
}

/// A spam run in a thread of its own; stopped (and joined) by [`Spam::stop`] or drop.
pub struct Spam {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SpamStats>>,
}

impl Spam {
    /// Starts sending `rate` cancels per second to `addr`: for the key of a client that
    /// logs in at `owner` and runs sleeps, or (without one) forged keys; at rate 0 the
    /// owner alone. Returns once the owner is logged in and the senders run.
    pub fn start(addr: SocketAddr, owner: Option<PgTarget>, rate: u64) -> Spam {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run(addr, owner, rate, flag, ready_tx))
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the spam's owner logs in");
        Spam {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> SpamStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the spam thread")
    }
}

impl Drop for Spam {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(
    addr: SocketAddr,
    owner: Option<PgTarget>,
    rate: u64,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> SpamStats {
    let owner = match owner {
        Some(target) => Some(
            RawClient::login(&target, Transport::Tls)
                .await
                .expect("the spam's owner logs in"),
        ),
        None => None,
    };
    let key = owner.as_ref().map(|o| o.key);
    let owner_task = owner.map(|client| tokio::spawn(sleep_loop(client, stop.clone())));
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let reset = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None));
    // Rate 0: the owner alone (the control for its own use of the pool).
    let senders: Vec<_> = (0..if rate == 0 { 0 } else { SENDERS })
        .map(|_| {
            let (next, sent, errors) = (next.clone(), sent.clone(), errors.clone());
            let reset = reset.clone();
            let (first_error, stop) = (first_error.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ticket = next.fetch_add(1, Ordering::Relaxed);
                    let due = started + Duration::from_secs_f64(ticket as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = key.unwrap_or_else(|| CancelKey {
                        pid: rand::random(),
                        secret: rand::random(),
                    });
                    match tokio::time::timeout(REQUEST_TIMEOUT, cancel(addr, key)).await {
                        Ok(Ok(Closed::InOrder)) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(Closed::Reset)) => {
                            reset.fetch_add(1, Ordering::Relaxed);
                        }
                        failed => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let why = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timed out".into(),
                            };
                            first_error.lock().unwrap().get_or_insert(why);
                        }
                    }
                }
            })
        })
        .collect();
    let _ = ready.send(());
    while senders.is_empty() && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sender in senders {
        sender.await.expect("a sender");
    }
    let secs = started.elapsed().as_secs_f64();
    let (owner_queries, owner_cancelled) = match owner_task {
        Some(task) => task.await.expect("the owner"),
        None => (0, 0),
    };
    let first_error = first_error.lock().unwrap().take();
    SpamStats {
        sent: sent.load(Ordering::Relaxed),
        reset: reset.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        secs,
        owner_queries,
        owner_cancelled,
    }
}

/// How the target ended a cancel request's connection (libpq takes either as done).
enum Closed {
    InOrder,
    Reset,
}

/// One CancelRequest on its own connection, waiting for the target to close it.
async fn cancel(addr: SocketAddr, key: CancelKey) -> std::io::Result<Closed> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut packet = BytesMut::new();
    startup::encode_cancel(key, &mut packet);
    tcp.write_all(&packet).await?;
    let mut rest = [0u8; 64];
    loop {
        match tcp.read(&mut rest).await {
            Ok(0) => return Ok(Closed::InOrder),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(Closed::Reset),
            Err(e) => return Err(e),
        }
    }
}

/// The owner's loop: short sleeps until `stop`; (completed, cancelled).
async fn sleep_loop(mut client: RawClient, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut done, mut cancelled) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        client
            .query("select pg_sleep(0.01)")
            .await
            .expect("the owner's query");
        match client.result().await.expect("the owner's result") {
            Ok(_) => done += 1,
            Err(e) if e.code == "57014" => cancelled += 1,
            Err(e) => panic!("the owner's sleep failed: {} {}", e.code, e.message),
        }
    }
    (done, cancelled)
}

/// The control target: a listener on a thread of its own that accepts, reads the 16
/// bytes of a CancelRequest and closes, as cheaply as a server can. Stopped on drop.
pub struct Sink {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the sink");
        listener
            .set_nonblocking(true)
            .expect("a nonblocking listener");
        let addr = listener.local_addr().expect("the sink's address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("the sink");
                while !flag.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
                    let Ok(Ok((mut tcp, _))) = accepted else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let mut packet = [0u8; 16];
                        let _ = tcp.read_exact(&mut packet).await;
                    });
                }
            });
        });
        Sink {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
