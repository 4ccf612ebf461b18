//! Cancel keys: each client gets its own BackendKeyData from Sluice, mapped to the
//! server connection it holds; a CancelRequest is forwarded only on an exact match.
//!
//! The secret is always Sluice's own (random). The process id is the backend's real
//! one in session mode, where the client keeps its server connection, so that
//! `pg_backend_pid()` and a NOTIFY's sender pid match it as on a direct connection; in
//! transaction mode, where a client has no fixed backend, it is random. Two clients may
//! therefore share a process id (two tenants' backends, or a random one that hits a
//! real one): keys are registered by (process id, secret), unique among live clients.
//!
//! A forwarded cancel travels on a connection of its own and may land after the query
//! it was meant for has finished, and Postgres (up to 17) may signal the backend a
//! second time later still. So a server connection that a cancel was forwarded to is
//! never handed to another client: [`CancelHandle::set_target`] says so when the
//! client lets it go, and the client then closes it. Marking happens under the same lock
//! that moves the key, so a cancel either finds the connection still the client's (and
//! marks it) or finds nothing to cancel.
//!
//! Every forwarded cancel therefore costs a connection to the backend and, later, a
//! server connection of the pool. What bounds that cost ([`CancelRegistry::decide`]),
//! cheapest check first:
//! - the client address's rate (`[proxy] cancel_rate_per_ip`), whatever the key, so a
//!   stream of forged keys is dropped before anything is looked up for it and a brute
//!   force on the secret is slowed to that rate;
//! - a key no live client has is dropped;
//! - a client with no request running on its server connection (the relays say when
//!   one runs, [`CancelHandle::running`]), or holding none (transaction mode between
//!   transactions), has nothing to cancel: nothing is forwarded and nothing is marked
//!   (Postgres ignores a cancel that reaches an idle backend, too);
//! - while a cancel to that server connection is on its way, another is not sent;
//! - the key's own rate (`[proxy] cancel_rate_per_key`), taken only by a cancel that
//!   would be forwarded.
//!
//! Each request's outcome is counted (`sluice_cancel_requests_total`). A CancelRequest
//! gets no answer in the protocol: whatever became of it, its connection is closed.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use rand::Rng;
use router::{
    AddressBuckets, BackendAddr, CancelOutcome, Rejections, TenantId, TokenBucket, Who,
    DEFAULT_MAX_ADDRESSES,
};
use subtle::ConstantTimeEq;
use wire::fleet::KeyOrigin;
use wire::startup::{CancelKey, ClientCancelKey, LONG_SECRET_LEN};

/// The server connection a client key currently points at.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: Arc<BackendAddr>,
    pub key: CancelKey,
}

/// The cancel rates, per second (each a token bucket of twice that); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelRates {
    /// Cancels forwarded for one client key.
    pub per_key: Option<u32>,
    /// Cancel requests from one client address (IPv6: one /64), whatever their key.
    pub per_ip: Option<u32>,
}

/// A client's secret: 4 bytes (protocol 3.0) or 32 (3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secret {
    Short(i32),
    Long([u8; LONG_SECRET_LEN]),
}

impl Secret {
    fn of(key: &ClientCancelKey) -> Secret {
        match key {
            ClientCancelKey::Short(key) => Secret::Short(key.secret),
            ClientCancelKey::Long(key) => Secret::Long(key.secret),
        }
    }

    /// Equal, compared in constant time (the kind of key is no secret).
    fn matches(&self, other: &Secret) -> bool {
        match (self, other) {
            (Secret::Short(a), Secret::Short(b)) => a.to_be_bytes().ct_eq(&b.to_be_bytes()).into(),
            (Secret::Long(a), Secret::Long(b)) => a.ct_eq(b).into(),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Slot {
    secret: Secret,
    tenant: TenantId,
    /// A request of the client is running on its server connection: the relays say so
    /// as requests start and are answered.
    running: AtomicBool,
    target: Mutex<Target>,
}

#[derive(Debug)]
struct Target {
    current: Option<CancelTarget>,
    /// A cancel was forwarded to `current`.
    cancelled: bool,
    /// A cancel to `current` is on its way (its connection to the backend is open).
    in_flight: bool,
    /// Counts the moves of the key, so a forward that ends late leaves the next
    /// target's `in_flight` alone.
    generation: u64,
    /// The key's own rate; `None`: no limit.
    bucket: Option<TokenBucket>,
}

#[derive(Debug)]
pub struct CancelRegistry {
    /// By process id, each client with its own secret.
    slots: DashMap<i32, Vec<Arc<Slot>>>,
    per_key: Option<u32>,
    per_ip: Option<Mutex<AddressBuckets>>,
    /// In a fleet: the replica's tag in every key it hands out.
    tag: Option<Arc<FleetTag>>,
    /// This process, random at its start: named in its long keys, and its instance in
    /// a fleet.
    instance: i64,
    /// Outside a fleet, the key of the tag of its long keys.
    own_secret: [u8; 32],
}

impl Default for CancelRegistry {
    fn default() -> Self {
        CancelRegistry::new(CancelRates::default())
    }
}

/// In a fleet, the top byte of every cancel secret a replica hands out says which
/// replica it is (`wire::fleet::tagged_secret`), so that any replica receiving the
/// CancelRequest knows where to send it on.
#[derive(Debug)]
pub struct FleetTag {
    /// The fleet's shared secret.
    pub secret: Vec<u8>,
    /// This replica's slot, once registered ([`FleetTag::NO_SLOT`] before).
    slot: std::sync::atomic::AtomicU16,
}

impl FleetTag {
    const NO_SLOT: u16 = u16::MAX;

    pub fn new(secret: Vec<u8>) -> Self {
        FleetTag {
            secret,
            slot: std::sync::atomic::AtomicU16::new(Self::NO_SLOT),
        }
    }

    /// Sets this replica's slot: keys handed out from now on carry it.
    pub fn set_slot(&self, slot: Option<u8>) {
        let slot = slot.map_or(Self::NO_SLOT, u16::from);
        self.slot.store(slot, Ordering::Release);
    }

    /// This replica's slot, once registered.
    pub fn slot(&self) -> Option<u8> {
        u8::try_from(self.slot.load(Ordering::Acquire)).ok()
    }

    /// A secret for a new key with process id `pid` from 32 random bits: tagged with
    /// the slot once there is one (until then only this replica can find the key).
    fn secret_for(&self, pid: i32, random: u32) -> i32 {
        match self.slot() {
            Some(slot) => wire::fleet::tagged_secret(&self.secret, slot, pid, random),
            None => random as i32,
        }
    }
}

/// A client's registration; dropping it forgets the key.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub key: ClientCancelKey,
    slot: Arc<Slot>,
}

/// What to do with one cancel request: [`CancelRegistry::decide`].
#[derive(Debug)]
pub struct Decision {
    /// What became of it (`Forwarded` when `forward` is set, which may still fail).
    pub outcome: CancelOutcome,
    /// The tenant of the client whose key it carried, if a live client has it.
    pub tenant: Option<TenantId>,
    pub forward: Option<Forward>,
}

/// A cancel to send to a backend. While it lives no other cancel is sent to the same
/// server connection; dropping it (sent or not) lets the next one go.
#[derive(Debug)]
pub struct Forward {
    pub target: CancelTarget,
    slot: Arc<Slot>,
    generation: u64,
}

impl Forward {
    /// Sends the CancelRequest; returns once the backend has closed its connection
    /// (it has then signalled the session), or with the error.
    pub async fn send(&self) -> std::io::Result<()> {
        pooler::cancel::send_cancel(&self.target.addr, self.target.key).await
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let mut target = self.slot.target.lock().expect("cancel slot poisoned");
        if target.generation == self.generation {
            target.in_flight = false;
        }
    }
}

fn bucket(rate: u32, now: Instant) -> TokenBucket {
    let rate = f64::from(rate);
    TokenBucket::new(rate, (2.0 * rate).max(1.0), now)
}

impl CancelHandle {
    /// Points the key at the server connection the client now holds (or at nothing),
    /// with no request running on it yet. True if a cancel was forwarded to the
    /// connection it pointed at until now: that connection must be closed, not handed
    /// to another client.
    #[must_use = "a connection a cancel was sent to must not be reused"]
    pub fn set_target(&self, target: Option<CancelTarget>) -> bool {
        let mut slot = self.slot.target.lock().expect("cancel slot poisoned");
        let cancelled = slot.cancelled;
        slot.current = target;
        slot.cancelled = false;
        slot.in_flight = false;
        slot.generation += 1;
        self.slot.running.store(false, Ordering::Release);
        cancelled
    }

    /// Whether a request of the client is running on its server connection now (sent,
    /// and not yet answered with its ReadyForQuery): only then is a cancel forwarded.
    /// Called by the relays as requests start and end; a store, no lock.
    pub fn running(&self, running: bool) {
        self.slot.running.store(running, Ordering::Release);
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut slots) = self.registry.slots.entry(self.key.pid()) {
            slots.get_mut().retain(|s| !Arc::ptr_eq(s, &self.slot));
            if slots.get().is_empty() {
                slots.remove();
            }
        }
    }
}

impl CancelRegistry {
    pub fn new(rates: CancelRates) -> Self {
        let now = Instant::now();
        CancelRegistry {
            slots: DashMap::new(),
            per_key: rates.per_key,
            per_ip: rates.per_ip.map(|rate| {
                let rate = f64::from(rate);
                let burst = (2.0 * rate).max(1.0);
                Mutex::new(AddressBuckets::new(rate, burst, DEFAULT_MAX_ADDRESSES, now))
            }),
            tag: None,
            instance: rand::thread_rng().gen_range(1..=i64::MAX),
            own_secret: rand::thread_rng().gen(),
        }
    }

    /// This process's instance: random at its start, named in its long keys (and its
    /// row in the fleet's `replicas`).
    pub fn instance(&self) -> i64 {
        self.instance
    }

    /// This registry, handing out keys tagged for a fleet.
    pub fn in_fleet(mut self, tag: Arc<FleetTag>) -> Self {
        self.tag = Some(tag);
        self
    }

    /// The fleet tag, if this process is in a fleet.
    pub fn fleet_tag(&self) -> Option<&Arc<FleetTag>> {
        self.tag.as_ref()
    }

    /// A protocol 3.0 key (a 4-byte secret) for a new client of `tenant`: see
    /// [`CancelRegistry::register_for`].
    pub fn register(self: &Arc<Self>, pid: Option<i32>, tenant: &TenantId) -> CancelHandle {
        self.register_for(pid, tenant, false)
    }

    /// A key for a new client of `tenant`: process id `pid` (the backend's, in session
    /// mode), or a random one; the secret random (`long`: protocol 3.2's 32 bytes, with
    /// 128 random bits, else 4 bytes), and the pair unique among live clients.
    pub fn register_for(
        self: &Arc<Self>,
        pid: Option<i32>,
        tenant: &TenantId,
        long: bool,
    ) -> CancelHandle {
        let mut rng = rand::thread_rng();
        loop {
            let pid = pid.unwrap_or_else(|| rng.gen_range(1..=i32::MAX));
            let key = if long {
                let origin = KeyOrigin {
                    slot: self.tag.as_ref().and_then(|tag| tag.slot()),
                    instance: self.instance,
                };
                let tag_secret = self
                    .tag
                    .as_ref()
                    .map_or(&self.own_secret[..], |t| &t.secret);
                let secret = wire::fleet::long_secret(tag_secret, origin, pid, rng.gen());
                ClientCancelKey::Long(wire::startup::LongKey { pid, secret })
            } else {
                let random: u32 = rng.gen();
                let secret = match &self.tag {
                    Some(tag) => tag.secret_for(pid, random),
                    None => random as i32,
                };
                ClientCancelKey::Short(CancelKey { pid, secret })
            };
            if let Some(handle) = self.try_register(key, tenant) {
                return handle;
            }
        }
    }

    /// `key` again, for a client moved here from the process it logged in to (the key
    /// it was told); a fresh key of the same kind if that one is taken here (its cancels
    /// then miss).
    pub fn register_key(self: &Arc<Self>, key: ClientCancelKey, tenant: &TenantId) -> CancelHandle {
        let long = matches!(key, ClientCancelKey::Long(_));
        self.try_register(key, tenant)
            .unwrap_or_else(|| self.register_for(None, tenant, long))
    }

    /// `key` for a client of `tenant`, unless a live client has it.
    fn try_register(
        self: &Arc<Self>,
        key: ClientCancelKey,
        tenant: &TenantId,
    ) -> Option<CancelHandle> {
        let secret = Secret::of(&key);
        let mut slots = self.slots.entry(key.pid()).or_default();
        if slots.iter().any(|s| s.secret == secret) {
            return None;
        }
        let slot = Arc::new(Slot {
            secret,
            tenant: tenant.clone(),
            running: AtomicBool::new(false),
            target: Mutex::new(Target {
                current: None,
                cancelled: false,
                in_flight: false,
                generation: 0,
                bucket: self.per_key.map(|rate| bucket(rate, Instant::now())),
            }),
        });
        slots.push(slot.clone());
        Some(CancelHandle {
            registry: self.clone(),
            key,
            slot,
        })
    }

    /// The live client whose key is exactly `key`. Every secret registered under the
    /// process id is compared, in constant time.
    fn find(&self, key: &ClientCancelKey) -> Option<Arc<Slot>> {
        let slots = self.slots.get(&key.pid())?;
        let secret = Secret::of(key);
        let mut found = None;
        for slot in slots.iter() {
            if slot.secret.matches(&secret) {
                found = Some(slot.clone());
            }
        }
        found
    }

    /// Whether a live client of this process has `key`.
    pub fn knows(&self, key: &ClientCancelKey) -> bool {
        self.find(key).is_some()
    }

    /// Decides what becomes of a CancelRequest for `key` from `ip` at `now` (see the
    /// module documentation for the order of the checks). A cancel to be forwarded
    /// marks its server connection as cancelled, and holds it as "in flight" until
    /// its [`Forward`] is dropped. `None`: a CancelRequest whose secret has a length
    /// Sluice never hands out (it is only counted against the address).
    pub fn decide(
        &self,
        key: impl Into<Option<ClientCancelKey>>,
        ip: IpAddr,
        now: Instant,
    ) -> Decision {
        self.decide_from(key.into(), Some(ip), now)
    }

    /// [`CancelRegistry::decide`] for a cancel another replica of the fleet received
    /// and sent on here: that replica took it against the client address's rate.
    pub fn decide_forwarded(&self, key: ClientCancelKey, now: Instant) -> Decision {
        self.decide_from(Some(key), None, now)
    }

    fn decide_from(
        &self,
        key: Option<ClientCancelKey>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Decision {
        let slot = key.as_ref().and_then(|key| self.find(key));
        let tenant = slot.as_ref().map(|s| s.tenant.clone());
        let dropped = |outcome| Decision {
            outcome,
            tenant: tenant.clone(),
            forward: None,
        };
        if let (Some(addresses), Some(ip)) = (&self.per_ip, ip) {
            let mut addresses = addresses.lock().expect("cancel rate lock poisoned");
            if !addresses.try_take(ip, now) {
                return dropped(CancelOutcome::RateLimited);
            }
        }
        let Some(slot) = slot else {
            return dropped(CancelOutcome::UnknownKey);
        };
        let mut target = slot.target.lock().expect("cancel slot poisoned");
        let running = slot.running.load(Ordering::Acquire);
        let Some(current) = target.current.clone().filter(|_| running) else {
            return dropped(CancelOutcome::Idle);
        };
        if target.in_flight {
            return dropped(CancelOutcome::InFlight);
        }
        if let Some(bucket) = target.bucket.as_mut() {
            if !bucket.try_take(now) {
                return dropped(CancelOutcome::RateLimited);
            }
        }
        target.cancelled = true;
        target.in_flight = true;
        let generation = target.generation;
        drop(target);
        Decision {
            outcome: CancelOutcome::Forwarded,
            tenant,
            forward: Some(Forward {
                target: current,
                slot,
                generation,
            }),
        }
    }

    /// Live clients.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|slots| slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Carries out a cancel another replica received and sent on here (see
/// [`CancelRegistry::decide_forwarded`]); a CancelRequest a client sent here goes
/// through `fleet::carry_out`.
pub async fn carry_out_forwarded(
    registry: &CancelRegistry,
    rejections: &Rejections,
    key: ClientCancelKey,
) -> CancelOutcome {
    let decision = registry.decide_forwarded(key, Instant::now());
    act(decision, rejections).await
}

/// Forwards a decided cancel, or drops it, and counts what became of it.
pub(crate) async fn act(decision: Decision, rejections: &Rejections) -> CancelOutcome {
    let Decision {
        outcome,
        tenant,
        forward,
    } = decision;
    let outcome = match forward {
        Some(forward) => match forward.send().await {
            Ok(()) => {
                let backend_pid = forward.target.key.pid;
                let tenant = tenant.as_ref().map(TenantId::as_str);
                tracing::info!(backend_pid, tenant, "cancel request forwarded");
                CancelOutcome::Forwarded
            }
            Err(e) => {
                let tenant = tenant.as_ref().map(TenantId::as_str);
                tracing::warn!(error = %e, tenant, "forwarding cancel request failed");
                CancelOutcome::Failed
            }
        },
        // Counted; a line each would let a storm of them fill the log.
        None => {
            tracing::debug!(outcome = outcome.as_str(), "cancel request dropped");
            outcome
        }
    };
    let who = tenant.as_ref().map_or(Who::Nobody, Who::Tenant);
    rejections.record_cancel(who, outcome);
    outcome
}

#[cfg(test)]
mod tests;
