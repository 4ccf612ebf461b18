//! One pool: the server connections of a single (tenant, database, role).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use router::{Backend, PoolSettings};
use tokio::sync::OwnedSemaphorePermit;

use crate::connect::{connect, ConnectError, ConnectRequest};
use crate::credential::ServerCredential;
use crate::pause::Pause;
use crate::registry::{ClientEntry, Registry, ServerState};
use crate::resizable::Resizable;
use crate::server::ServerConn;
use crate::stats::{Histograms, PoolCounts, PoolStats};
use crate::tenant_servers::{SiblingPool, TenantServers};
use crate::tls::TlsConnectors;

pub use crate::key::PoolKey;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out waiting for a server connection")]
    Timeout,
    #[error("backend failed moments ago; not retrying yet")]
    BackendDown,
    /// The tenant stayed paused for the whole `max_wait`.
    #[error("timed out waiting for the tenant to be resumed")]
    Paused,
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// The first and longest wait after a failed connect before the next attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether the backend could be reached lately.
#[derive(Debug, Default)]
struct Health {
    /// Until then, new connections fail fast.
    down_until: Option<Instant>,
    backoff: Duration,
}

pub struct Pool {
    pub key: PoolKey,
    backend: Arc<Backend>,
    /// Changed live by [`Pool::update_settings`]; readers see the old or the new whole.
    settings: ArcSwap<PoolSettings>,
    /// One permit per checked-out server connection; the semaphore queues waiters
    /// first-come, first-served. A new connection is opened only by a permit holder
    /// that found the idle list empty, and reserve connections close when released,
    /// so idle + active stays within `size` (+ `reserve` while a burst lasts).
    permits: Resizable,
    /// Idle connections, most recently used last (reused first: warm caches, and the
    /// cold ones age out through `idle_timeout`).
    idle: Mutex<Vec<ServerConn>>,
    /// Extra slots for clients that waited `reserve_wait` (`reserve`).
    reserve: Resizable,
    /// The latest credential a client logged in with, for `min_idle`.
    credential: Mutex<Option<ServerCredential>>,
    health: Mutex<Health>,
    /// A `top_up` is running.
    topping_up: std::sync::atomic::AtomicBool,
    /// ParameterStatus values of a fresh server connection, so that a transaction-mode
    /// client can be greeted without taking a server connection.
    fresh_params: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    pub stats: PoolStats,
    /// The process-wide histograms this pool's checkouts and queries feed.
    pub histograms: Arc<Histograms>,
    /// The tenant's cap on server connections across its pools.
    servers: Arc<TenantServers>,
    /// Out of service: connections close instead of going idle (see `retire`).
    retired: std::sync::atomic::AtomicBool,
    /// Where its server connections are listed (SHOW SERVERS).
    registry: Arc<Registry>,
    /// The tenant's PAUSE switch, shared by all its pools.
    pub pause: Arc<Pause>,
    /// Bumped by RECONNECT: connections opened before close instead of going idle.
    generation: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.key)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// How a client left its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// At a message boundary, after a ReadyForQuery with this transaction status and
    /// with nothing sent since. A transaction still open is rolled back; `discard`
    /// also runs `DISCARD ALL` (session mode, after a client used the connection).
    AtReadyForQuery { status: u8, discard: bool },
    /// Anything else (mid-query, mid-COPY, broken): the connection is closed, after a
    /// CancelRequest for whatever it may still be running.
    Dirty,
    /// At a message boundary with nothing running, but not to be reused (a cancel was
    /// sent to it, and its signal may still land): closed, with nothing to cancel.
    Close,
}

impl Pool {
    pub fn new(
        key: PoolKey,
        backend: Arc<Backend>,
        settings: PoolSettings,
        histograms: Arc<Histograms>,
        servers: Arc<TenantServers>,
        (registry, pause): (Arc<Registry>, Arc<Pause>),
    ) -> Self {
        Pool {
            key,
            backend,
            permits: Resizable::new(settings.size),
            reserve: Resizable::new(settings.reserve),
            settings: ArcSwap::from_pointee(settings),
            idle: Mutex::new(Vec::new()),
            credential: Mutex::new(None),
            health: Mutex::new(Health::default()),
            topping_up: std::sync::atomic::AtomicBool::new(false),
            fresh_params: Mutex::new(None),
            stats: PoolStats::default(),
            histograms,
            servers,
            retired: std::sync::atomic::AtomicBool::new(false),
            registry,
            pause,
            generation: AtomicU64::new(0),
        }
    }

    /// RECONNECT: idle connections close now, the ones in use when released; new
    /// ones are opened as clients need them.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        for conn in self.close_idle() {
            close_in_background(conn);
        }
    }

    fn is_current(&self, conn: &ServerConn) -> bool {
        conn.generation == self.generation.load(Ordering::Relaxed)
    }

    /// Takes the pool out of service (its tenant left the catalog, or its backend
    /// changed): its idle connections close now, the ones in use when released.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        for conn in self.close_idle() {
            close_in_background(conn);
        }
    }

    /// Counts a client that logged in to this pool (a login, and its logged-in time)
    /// for as long as the returned guard lives.
    pub fn client_joined(self: &Arc<Self>) -> ClientInPool {
        let since = self.stats.client_joined(true);
        ClientInPool(self.clone(), since)
    }

    /// Counts a client that moved here from the process this one replaced: not a
    /// login (the old process counted it), its logged-in time from now.
    pub fn client_arrived(self: &Arc<Self>) -> ClientInPool {
        let since = self.stats.client_joined(false);
        ClientInPool(self.clone(), since)
    }

    /// What a fresh server connection of this pool reported, once one was opened.
    pub fn fresh_params(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.fresh_params
            .lock()
            .expect("pool lock poisoned")
            .clone()
    }

    /// The pool's settings now (they can change live).
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Applies new settings to a running pool: a larger `size` or `reserve` lets
    /// waiting clients in at once; a smaller one closes idle connections beyond it and
    /// takes permits back as checked-out connections return (nobody is cut off).
    /// Timeouts and lifetimes apply from the next check; `mode` to the next login.
    pub fn update_settings(&self, new: PoolSettings) {
        let old = self.settings.swap(Arc::new(new.clone()));
        self.permits.resize(new.size);
        self.reserve.resize(new.reserve);
        if new.size < old.size {
            let surplus: Vec<ServerConn> = {
                let mut idle = self.idle.lock().expect("pool lock poisoned");
                let active = self.stats.active.load(Ordering::Relaxed);
                let keep = new.size.saturating_sub(active).min(idle.len());
                // The oldest-used first (the front of the list).
                let cut = idle.len() - keep;
                let surplus: Vec<ServerConn> = idle.drain(..cut).collect();
                self.stats.idle.store(idle.len(), Ordering::Relaxed);
                surplus
            };
            for conn in surplus {
                close_in_background(conn);
            }
        }
        tracing::info!(pool = %self.key, size = new.size, reserve = new.reserve, "pool settings changed");
    }

    /// Withdraws permits owed after a shrink, once some have come back.
    fn settle_shrink_debt(&self) {
        self.permits.settle();
        self.reserve.settle();
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn counts(&self) -> PoolCounts {
        self.stats.snapshot()
    }

    /// The last attempt to reach the backend failed (and none has succeeded since).
    pub fn backend_down(&self) -> bool {
        self.health
            .lock()
            .expect("pool lock poisoned")
            .down_until
            .is_some()
    }

    /// Hands out a healthy server connection: an idle one if there is one, else a new
    /// one opened with `credential`, waiting in line (up to `max_wait`) while the pool
    /// is at its size.
    pub async fn checkout(
        self: &Arc<Self>,
        credential: &ServerCredential,
        tls: &TlsConnectors,
    ) -> Result<PooledConn, CheckoutError> {
        // A paused tenant's clients wait here (counted as waiting), within `max_wait`.
        let deadline = tokio::time::Instant::now() + self.settings.load().max_wait;
        let _entered = if self.pause.is_paused() {
            let _waiting = Gauge::up(&self.stats.waiting);
            self.pause.enter(deadline).await
        } else {
            self.pause.enter(deadline).await
        }
        .ok_or(CheckoutError::Paused)?;
        let permit = self.acquire_slot().await?;
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.open(credential, tls).await?,
        };
        if self.settings.load().min_idle > 0 {
            // Only a credential the backend accepted (or that found an idle
            // connection after authenticating against the same verifier) is kept.
            *self.credential.lock().expect("pool lock poisoned") = Some(credential.clone());
        }
        if let Some(registered) = &conn.registered {
            registered.entry.set(ServerState::Active, 0);
        }
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            permit: Some(permit),
            pool: self.clone(),
        })
    }

    /// A slot of `size`; after `reserve_wait` in line, a slot of `reserve` will do too.
    async fn acquire_slot(&self) -> Result<OwnedSemaphorePermit, CheckoutError> {
        if let Ok(permit) = self.permits.semaphore().clone().try_acquire_owned() {
            self.histograms.pool_wait(Duration::ZERO);
            return Ok(permit);
        }
        let _waiting = Gauge::up(&self.stats.waiting);
        let started = tokio::time::Instant::now();
        let _record = Defer(|| {
            let waited = started.elapsed();
            self.stats.record_wait(waited);
            self.histograms.pool_wait(waited);
        });
        let settings = self.settings.load();
        let deadline = started + settings.max_wait;
        let first = settings.reserve_wait.min(settings.max_wait);
        if let Ok(permit) =
            tokio::time::timeout(first, self.permits.semaphore().clone().acquire_owned()).await
        {
            return Ok(permit.expect("pool semaphores are never closed"));
        }
        let either = async {
            tokio::select! {
                p = self.permits.semaphore().clone().acquire_owned() => p,
                p = self.reserve.semaphore().clone().acquire_owned() => p,
            }
        };
        tokio::time::timeout_at(deadline, either)
            .await
            .map(|p| p.expect("pool semaphores are never closed"))
            .map_err(|_| CheckoutError::Timeout)
    }

    /// Opens a server connection, unless the backend failed moments ago: then the
    /// caller is told at once instead of every waiter hammering a dead backend.
    async fn open(
        &self,
        credential: &ServerCredential,
        tls: &TlsConnectors,
    ) -> Result<ServerConn, CheckoutError> {
        if let Some(until) = self.health.lock().expect("pool lock poisoned").down_until {
            if Instant::now() < until {
                return Err(CheckoutError::BackendDown);
            }
        }
        let max_wait = self.settings.load().max_wait;
        let Some(slot) = self.servers.acquire(self, max_wait).await else {
            return Err(CheckoutError::Timeout);
        };
        let _connecting = Gauge::up(&self.stats.connecting);
        let opened = connect(
            ConnectRequest {
                backend: &self.backend,
                user: &self.key.role,
                database: &self.key.database,
                credential,
            },
            tls,
        )
        .await;
        let mut health = self.health.lock().expect("pool lock poisoned");
        match opened {
            Ok(mut conn) => {
                *health = Health::default();
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                conn.slot = Some(slot);
                conn.generation = self.generation.load(Ordering::Relaxed);
                conn.registered = Some(self.registry.server(
                    self.key.clone(),
                    self.backend.addr.to_string(),
                    conn.cancel_key.map(|k| k.pid),
                ));
                let settings = self.settings.load();
                conn.retire_at = Some(conn.created + jittered(settings.lifetime));
                conn.prepared.set_capacity(settings.max_prepared_statements);
                *self.fresh_params.lock().expect("pool lock poisoned") =
                    Some(Arc::new(conn.params.clone()));
                Ok(conn)
            }
            // The backend answered (or cannot be answered by us): it is up, whatever
            // it said; only failures to reach it start the backoff.
            Err(
                e @ (ConnectError::Refused(_)
                | ConnectError::UnsupportedAuth(_)
                | ConnectError::Scram(_)),
            ) => Err(e.into()),
            Err(e) => {
                health.backoff = (health.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                health.down_until = Some(Instant::now() + health.backoff);
                Err(e.into())
            }
        }
    }

    /// Claims the right to run `top_up` (false if one is running).
    pub fn begin_top_up(&self) -> bool {
        !self.topping_up.swap(true, Ordering::AcqRel)
    }

    pub fn end_top_up(&self) {
        self.topping_up.store(false, Ordering::Release);
    }

    /// Opens connections until `min_idle` are idle (within `size`), with the
    /// credential of the latest client of this pool. Called by the maintenance task.
    pub async fn top_up(&self, tls: &TlsConnectors) {
        let Some(credential) = self.credential.lock().expect("pool lock poisoned").clone() else {
            return;
        };
        loop {
            let idle = self.stats.idle.load(Ordering::Relaxed);
            let connecting = self.stats.connecting.load(Ordering::Relaxed);
            let active = self.stats.active.load(Ordering::Relaxed);
            // Idle connections and checked-out ones share `size`.
            let settings = self.settings.load();
            if idle + connecting >= settings.min_idle || idle + connecting + active >= settings.size
            {
                return;
            }
            let Ok(permit) = self.permits.semaphore().clone().try_acquire_owned() else {
                return;
            };
            match self.open(&credential, tls).await {
                Ok(conn) => self.put_idle(conn),
                Err(e) => {
                    tracing::debug!(pool = %self.key, error = %e, "min_idle: cannot open");
                    if matches!(e, CheckoutError::Connect(ConnectError::Refused(_))) {
                        // Refused (a changed password): stop until a client logs in again.
                        *self.credential.lock().expect("pool lock poisoned") = None;
                    }
                    return;
                }
            }
            drop(permit);
        }
    }

    /// Pops idle connections until one is healthy and young enough; the rest close.
    fn take_idle(&self) -> Option<ServerConn> {
        let now = Instant::now();
        loop {
            let mut conn = {
                let mut idle = self.idle.lock().expect("pool lock poisoned");
                let conn = idle.pop()?;
                self.stats.idle.fetch_sub(1, Ordering::Relaxed);
                conn
            };
            if self.is_expired(&conn, now) || !self.is_current(&conn) || !conn.is_idle_and_open() {
                tracing::debug!(pool = %self.key, pid = conn.backend_pid(), "dropping stale server connection");
                close_in_background(conn);
                continue;
            }
            return Some(conn);
        }
    }

    fn is_expired(&self, conn: &ServerConn, now: Instant) -> bool {
        conn.retire_at.is_some_and(|at| now >= at)
            || now.duration_since(conn.last_used) >= self.settings.load().idle_timeout
    }

    fn put_idle(&self, conn: ServerConn) {
        self.put_idle_at(conn, Instant::now());
    }

    fn put_idle_at(&self, mut conn: ServerConn, now: Instant) {
        conn.last_used = now;
        if let Some(registered) = &conn.registered {
            registered.entry.set(ServerState::Idle, 0);
        }
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        idle.push(conn);
        self.stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes idle connections that are past their idle timeout or lifetime, or that
    /// the server has closed. Called periodically by [`crate::Pools`].
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let evicted: Vec<ServerConn> = {
            let mut idle = self.idle.lock().expect("pool lock poisoned");
            let evicted = idle
                .extract_if(.., |conn| {
                    self.is_expired(conn, now) || !conn.is_idle_and_open()
                })
                .collect();
            self.stats.idle.store(idle.len(), Ordering::Relaxed);
            evicted
        };
        let n = evicted.len();
        for conn in evicted {
            close_in_background(conn);
        }
        n
    }

    /// Closes the least recently used idle connection, if there is one.
    pub fn close_one_idle(&self) -> bool {
        let conn = {
            let mut idle = self.idle.lock().expect("pool lock poisoned");
            if idle.is_empty() {
                return false;
            }
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            idle.remove(0)
        };
        close_in_background(conn);
        true
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) -> Vec<ServerConn> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        self.stats.idle.store(0, Ordering::Relaxed);
        idle.drain(..).collect()
    }
}

impl SiblingPool for Pool {
    fn close_one_idle(&self) -> bool {
        Pool::close_one_idle(self)
    }

    fn name(&self) -> &dyn fmt::Display {
        &self.key
    }
}

fn close_in_background(conn: ServerConn) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(conn.terminate());
    }
}

/// A logged-in client of a pool (see [`Pool::client_joined`]), with the instant it
/// joined.
#[derive(Debug)]
pub struct ClientInPool(Arc<Pool>, u128);

impl Drop for ClientInPool {
    fn drop(&mut self) {
        self.0.stats.client_left(self.1);
    }
}

/// A server connection lent to one client. Dropping it closes the connection; only
/// [`PooledConn::release`] can return it to the pool.
pub struct PooledConn {
    conn: Option<ServerConn>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("pool", &self.pool.key)
            .field("conn", &self.conn)
            .finish()
    }
}

impl PooledConn {
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("present until released")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Records in the registry that `client` holds this connection now.
    pub fn lend_to(&self, client: &ClientEntry) {
        let server = self.conn.as_ref().and_then(|c| c.registered.as_ref());
        if let Some(server) = server {
            server.entry.set(ServerState::Active, client.info.id);
        }
        client.attached(server.map(|s| &*s.entry));
    }

    /// [`PooledConn::release`] when it needs no I/O (what a transaction-mode client
    /// does at the end of each transaction): a connection at ReadyForQuery `I` with
    /// nothing to discard, current, not past its lifetime, with nothing buffered and
    /// not from the reserve goes back to the idle list at once (`None`). Any other one
    /// is handed back for `release`.
    #[must_use = "a connection handed back must still be released"]
    pub fn release_idle(mut self, how: Release) -> Option<Self> {
        let Release::AtReadyForQuery {
            status: b'I',
            discard: false,
        } = how
        else {
            return Some(self);
        };
        let now = Instant::now();
        let (Some(conn), Some(permit)) = (&self.conn, &self.permit) else {
            return Some(self);
        };
        let reusable = conn.retire_at.is_none_or(|at| now < at)
            && self.pool.is_current(conn)
            && conn.buffered() == 0
            && !Arc::ptr_eq(permit.semaphore(), self.pool.reserve.semaphore())
            && !self.pool.retired.load(Ordering::Relaxed);
        if !reusable {
            return Some(self);
        }
        let conn = self.conn.take().expect("checked");
        let permit = self.permit.take();
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(registered) = &conn.registered {
            registered.entry.set(ServerState::Used, 0);
        }
        self.pool.put_idle_at(conn, now);
        // Only now: a waiter woken by this permit finds the connection idle.
        drop(permit);
        self.pool.settle_shrink_debt();
        None
    }

    /// Returns the connection to the pool after making it clean, or closes it. A
    /// connection that was left mid-exchange, fails its reset, or has outlived its
    /// lifetime is closed.
    pub async fn release(mut self, how: Release) {
        let mut conn = self.conn.take().expect("present until released");
        let permit = self.permit.take().expect("present until released");
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(registered) = &conn.registered {
            registered.entry.set(ServerState::Used, 0);
        }
        let expired =
            conn.retire_at.is_some_and(|at| Instant::now() >= at) || !self.pool.is_current(&conn);
        let reusable = match how {
            Release::Dirty | Release::Close => false,
            Release::AtReadyForQuery { .. } if expired || conn.buffered() > 0 => false,
            Release::AtReadyForQuery { status, discard } => {
                match conn.reset(status, discard).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(pool = %self.pool.key, error = %e, "server reset failed; closing");
                        false
                    }
                }
            }
        };
        // Reserve connections are for bursts: they close instead of idling.
        let from_reserve = Arc::ptr_eq(permit.semaphore(), self.pool.reserve.semaphore());
        if reusable && !from_reserve && !self.pool.retired.load(Ordering::Relaxed) {
            self.pool.put_idle(conn);
        } else {
            if how == Release::Dirty {
                // The server may still be running the client's query, and would keep
                // running it after we hang up (Postgres notices a closed client only
                // when it next writes): cancel it so the backend slot is really free.
                if let Some(key) = conn.cancel_key {
                    let _ = crate::cancel::send_cancel(&conn.addr, key).await;
                }
            }
            conn.terminate().await;
        }
        // Only now: a waiter woken by this permit finds the connection idle.
        drop(permit);
        self.pool.settle_shrink_debt();
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            close_in_background(conn);
            drop(self.permit.take());
            self.pool.settle_shrink_debt();
        }
    }
}

/// `lifetime` minus up to 10%, so connections opened together (a burst, a restart) do
/// not all retire in the same second.
fn jittered(lifetime: Duration) -> Duration {
    let tenth = lifetime / 10;
    lifetime - tenth.mul_f64(rand::random::<f64>())
}

/// Runs a closure when dropped (on every exit path of a wait).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Increments a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_jittered_downwards_by_at_most_a_tenth() {
        let lifetime = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..200).map(|_| jittered(lifetime)).collect();
        assert!(samples
            .iter()
            .all(|d| *d <= lifetime && *d >= Duration::from_secs(90)));
        assert!(samples.iter().any(|d| *d != samples[0]), "no jitter at all");
    }
}
