//! Per-pool counters and process-wide latency histograms, updated with relaxed atomics
//! on the hot path and read without locks by the stats API and `/metrics`.

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
    /// Server connections opened so far (with the ones open now, how many closed:
    /// churn, e.g. connections closed because a cancel was sent to them).
    pub opened: AtomicU64,
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
    /// Transaction-mode clients holding their server connection because their session
    /// holds state (see the proxy's `session_state`), right now.
    pub pinned: AtomicUsize,
    /// Pins so far, by reason ([`PIN_REASONS`]).
    pub pins: [AtomicU64; PIN_REASONS.len()],
}

/// Why a transaction-mode client keeps its server connection: the `reason` label of
/// `sluice_pins_total`, in the proxy's `PinReason::ALL` order (a test there checks).
pub const PIN_REASONS: [&str; 11] = [
    "set",
    "set_role",
    "set_config",
    "prepare",
    "listen",
    "temp_table",
    "advisory_lock",
    "hold_cursor",
    "load",
    "do",
    "unscanned",
];

/// A snapshot of [`PoolStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub clients: usize,
    pub active: usize,
    pub idle: usize,
    pub connecting: usize,
    pub opened: u64,
    pub waiting: usize,
    pub transactions: u64,
    pub queries: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub waits: u64,
    pub wait_us_total: u64,
    pub wait_us_max: u64,
    pub pinned: usize,
    pub pins: [u64; PIN_REASONS.len()],
}

impl PoolStats {
    pub fn snapshot(&self) -> PoolCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolCounts {
            clients: self.clients.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            idle: self.idle.load(Ordering::Relaxed),
            connecting: self.connecting.load(Ordering::Relaxed),
            opened: get(&self.opened),
            waiting: self.waiting.load(Ordering::Relaxed),
            transactions: get(&self.transactions),
            queries: get(&self.queries),
            bytes_from_clients: get(&self.bytes_from_clients),
            bytes_to_clients: get(&self.bytes_to_clients),
            waits: get(&self.waits),
            wait_us_total: get(&self.wait_us_total),
            wait_us_max: get(&self.wait_us_max),
            pinned: self.pinned.load(Ordering::Relaxed),
            pins: std::array::from_fn(|i| get(&self.pins[i])),
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

/// Upper bounds (seconds) of the buckets of [`Histograms::pool_wait`].
pub const POOL_WAIT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// Upper bounds (seconds) of the buckets of [`Histograms::query_duration`].
pub const QUERY_DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// The process-wide latency histograms (no tenant label: their cost and cardinality
/// stay fixed however many tenants there are).
#[derive(Debug)]
pub struct Histograms {
    /// Time from asking a pool for a server connection to holding one (0 when one
    /// was free), for every checkout.
    pub pool_wait: Histogram,
    /// Time from a client request (Query, Sync, FunctionCall) reaching the server to
    /// its ReadyForQuery.
    pub query_duration: Histogram,
    /// `[metrics] enabled = false` turns observations off (to measure their cost).
    enabled: bool,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms::new(true)
    }
}

impl Histograms {
    pub fn new(enabled: bool) -> Self {
        Histograms {
            pool_wait: Histogram::new(POOL_WAIT_BUCKETS),
            query_duration: Histogram::new(QUERY_DURATION_BUCKETS),
            enabled,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn pool_wait(&self, d: Duration) {
        if self.enabled {
            self.pool_wait.observe(d);
        }
    }

    pub fn query_duration(&self, d: Duration) {
        if self.enabled {
            self.query_duration.observe(d);
        }
    }
}

/// A fixed-bucket histogram of durations: two relaxed atomic adds per observation (its
/// bucket and the sum), no lock. A reader may see an observation in its bucket but
/// not yet in the sum for a moment, which Prometheus tolerates.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`], with cumulative buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound, observations ≤ bound), ending with +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets = bounds
            .zip(self.buckets.iter())
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            // What the buckets hold, so that the +Inf bucket equals the count even
            // while observations are landing.
            count: cumulative,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        h.observe(Duration::ZERO);
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(
            s.buckets,
            vec![(0.001, 2), (0.01, 3), (0.1, 3), (f64::INFINITY, 4)]
        );
        assert!((s.sum_seconds - 3.006).abs() < 1e-9);
    }
}
