//! The proxy in a fleet: CancelRequests for another replica's clients are sent on to
//! it, and this replica carries out those the others send here.
//!
//! Every key a replica hands out names its slot (`cancel::FleetTag`; a protocol 3.2
//! key also its process, `wire::fleet::long_secret`), and a replica keeps its slot
//! across restarts (the new process of a `[fleet] id` takes the slot the id holds), so
//! a key still names the right replica after its client moved to the new process. A
//! CancelRequest whose key no local client has is sent on, as a [`ForwardedCancel`]
//! signed with the fleet's secret: to the replica it names (its process if that is
//! live, else the one serving in its slot), over a connection to its `[fleet] listen`
//! address; or, when the key names this replica's own slot, to the other processes in
//! that slot (the one this process replaced, or its successor) over the unix socket
//! each process of a fleet listens on, `@sluice/cancel/<instance>`, since the old and
//! the new process of a restart may share their `[fleet] listen` socket. A replica
//! that receives a forwarded cancel for a key it does not know hands it on once more,
//! the same way, to those other processes of its slot.
//!
//! The address's rate (`cancel_rate_per_ip`) was taken before, where the cancel
//! arrived, so forged keys reach the others no faster than they reach one replica; a
//! 3.2 key whose tag is not the fleet's is not sent anywhere. The receiver checks the
//! signature, that the message is fresh (sent within [`FRESHNESS`] of its own clock)
//! and not seen before (its nonce), then decides as for its own CancelRequests
//! (without charging the address again) and answers with one byte: what it did (a
//! [`CancelOutcome`] index).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::linux::net::SocketAddrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rand::Rng;
use router::{CancelOutcome, Membership, Rejections, Replica, Who};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wire::fleet::{
    forwarded_len, long_key_origin, slot_of, ForwardedCancel, HEAD_LEN, MAX_FORWARDED_CANCEL_LEN,
};
use wire::startup::ClientCancelKey;

use crate::cancel::{act, carry_out_forwarded, CancelRegistry, FleetTag};

/// How far a forwarded cancel's time may be from the receiver's clock.
pub const FRESHNESS: Duration = Duration::from_secs(10);
/// How long sending one on may take, connect to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may take to send its message.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded cancels handled at once; more are closed unread.
const MAX_INCOMING: usize = 64;
/// Nonces remembered (each for twice [`FRESHNESS`]); a full cache refuses new ones.
const MAX_NONCES: usize = 100_000;

/// The abstract unix socket a process of a fleet takes forwarded cancels on from the
/// other processes of its slot (`@sluice/cancel/<instance>`).
pub fn local_address(instance: i64) -> std::io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(format!("sluice/cancel/{instance}"))
}

/// The proxy's side of the fleet.
#[derive(Debug)]
pub struct FleetLink {
    tag: Arc<FleetTag>,
    /// This process's instance (`CancelRegistry::instance`).
    instance: i64,
    membership: ArcSwap<Membership>,
    nonces: Mutex<Nonces>,
    incoming: Arc<Semaphore>,
}

/// Nonces of forwarded cancels seen recently, with when they were sent.
#[derive(Debug, Default)]
struct Nonces(HashMap<[u8; 16], u64>);

impl Nonces {
    /// Remembers `nonce`; false if it was seen (a replay) or there is no room.
    fn fresh(&mut self, nonce: [u8; 16], sent_at_ms: u64, now_ms: u64) -> bool {
        if self.0.contains_key(&nonce) {
            return false;
        }
        if self.0.len() >= MAX_NONCES {
            let horizon = 2 * FRESHNESS.as_millis() as u64;
            self.0
                .retain(|_, sent| now_ms.saturating_sub(*sent) <= horizon);
            if self.0.len() >= MAX_NONCES {
                return false;
            }
        }
        self.0.insert(nonce, sent_at_ms);
        true
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The index of `outcome` in [`CancelOutcome::ALL`], the byte a receiver answers.
fn outcome_index(outcome: CancelOutcome) -> u8 {
    CancelOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(0) as u8
}

/// Where a key says its client is: the process that handed it out (a 3.2 key names
/// it) and its slot.
#[derive(Debug, Clone, Copy)]
struct Named {
    slot: Option<u8>,
    instance: Option<i64>,
}

/// How a forwarded cancel reached this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// From another replica, over `[fleet] listen`: handed on to the other processes
    /// of this slot if no client here has the key.
    Replica,
    /// From another process of this slot, over the unix socket: never handed on.
    SlotMate,
}

impl FleetLink {
    pub fn new(tag: Arc<FleetTag>, instance: i64) -> Self {
        FleetLink {
            tag,
            instance,
            membership: ArcSwap::from_pointee(Membership::default()),
            nonces: Mutex::default(),
            incoming: Arc::new(Semaphore::new(MAX_INCOMING)),
        }
    }

    /// Follows the fleet: keys from now on carry this replica's slot, and cancels go to
    /// the replicas live now.
    pub fn set_membership(&self, membership: Membership) {
        self.tag.set_slot(membership.this().map(|r| r.slot));
        self.membership.store(Arc::new(membership));
    }

    /// What `key` names, if it is a key of this fleet as far as can be told (a 3.2
    /// key's tag is checked; a 3.0 key's slot byte is as good as any).
    fn named(&self, key: &ClientCancelKey) -> Option<Named> {
        match key {
            ClientCancelKey::Short(key) => Some(Named {
                slot: Some(slot_of(&self.tag.secret, *key)),
                instance: None,
            }),
            ClientCancelKey::Long(key) => {
                let origin = long_key_origin(&self.tag.secret, key)?;
                Some(Named {
                    slot: origin.slot,
                    instance: Some(origin.instance),
                })
            }
        }
    }

    /// The other live processes in this process's slot: the one it replaced in a
    /// restart, or its successor. Those `named` picks first, then serving ones.
    fn slot_mates(&self, membership: &Membership, named: Option<Named>) -> Vec<Replica> {
        let Some(me) = membership.this() else {
            return Vec::new();
        };
        let mut mates: Vec<Replica> = membership
            .in_slot(me.slot)
            .filter(|r| r.instance != self.instance)
            .cloned()
            .collect();
        mates.sort_by_key(|r| {
            let exact = named.and_then(|n| n.instance) == Some(r.instance);
            (!exact, r.draining)
        });
        mates
    }

    /// Sends on a CancelRequest whose key no client of this process has: to the
    /// replica the key names, or, when it names this replica's slot, to the other
    /// processes in it. `None` if there is nobody to send it to.
    pub async fn forward(&self, key: ClientCancelKey, client_ip: IpAddr) -> Option<CancelOutcome> {
        let named = self.named(&key)?;
        let membership = self.membership.load_full();
        let my_slot = membership.this().map(|me| me.slot);
        if named.instance == Some(self.instance) || (named.slot.is_some() && named.slot == my_slot)
        {
            // A key of this process, or of another process in its slot: a client that
            // moved here or from here in a restart, or one the other process still has.
            let mates = self.slot_mates(&membership, Some(named));
            return self.hand_on(key, client_ip, &mates, true).await;
        }
        let exact = named.instance.and_then(|i| membership.by_instance(i));
        let peer = exact.or_else(|| {
            let slot = named.slot?;
            membership.in_slot(slot).min_by_key(|r| r.draining)
        })?;
        self.hand_on(key, client_ip, std::slice::from_ref(peer), false)
            .await
    }

    /// Sends the cancel to `peers` in turn until one has the key (over the unix socket
    /// to the processes of this slot, `local`, else over TCP). `None`: no peers.
    async fn hand_on(
        &self,
        key: ClientCancelKey,
        client_ip: IpAddr,
        peers: &[Replica],
        local: bool,
    ) -> Option<CancelOutcome> {
        let mut outcome = None;
        for peer in peers {
            let message = ForwardedCancel {
                from_slot: self.tag.slot().unwrap_or(u8::MAX),
                sent_at_ms: now_ms(),
                nonce: rand::thread_rng().gen(),
                key,
                client_ip,
            };
            let bytes = message.encode(&self.tag.secret);
            let sent = tokio::time::timeout(FORWARD_TIMEOUT, send(peer, &bytes, local)).await;
            match sent {
                Ok(Ok(answer)) => {
                    let theirs = CancelOutcome::ALL.get(usize::from(answer)).copied();
                    let name = theirs.map_or("unknown", |o| o.as_str());
                    tracing::info!(replica = %peer.id, instance = peer.instance, slot = peer.slot, outcome = name, "cancel request sent on to its replica");
                    outcome = Some(CancelOutcome::ToReplica);
                    if theirs != Some(CancelOutcome::UnknownKey) {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(replica = %peer.id, error = %e, "sending a cancel request on to its replica");
                    outcome = outcome.or(Some(CancelOutcome::Failed));
                }
                Err(_) => {
                    tracing::warn!(replica = %peer.id, "sending a cancel request on to its replica timed out");
                    outcome = outcome.or(Some(CancelOutcome::Failed));
                }
            }
        }
        outcome
    }

    /// Serves the forwarded cancels other replicas send to `listener` until `stop`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        registry: Arc<CancelRegistry>,
        rejections: Arc<Rejections>,
        stop: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a replica's connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.spawn_receive(
                stream,
                peer.to_string(),
                Via::Replica,
                &registry,
                &rejections,
            );
        }
    }

    /// Serves the forwarded cancels the other processes of this slot send to this
    /// process's unix socket ([`local_address`]) until `stop`.
    pub async fn serve_local(
        self: Arc<Self>,
        registry: Arc<CancelRegistry>,
        rejections: Arc<Rejections>,
        stop: CancellationToken,
    ) {
        let bound = local_address(self.instance)
            .and_then(|addr| std::os::unix::net::UnixListener::bind_addr(&addr))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::UnixListener::from_std);
        let listener = match bound {
            Ok(listener) => listener,
            Err(e) => {
                return tracing::warn!(error = %e, "cannot take cancels from the other processes of this replica's slot")
            }
        };
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let peer = "a process of this slot".to_owned();
                    self.spawn_receive(stream, peer, Via::SlotMate, &registry, &rejections)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a cancel from this slot failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn_receive<S>(
        self: &Arc<Self>,
        stream: S,
        peer: String,
        via: Via,
        registry: &Arc<CancelRegistry>,
        rejections: &Arc<Rejections>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Over the bound, the connection is closed unread: its sender counts a failure.
        let Ok(permit) = self.incoming.clone().try_acquire_owned() else {
            return;
        };
        let link = self.clone();
        let (registry, rejections) = (registry.clone(), rejections.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(why) = link.receive(stream, via, &registry, &rejections).await {
                tracing::warn!(peer_addr = %peer, error = %why, "forwarded cancel refused");
            }
        });
    }

    /// Reads one forwarded cancel, checks it, carries it out (or hands it on to the
    /// other processes of this slot), and answers.
    async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        via: Via,
        registry: &CancelRegistry,
        rejections: &Rejections,
    ) -> Result<(), String> {
        let bytes = tokio::time::timeout(READ_TIMEOUT, async {
            let mut head = [0u8; HEAD_LEN];
            stream
                .read_exact(&mut head)
                .await
                .map_err(|e| e.to_string())?;
            let len = forwarded_len(&head).map_err(|e| e.to_string())?;
            // At most MAX_FORWARDED_CANCEL_LEN: `forwarded_len` bounds the key.
            let mut bytes = vec![0u8; len.min(MAX_FORWARDED_CANCEL_LEN)];
            bytes[..HEAD_LEN].copy_from_slice(&head);
            stream
                .read_exact(&mut bytes[HEAD_LEN..])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(bytes)
        })
        .await
        .map_err(|_| "it was not sent in time".to_owned())??;
        let message =
            ForwardedCancel::decode(&bytes, &self.tag.secret).map_err(|e| e.to_string())?;
        let now = now_ms();
        if now.abs_diff(message.sent_at_ms) > FRESHNESS.as_millis() as u64 {
            return Err(format!(
                "sent {} ms away from this replica's clock",
                now.abs_diff(message.sent_at_ms)
            ));
        }
        let fresh = self.nonces.lock().expect("nonce lock poisoned").fresh(
            message.nonce,
            message.sent_at_ms,
            now,
        );
        if !fresh {
            return Err("a replay (its nonce was seen)".into());
        }
        let handed = if via == Via::Replica && !registry.knows(&message.key) {
            // Not a client of this process: maybe of the other process in this slot.
            let mates = self.slot_mates(&self.membership.load(), self.named(&message.key));
            self.hand_on(message.key, message.client_ip, &mates, true)
                .await
        } else {
            None
        };
        let answer = match handed {
            Some(outcome) => {
                rejections.record_cancel(Who::Nobody, outcome);
                outcome
            }
            None => carry_out_forwarded(registry, rejections, message.key).await,
        };
        tracing::debug!(client_addr = %message.client_ip, from_slot = message.from_slot, outcome = answer.as_str(), "forwarded cancel request");
        let _ = stream.write_all(&[outcome_index(answer)]).await;
        Ok(())
    }
}

/// Sends a signed forwarded cancel to `peer` and reads its one-byte answer: over the
/// unix socket of its process when `local` (never over TCP then: the other process of
/// a slot may share this one's `[fleet] listen` socket, and the cancel could come back
/// here), else over TCP to its `[fleet] listen` address.
async fn send(peer: &Replica, bytes: &[u8], local: bool) -> std::io::Result<u8> {
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        bytes: &[u8],
    ) -> std::io::Result<u8> {
        stream.write_all(bytes).await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        Ok(answer[0])
    }
    if local {
        let stream = local_address(peer.instance)
            .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UnixStream::from_std)?;
        return exchange(stream, bytes).await;
    }
    let stream = TcpStream::connect(peer.internal_addr.as_str()).await?;
    stream.set_nodelay(true)?;
    exchange(stream, bytes).await
}

/// Carries out a CancelRequest for `key` from `ip`: forwards it to the backend, or drops
/// it ([`CancelRegistry::decide`]), and counts what became of it; in a fleet, a key no
/// client of this process has goes on to the replica it names. `None`: a secret of a
/// length Sluice never hands out.
pub async fn carry_out(
    fleet: Option<&FleetLink>,
    registry: &CancelRegistry,
    rejections: &Rejections,
    key: impl Into<Option<ClientCancelKey>>,
    ip: IpAddr,
) -> CancelOutcome {
    let key = key.into();
    let decision = registry.decide(key, ip, Instant::now());
    if decision.outcome == CancelOutcome::UnknownKey {
        if let (Some(link), Some(key)) = (fleet, key) {
            if let Some(outcome) = link.forward(key, ip).await {
                rejections.record_cancel(Who::Nobody, outcome);
                return outcome;
            }
        }
    }
    act(decision, rejections).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once() {
        let mut nonces = Nonces::default();
        assert!(nonces.fresh([1; 16], 1_000, 1_000));
        assert!(!nonces.fresh([1; 16], 1_000, 1_500), "replay");
        assert!(nonces.fresh([2; 16], 1_000, 1_500));
    }
}
