//! The admit phase: whether a connection may come in at all, decided before any
//! SCRAM work (and, for SNI clients, before the TLS handshake's expensive part is
//! spent on a tenant that is over its limits). Per-tenant state lives in a
//! [`TenantGate`], created on first use and kept for the life of the process; its
//! limits follow the catalog live (see [`Gates::apply`]).
//!
//! What is refused where (docs/limits.md):
//! - accept: `max_pending_logins` and its per-address cap (53300, prelogin.rs);
//! - process: `max_client_connections` (53300), `max_concurrent_logins` (wait);
//! - tenant, as soon as it is known (ClientHello for SNI, else the startup packet):
//!   concurrent logins (wait), allow-list (28000), ban (28P01), connect rate (53400;
//!   in a storm, past [`TenantGate::shed_refusal`]'s allowance, closed at the
//!   ClientHello without finishing TLS);
//! - tenant, after that: `max_client_connections` (53300);
//! - after a failed password check: the failure counts towards a ban.
//!
//! The gate also holds the tenant's byte rates ([`ByteRate`]), which the relays charge:
//! they shape traffic (a relay over the rate reads later) and refuse nothing.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use router::{Catalog, FailedLogins, Limits, Tenant, TenantId, TokenBucket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::ClientError;
use crate::prelogin::PendingSlot;

/// Most (tenant, address) pairs a tenant tracks failed logins for.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// How far one connection got through admission; travels from accept to login.
#[derive(Debug, Default)]
pub struct Admission {
    /// The tenant, once known (refusals are counted against it).
    pub tenant: Option<TenantId>,
    pub gate: Option<Arc<TenantGate>>,
    /// Held from the ClientHello (or startup packet) until authentication is done.
    pub login_slots: Vec<OwnedSemaphorePermit>,
    /// A refusal decided before the client could be told (before TLS finished).
    pub refusal: Option<ClientError>,
    pub process: Option<ProcessSlot>,
    /// Held from accept until the password is proved (prelogin.rs).
    pub pending: Option<PendingSlot>,
    /// Set by the login once the password is proved, to the pool's `max_wait`: how long
    /// past the login deadline the login may still run, queued for a server connection
    /// (session.rs). Shared, because the login holds `Admission` while it runs.
    pub queue_wait: Arc<std::sync::OnceLock<Duration>>,
}

impl Admission {
    /// Runs the tenant checks for `tenant`, unless they ran already (at the
    /// ClientHello, for the same tenant).
    pub async fn tenant(
        &mut self,
        gates: &Gates,
        tenant: &Tenant,
        ip: IpAddr,
    ) -> Result<Arc<TenantGate>, ClientError> {
        self.tenant = Some(tenant.id.clone());
        if let Some(gate) = self.gate.as_ref().filter(|g| g.id == tenant.id) {
            if tenant.suspended.is_some() {
                // Suspended between the ClientHello and now.
                return Err(ClientError::Suspended(tenant.id.to_string()));
            }
            return Ok(gate.clone());
        }
        if tenant.suspended.is_some() {
            return Err(ClientError::Suspended(tenant.id.to_string()));
        }
        let gate = gates.gate(tenant);
        self.gate = Some(gate.clone());
        // The tenant's slot first: one tenant's storm then holds at most its own cap
        // of the process-wide slots.
        self.login_slots.push(gate.login_slot().await);
        self.login_slots.push(gates.login_slot().await);
        gate.admit(ip)?;
        Ok(gate)
    }
}

/// Admission state of the whole process.
#[derive(Debug)]
pub struct Gates {
    tenants: DashMap<TenantId, Arc<TenantGate>>,
    /// Storage watermarks, written by the control plane's disk sampler: each gate
    /// holds its tenant's, which the relays read (a full tenant is read-only).
    pub disk: Arc<router::DiskQuotas>,
    /// Fired at the end of the shutdown grace period; each tenant's session token is
    /// a child of it.
    terminate: CancellationToken,
    clients: Arc<AtomicUsize>,
    max_clients: Option<usize>,
    logins: Arc<Semaphore>,
}

/// A client counted against the process-wide limit while it lives.
#[derive(Debug)]
pub struct ProcessSlot(Arc<AtomicUsize>);

impl Drop for ProcessSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gates {
    pub fn new(
        max_clients: Option<usize>,
        max_concurrent_logins: usize,
        terminate: CancellationToken,
    ) -> Self {
        Gates {
            tenants: DashMap::new(),
            disk: Arc::default(),
            terminate,
            clients: Arc::new(AtomicUsize::new(0)),
            max_clients,
            logins: Arc::new(Semaphore::new(max_concurrent_logins.max(1))),
        }
    }

    /// Counts a new connection against the process-wide limit; past it, the client is
    /// told "sorry, too many clients already" (as Postgres words it).
    pub fn enter_process(&self) -> Result<ProcessSlot, ClientError> {
        let before = self.clients.fetch_add(1, Ordering::Relaxed);
        let slot = ProcessSlot(self.clients.clone());
        match self.max_clients {
            Some(max) if before >= max => Err(ClientError::TooManyConnections(None)),
            _ => Ok(slot),
        }
    }

    /// Client connections counted against the process-wide limit now (every accepted
    /// connection past the pre-login caps, logged in or not).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// A process-wide login slot (waits while `max_concurrent_logins` logins run).
    pub async fn login_slot(&self) -> OwnedSemaphorePermit {
        self.logins
            .clone()
            .acquire_owned()
            .await
            .expect("the login semaphore is never closed")
    }

    /// The gate of `tenant`, with its limits brought up to date.
    pub fn gate(&self, tenant: &Tenant) -> Arc<TenantGate> {
        if let Some(gate) = self.tenants.get(&tenant.id) {
            gate.refresh(&tenant.limits);
            return gate.clone();
        }
        self.tenants
            .entry(tenant.id.clone())
            .or_insert_with(|| {
                Arc::new(TenantGate::new(
                    tenant.id.clone(),
                    &tenant.limits,
                    self.terminate.child_token(),
                    self.disk.of(&tenant.id),
                ))
            })
            .clone()
    }

    /// The gate of `tenant` if it has one already.
    pub fn existing(&self, tenant: &TenantId) -> Option<Arc<TenantGate>> {
        self.tenants.get(tenant).map(|g| g.clone())
    }

    /// Brings every gate's limits in line with `catalog` (called when it changes, so
    /// running sessions follow a new query rate at once).
    pub fn apply(&self, catalog: &Catalog) {
        for gate in self.tenants.iter() {
            if let Some(tenant) = catalog.get(gate.key().as_str()) {
                gate.refresh(&tenant.limits);
            }
        }
    }

    /// Ends every session of `tenant` (57P01); sessions that start later are not
    /// affected.
    pub fn terminate_sessions(&self, tenant: &TenantId) -> usize {
        self.end_sessions(tenant, false)
    }

    /// The console's KILL: ends every session of `tenant` as
    /// [`Gates::terminate_sessions`] does, telling them "administrator command".
    pub fn kill_sessions(&self, tenant: &TenantId) -> usize {
        self.end_sessions(tenant, true)
    }

    fn end_sessions(&self, tenant: &TenantId, killed: bool) -> usize {
        let Some(gate) = self.existing(tenant) else {
            return 0;
        };
        gate.killed.store(killed, Ordering::Relaxed);
        let fresh = self.terminate.child_token();
        let old = std::mem::replace(
            &mut *gate.sessions.lock().expect("gate lock poisoned"),
            fresh,
        );
        old.cancel();
        gate.clients()
    }

    /// Drops expired bans and stale failure windows (called periodically).
    pub fn prune(&self) {
        let now = Instant::now();
        for gate in self.tenants.iter() {
            gate.bans.lock().expect("gate lock poisoned").prune(now);
        }
    }
}

impl router::AdmissionControl for Gates {
    fn terminate_sessions(&self, tenant: &TenantId) -> usize {
        Gates::terminate_sessions(self, tenant)
    }

    fn bans(&self, tenant: &TenantId) -> Vec<router::Ban> {
        self.existing(tenant).map_or_else(Vec::new, |gate| {
            gate.bans
                .lock()
                .expect("gate lock poisoned")
                .list(tenant, Instant::now())
        })
    }

    fn lift(&self, tenant: &TenantId, ip: Option<IpAddr>) -> usize {
        self.existing(tenant).map_or(0, |gate| {
            gate.bans
                .lock()
                .expect("gate lock poisoned")
                .clear(tenant, ip)
        })
    }
}

/// One tenant's admission state.
#[derive(Debug)]
pub struct TenantGate {
    pub id: TenantId,
    /// The limits the state below was last set up for.
    limits: Mutex<Limits>,
    clients: AtomicUsize,
    max_clients: AtomicUsize,
    connect: Mutex<TokenBucket>,
    /// Queries per second now (0: no limit), read on the relay path without a lock.
    query_rate: AtomicU32,
    queries: Mutex<TokenBucket>,
    /// What its clients send (`client_bytes_rate`) and what its server connections
    /// send them (`server_bytes_rate`).
    pub client_bytes: ByteRate,
    pub server_bytes: ByteRate,
    logins: Mutex<Arc<Semaphore>>,
    pub bans: Mutex<FailedLogins>,
    /// Cancelled to end the tenant's sessions (suspension with `terminate`), or when
    /// the shutdown grace period ends.
    sessions: Mutex<CancellationToken>,
    /// The last end of its sessions was the console's KILL (57P01 "administrator
    /// command"), not a suspension.
    killed: std::sync::atomic::AtomicBool,
    /// Connect-rate refusals told in full (TLS handshake + ErrorResponse) in the
    /// current second: (second started, count).
    told: Mutex<(Instant, u32)>,
    /// Its storage watermark: when full, new transactions are read-only (quota.rs).
    pub disk: Arc<router::TenantDisk>,
}

/// Connect-rate refusals per second and tenant that get a readable error, at least;
/// past `max(this, 2 × connect_rate)` a storm is shed at the ClientHello.
const TOLD_PER_SECOND: u32 = 10;

/// A client counted against its tenant's `max_client_connections` while it lives.
#[derive(Debug)]
pub struct TenantSlot(Arc<TenantGate>);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bucket_size(rate: u32) -> (f64, f64) {
    let rate = f64::from(rate);
    (rate, (2.0 * rate).max(1.0))
}

fn max_or_unlimited(max: Option<usize>) -> usize {
    max.unwrap_or(usize::MAX)
}

impl TenantGate {
    fn new(
        id: TenantId,
        limits: &Limits,
        sessions: CancellationToken,
        disk: Arc<router::TenantDisk>,
    ) -> Self {
        let now = Instant::now();
        let (rate, burst) = bucket_size(limits.connect_rate.unwrap_or(0));
        let (qrate, qburst) = bucket_size(limits.query_rate.unwrap_or(0));
        TenantGate {
            id,
            clients: AtomicUsize::new(0),
            max_clients: AtomicUsize::new(max_or_unlimited(limits.max_client_connections)),
            connect: Mutex::new(TokenBucket::new(rate, burst, now)),
            query_rate: AtomicU32::new(limits.query_rate.unwrap_or(0)),
            queries: Mutex::new(TokenBucket::new(qrate, qburst, now)),
            client_bytes: ByteRate::new(limits.client_bytes_rate, now),
            server_bytes: ByteRate::new(limits.server_bytes_rate, now),
            logins: Mutex::new(Arc::new(Semaphore::new(
                limits.max_concurrent_logins.max(1),
            ))),
            bans: Mutex::new(FailedLogins::with_max_keys(
                limits.failed_logins,
                MAX_TRACKED_ADDRESSES,
            )),
            limits: Mutex::new(limits.clone()),
            sessions: Mutex::new(sessions),
            killed: std::sync::atomic::AtomicBool::new(false),
            told: Mutex::new((Instant::now(), 0)),
            disk,
        }
    }

    /// Whether a connect-rate refusal should be shed (closed at the ClientHello,
    /// without finishing TLS to say why) rather than told: a storm past the tenant's
    /// rate then costs Sluice almost nothing per attempt, while the first refusals
    /// of each second still get a readable 53400.
    pub fn shed_refusal(&self) -> bool {
        let rate = self
            .limits
            .lock()
            .expect("gate lock poisoned")
            .connect_rate
            .unwrap_or(0);
        let allowance = TOLD_PER_SECOND.max(rate.saturating_mul(2));
        let mut told = self.told.lock().expect("gate lock poisoned");
        let now = Instant::now();
        if now.duration_since(told.0) >= Duration::from_secs(1) {
            *told = (now, 0);
        }
        if told.1 >= allowance {
            return true;
        }
        told.1 += 1;
        false
    }

    /// Whether its sessions were last ended by KILL.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// What ends this tenant's sessions now: Sluice's shutdown, or a suspension.
    pub fn session_token(&self) -> CancellationToken {
        self.sessions.lock().expect("gate lock poisoned").clone()
    }

    /// Applies changed limits. Connections already in keep their slots; a new
    /// connection limit, rate or login cap applies from the next arrival.
    fn refresh(&self, new: &Limits) {
        let mut current = self.limits.lock().expect("gate lock poisoned");
        if *current == *new {
            return;
        }
        let now = Instant::now();
        self.max_clients.store(
            max_or_unlimited(new.max_client_connections),
            Ordering::Relaxed,
        );
        if new.connect_rate != current.connect_rate {
            let (rate, burst) = bucket_size(new.connect_rate.unwrap_or(0));
            self.connect
                .lock()
                .expect("gate lock poisoned")
                .set_rate(rate, burst, now);
        }
        if new.query_rate != current.query_rate {
            let (rate, burst) = bucket_size(new.query_rate.unwrap_or(0));
            self.queries
                .lock()
                .expect("gate lock poisoned")
                .set_rate(rate, burst, now);
            self.query_rate
                .store(new.query_rate.unwrap_or(0), Ordering::Relaxed);
        }
        if new.client_bytes_rate != current.client_bytes_rate {
            self.client_bytes.set(new.client_bytes_rate, now);
        }
        if new.server_bytes_rate != current.server_bytes_rate {
            self.server_bytes.set(new.server_bytes_rate, now);
        }
        if new.max_concurrent_logins != current.max_concurrent_logins {
            // Logins in progress finish on the old semaphore.
            *self.logins.lock().expect("gate lock poisoned") =
                Arc::new(Semaphore::new(new.max_concurrent_logins.max(1)));
        }
        if new.failed_logins != current.failed_logins {
            self.bans
                .lock()
                .expect("gate lock poisoned")
                .set_policy(new.failed_logins);
        }
        tracing::info!(tenant = %self.id, "tenant limits changed");
        *current = new.clone();
    }

    /// A login slot of this tenant (waits while `max_concurrent_logins` of its logins
    /// run).
    pub async fn login_slot(&self) -> OwnedSemaphorePermit {
        let semaphore = self.logins.lock().expect("gate lock poisoned").clone();
        semaphore
            .acquire_owned()
            .await
            .expect("login semaphores are never closed")
    }

    /// The checks that need only the tenant and the client's address, cheapest
    /// first: allow-list, ban, connect rate.
    pub fn admit(&self, ip: IpAddr) -> Result<(), ClientError> {
        let now = Instant::now();
        {
            let limits = self.limits.lock().expect("gate lock poisoned");
            let cidrs = &limits.allow_cidrs;
            if !cidrs.is_empty() && !cidrs.iter().any(|c| c.contains(ip)) {
                return Err(ClientError::AddressNotAllowed {
                    tenant: self.id.to_string(),
                    ip,
                });
            }
        }
        if let Some(left) = self
            .bans
            .lock()
            .expect("gate lock poisoned")
            .check(&self.id, ip, now)
        {
            return Err(ClientError::Banned {
                retry_in_s: left.as_secs().max(1),
            });
        }
        let limited = self.limits.lock().expect("gate lock poisoned").connect_rate;
        if limited.is_some()
            && !self
                .connect
                .lock()
                .expect("gate lock poisoned")
                .try_take(now)
        {
            return Err(ClientError::ConnectRateLimited(self.id.to_string()));
        }
        Ok(())
    }

    /// Counts a client against `max_client_connections`.
    pub fn enter(self: &Arc<Self>) -> Result<TenantSlot, ClientError> {
        let before = self.clients.fetch_add(1, Ordering::Relaxed);
        let slot = TenantSlot(self.clone());
        if before >= self.max_clients.load(Ordering::Relaxed) {
            return Err(ClientError::TooManyConnections(Some(self.id.to_string())));
        }
        Ok(slot)
    }

    /// A failed password check from `ip`; returns the ban it triggered, if any.
    pub fn login_failed(&self, ip: IpAddr) -> Option<Duration> {
        let ban = self
            .bans
            .lock()
            .expect("gate lock poisoned")
            .record_failure(&self.id, ip, Instant::now());
        if let Some(ban) = ban {
            // Said inside the login's span, which names the tenant already.
            tracing::warn!(%ip, ban_s = ban.as_secs(), "too many failed logins; address banned");
        }
        ban
    }

    pub fn login_succeeded(&self, ip: IpAddr) {
        self.bans
            .lock()
            .expect("gate lock poisoned")
            .record_success(&self.id, ip);
    }

    /// Lets `n` queries through under the tenant's `query_rate`, in arrival order:
    /// waits for their turn, or fails with 53400 if that would take longer than
    /// `max_wait` (read only when needed: the pool's, which can change live). Free
    /// when the tenant has no query rate.
    pub async fn queries(
        &self,
        n: u32,
        max_wait: impl FnOnce() -> Duration,
    ) -> Result<(), ClientError> {
        if n == 0 || self.query_rate.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let max_wait = max_wait();
        let wait = self
            .queries
            .lock()
            .expect("gate lock poisoned")
            .take_or_wait(f64::from(n), Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        if wait > max_wait {
            self.queries
                .lock()
                .expect("gate lock poisoned")
                .refund(f64::from(n));
            return Err(ClientError::QueryRateLimited(self.id.to_string()));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Whether the tenant has a query rate: [`Self::queries`] may then wait.
    pub fn limits_queries(&self) -> bool {
        self.query_rate.load(Ordering::Relaxed) != 0
    }

    /// Clients of this tenant connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// One of a tenant's byte rates, shared by all its connections: a relay charges what
/// it has read and, once the tenant is over its rate, waits before it reads again, so
/// the kernel's socket buffers fill and TCP slows the sender down. The bucket holds a
/// tenth of a second's bytes (at least [`MIN_BYTES_BURST`]); waits are first come,
/// first served across the tenant's connections ([`TokenBucket::take_or_wait`]).
#[derive(Debug)]
pub struct ByteRate {
    /// Bytes per second now (0: no limit), read without a lock on every relayed read.
    rate: AtomicU64,
    bucket: Mutex<TokenBucket>,
}

/// The smallest burst of a byte rate: a few of the relays' reads.
const MIN_BYTES_BURST: f64 = 64.0 * 1024.0;

fn byte_bucket(rate: Option<u64>) -> (f64, f64) {
    let rate = rate.unwrap_or(0) as f64;
    (rate, (rate / 10.0).max(MIN_BYTES_BURST))
}

impl ByteRate {
    fn new(rate: Option<u64>, now: Instant) -> Self {
        let (per_second, burst) = byte_bucket(rate);
        ByteRate {
            rate: AtomicU64::new(rate.unwrap_or(0)),
            bucket: Mutex::new(TokenBucket::new(per_second, burst, now)),
        }
    }

    fn set(&self, rate: Option<u64>, now: Instant) {
        let (per_second, burst) = byte_bucket(rate);
        self.bucket
            .lock()
            .expect("byte rate lock poisoned")
            .set_rate(per_second, burst, now);
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Charges `n` bytes just relayed; returns how long the relay should wait before
    /// its next read (zero within the rate, and always without a rate).
    pub fn charge(&self, n: usize) -> Duration {
        if n == 0 || self.rate.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        let wait = self
            .bucket
            .lock()
            .expect("byte rate lock poisoned")
            .take_or_wait(n as f64, Instant::now());
        // Only a bucket without a rate (switched off by a concurrent `set`) never
        // covers a charge.
        if wait == Duration::MAX {
            Duration::ZERO
        } else {
            wait
        }
    }
}
