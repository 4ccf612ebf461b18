//! Per-pool counters, updated with relaxed atomics on the hot path and read without
//! locks (stats API and metrics come with the observability issue).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients logged in to this pool right now (holding a server or not).
    pub clients: AtomicUsize,
    /// Server connections handed to clients right now.
    pub active: AtomicUsize,
    /// Server connections waiting in the idle list.
    pub idle: AtomicUsize,
    /// Server connections being opened.
    pub connecting: AtomicUsize,
    /// Clients queued for a server connection.
    pub waiting: AtomicUsize,
    /// Transactions completed (ReadyForQuery 'I' ending a request).
    pub transactions: AtomicU64,
    /// Queries sent (Query and Execute messages).
    pub queries: AtomicU64,
    /// Bytes relayed from clients to servers, and back.
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// Checkouts that had to wait, their total and longest wait in microseconds.
    pub waits: AtomicU64,
    pub wait_us_total: AtomicU64,
    pub wait_us_max: AtomicU64,
}

/// A snapshot of [`PoolStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub clients: usize,
    pub active: usize,
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
    pub transactions: u64,
    pub queries: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub waits: u64,
    pub wait_us_total: u64,
    pub wait_us_max: u64,
}

impl PoolStats {
    pub fn snapshot(&self) -> PoolCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolCounts {
            clients: self.clients.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            idle: self.idle.load(Ordering::Relaxed),
            connecting: self.connecting.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            transactions: get(&self.transactions),
            queries: get(&self.queries),
            bytes_from_clients: get(&self.bytes_from_clients),
            bytes_to_clients: get(&self.bytes_to_clients),
            waits: get(&self.waits),
            wait_us_total: get(&self.wait_us_total),
            wait_us_max: get(&self.wait_us_max),
        }
    }

    pub fn record_wait(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_us_total.fetch_add(us, Ordering::Relaxed);
        self.wait_us_max.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts a batch of client messages by tag.
    pub fn client_message(&self, tag: u8) {
        if tag == b'Q' || tag == b'E' {
            self.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a server message: a ReadyForQuery reporting idle ends a transaction.
    pub fn server_message(&self, tag: u8, first_body_byte: Option<u8>) {
        if tag == b'Z' && first_body_byte == Some(b'I') {
            self.transactions.fetch_add(1, Ordering::Relaxed);
        }
    }
}
