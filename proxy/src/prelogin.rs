//! The pre-login phase's own limit: how many connections may be between accept and a
//! successful password check at once, in the whole process and per client address
//! (`[proxy] max_pending_logins`, `max_pending_logins_per_ip`; docs/limits.md).
//!
//! The phase starts when a connection is accepted and ends when its client has proved
//! its password (SCRAM or md5), or when the connection ends before that: a cancel
//! request, a refusal, the login timeout, the client leaving. What a connection holds
//! meanwhile is a [`PendingSlot`]. A connection over either cap is refused at accept,
//! on the accept loop itself and without a task: [`turn_away`] writes a FATAL 53300
//! ErrorResponse into the fresh socket (libpq reads one sent in answer to its
//! SSLRequest or startup packet) and closes it.
//!
//! Behind a load balancer (`[proxy] proxy_protocol`), the socket's peer is the
//! balancer, not the client: a connection from a trusted balancer is counted at accept
//! in the process total only ([`PendingLogins::enter_unkeyed`]), and in its client's
//! address once the PROXY protocol header has told it ([`PendingLogins::key`]); over
//! the per-address cap then, the client is told 53300 and the connection closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::error::ClientError;

/// The connections in the pre-login phase now, in total and per client address.
#[derive(Debug)]
pub struct PendingLogins {
    max: Option<usize>,
    max_per_ip: Option<usize>,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses with a pending connection (so at most `max` entries), and only
    /// when there is a per-address cap.
    per_ip: HashMap<IpAddr, usize>,
}

/// One connection counted in the pre-login phase; dropping it ends the phase.
#[derive(Debug)]
pub struct PendingSlot {
    counts: Arc<Mutex<Counts>>,
    /// `None` when addresses are not counted.
    ip: Option<IpAddr>,
}

impl PendingLogins {
    /// `None`: no cap.
    pub fn new(max: Option<usize>, max_per_ip: Option<usize>) -> Self {
        PendingLogins {
            max,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    /// Counts a connection just accepted from `ip`, unless that would pass a cap.
    pub fn enter(&self, ip: IpAddr) -> Result<PendingSlot, ClientError> {
        let mut counts = self.counts.lock().expect("pending logins lock poisoned");
        if self.max.is_some_and(|max| counts.total >= max) {
            return Err(ClientError::TooManyPendingLogins { per_address: false });
        }
        let tracked = self.count_address(&mut counts, ip)?;
        counts.total += 1;
        Ok(PendingSlot {
            counts: self.counts.clone(),
            ip: tracked,
        })
    }

    /// Counts a connection from a trusted balancer in the process total only: its
    /// client's address is not known yet ([`PendingLogins::key`] counts it).
    pub fn enter_unkeyed(&self) -> Result<PendingSlot, ClientError> {
        let mut counts = self.counts.lock().expect("pending logins lock poisoned");
        if self.max.is_some_and(|max| counts.total >= max) {
            return Err(ClientError::TooManyPendingLogins { per_address: false });
        }
        counts.total += 1;
        Ok(PendingSlot {
            counts: self.counts.clone(),
            ip: None,
        })
    }

    /// Counts `slot` under its client's address `ip`, once known, unless that would
    /// pass the per-address cap. Nothing changes for a slot counted under an address
    /// already, or when addresses are not counted.
    pub fn key(&self, slot: &mut PendingSlot, ip: IpAddr) -> Result<(), ClientError> {
        if slot.ip.is_some() || self.max_per_ip.is_none() {
            return Ok(());
        }
        let mut counts = self.counts.lock().expect("pending logins lock poisoned");
        slot.ip = self.count_address(&mut counts, ip)?;
        Ok(())
    }

    /// One more connection from `ip`, if addresses are counted and it is under the cap.
    fn count_address(
        &self,
        counts: &mut Counts,
        ip: IpAddr,
    ) -> Result<Option<IpAddr>, ClientError> {
        let Some(max) = self.max_per_ip else {
            return Ok(None);
        };
        // IPv4 clients of a dual-stack listener count as their IPv4 address.
        let ip = ip.to_canonical();
        let n = counts.per_ip.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
            return Err(ClientError::TooManyPendingLogins { per_address: true });
        }
        *n += 1;
        Ok(Some(ip))
    }

    /// Connections in the pre-login phase now.
    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .expect("pending logins lock poisoned")
            .total
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("pending logins lock poisoned");
        counts.total -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Refuses a connection just accepted, at constant cost: the FATAL ErrorResponse for
/// `err` goes into the socket's empty send buffer without waiting, whatever the client
/// sent already is read once (so that closing does not reset the connection over
/// bytes left unread, which could discard the error before the client reads it), and
/// the socket is closed.
pub fn turn_away(tcp: TcpStream, err: &ClientError) {
    let mut out = BytesMut::new();
    err.to_response(&mut out);
    let _ = tcp.try_write(&out);
    let mut unread = [0u8; 1024];
    let _ = tcp.try_read(&mut unread);
    drop(tcp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_process_cap_counts_every_address() {
        let pending = PendingLogins::new(Some(3), None);
        let held: Vec<_> = (1..=3).map(|i| pending.enter(ip(i)).unwrap()).collect();
        let err = pending.enter(ip(4)).unwrap_err();
        assert!(matches!(
            err,
            ClientError::TooManyPendingLogins { per_address: false }
        ));
        assert_eq!(err.sqlstate_and_message().0, "53300");
        drop(held);
        assert_eq!(pending.total(), 0);
        assert!(pending.enter(ip(4)).is_ok());
    }

    #[test]
    fn the_per_address_cap_leaves_other_addresses_alone() {
        let pending = PendingLogins::new(Some(100), Some(2));
        let a1 = pending.enter(ip(1)).unwrap();
        let _a2 = pending.enter(ip(1)).unwrap();
        let err = pending.enter(ip(1)).unwrap_err();
        assert!(matches!(
            err,
            ClientError::TooManyPendingLogins { per_address: true }
        ));
        // The IPv4-mapped spelling of the same address is the same address.
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert!(pending.enter(mapped).is_err());
        let _b = pending.enter(ip(2)).unwrap();
        drop(a1);
        let _a3 = pending.enter(ip(1)).unwrap();
        assert_eq!(pending.total(), 3);
    }

    #[test]
    fn a_balancers_connections_count_under_their_clients_addresses() {
        let pending = PendingLogins::new(Some(10), Some(1));
        let mut a = pending.enter_unkeyed().unwrap();
        let mut b = pending.enter_unkeyed().unwrap();
        assert_eq!(pending.total(), 2);
        pending.key(&mut a, ip(2)).unwrap();
        // Keyed once only.
        pending.key(&mut a, ip(3)).unwrap();
        let err = pending.key(&mut b, ip(2)).unwrap_err();
        assert!(matches!(
            err,
            ClientError::TooManyPendingLogins { per_address: true }
        ));
        pending.key(&mut b, ip(3)).unwrap();
        assert!(pending.enter(ip(3)).is_err());
        drop((a, b));
        assert_eq!(pending.total(), 0);
        assert!(pending.counts.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn addresses_are_forgotten_when_their_last_connection_leaves() {
        let pending = PendingLogins::new(None, Some(5));
        let slots: Vec<_> = (0..=255).map(|i| pending.enter(ip(i)).unwrap()).collect();
        assert_eq!(pending.counts.lock().unwrap().per_ip.len(), 256);
        drop(slots);
        assert!(pending.counts.lock().unwrap().per_ip.is_empty());
        assert_eq!(pending.total(), 0);
    }
}
