//! The proxy in a fleet: CancelRequests for another replica's clients are sent on to
//! it, and this replica carries out those the others send here.
//!
//! Every key a replica hands out carries its slot (`cancel::FleetTag`). A CancelRequest
//! whose key no local client has is sent on to the live replica in the key's slot, as
//! a [`ForwardedCancel`] signed with the fleet's secret, over a connection to its
//! `[fleet] listen` address; the address's rate (`cancel_rate_per_ip`) was taken
//! before, here, so forged keys reach the others no faster than they reach one
//! replica. The receiver checks the signature, that the message is fresh (sent within
//! [`FRESHNESS`] of its own clock) and not seen before (its nonce), then decides as
//! for its own CancelRequests (without charging the address again) and answers with
//! one byte: what it did (a [`CancelOutcome`] index).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rand::Rng;
use router::{CancelOutcome, Membership, Rejections, Who};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wire::fleet::{slot_of, ForwardedCancel, FORWARDED_CANCEL_LEN};
use wire::startup::CancelKey;

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

/// The proxy's side of the fleet.
#[derive(Debug)]
pub struct FleetLink {
    tag: Arc<FleetTag>,
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

impl FleetLink {
    pub fn new(tag: Arc<FleetTag>) -> Self {
        FleetLink {
            tag,
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

    /// Sends on a CancelRequest whose key no client of this replica has, if the key's
    /// slot is another live replica's; `None` if it is not.
    pub async fn forward(&self, key: CancelKey, client_ip: IpAddr) -> Option<CancelOutcome> {
        let slot = slot_of(&self.tag.secret, key);
        if Some(slot) == self.tag.slot() {
            return None;
        }
        let peer = self.membership.load().by_slot(slot)?.clone();
        let message = ForwardedCancel {
            from_slot: self.tag.slot().unwrap_or(u8::MAX),
            sent_at_ms: now_ms(),
            nonce: rand::thread_rng().gen(),
            key,
            client_ip,
        };
        let bytes = message.encode(&self.tag.secret);
        let sent = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let mut stream = TcpStream::connect(peer.internal_addr.as_str()).await?;
            stream.set_nodelay(true)?;
            stream.write_all(&bytes).await?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer[0])
        })
        .await;
        match sent {
            Ok(Ok(answer)) => {
                let theirs = CancelOutcome::ALL
                    .get(usize::from(answer))
                    .map_or("unknown", |o| o.as_str());
                tracing::info!(replica = %peer.id, slot, outcome = theirs, "cancel request sent on to its replica");
                Some(CancelOutcome::ToReplica)
            }
            Ok(Err(e)) => {
                tracing::warn!(replica = %peer.id, error = %e, "sending a cancel request on to its replica");
                Some(CancelOutcome::Failed)
            }
            Err(_) => {
                tracing::warn!(replica = %peer.id, "sending a cancel request on to its replica timed out");
                Some(CancelOutcome::Failed)
            }
        }
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
            // Over the bound, the connection is closed unread: its sender counts a
            // failure.
            let Ok(permit) = self.incoming.clone().try_acquire_owned() else {
                continue;
            };
            let link = self.clone();
            let (registry, rejections) = (registry.clone(), rejections.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(why) = link.receive(stream, &registry, &rejections).await {
                    tracing::warn!(peer_addr = %peer, error = %why, "forwarded cancel refused");
                }
            });
        }
    }

    /// Reads one forwarded cancel, checks it, carries it out, and answers.
    async fn receive(
        &self,
        mut stream: TcpStream,
        registry: &CancelRegistry,
        rejections: &Rejections,
    ) -> Result<(), String> {
        let mut bytes = [0u8; FORWARDED_CANCEL_LEN];
        tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut bytes))
            .await
            .map_err(|_| "it was not sent in time".to_owned())?
            .map_err(|e| e.to_string())?;
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
        let outcome = carry_out_forwarded(registry, rejections, message.key).await;
        tracing::debug!(client_addr = %message.client_ip, from_slot = message.from_slot, outcome = outcome.as_str(), "forwarded cancel request");
        let index = CancelOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0) as u8;
        let _ = stream.write_all(&[index]).await;
        Ok(())
    }
}

/// Carries out a CancelRequest for `key` from `ip`: forwards it to the backend, or drops
/// it ([`CancelRegistry::decide`]), and counts what became of it; in a fleet, a key no
/// client of this replica has goes on to the replica whose slot it carries.
pub async fn carry_out(
    fleet: Option<&FleetLink>,
    registry: &CancelRegistry,
    rejections: &Rejections,
    key: CancelKey,
    ip: IpAddr,
) -> CancelOutcome {
    let decision = registry.decide(key, ip, Instant::now());
    if decision.outcome == CancelOutcome::UnknownKey {
        if let Some(outcome) = match fleet {
            Some(link) => link.forward(key, ip).await,
            None => None,
        } {
            rejections.record_cancel(Who::Nobody, outcome);
            return outcome;
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
