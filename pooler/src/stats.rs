//! Per-pool counters and process-wide latency histograms, updated with relaxed atomics
//! on the hot path and read without locks by the stats API and `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients logged in to this pool right now (holding a server or not).
    pub clients: AtomicUsize,
    /// Logins accepted into this pool so far (a client moved here from the process
    /// this one replaced is not a login).
    pub logins: AtomicU64,
    /// How long the pool's clients have been logged in, in total (see [`ClientTime`]).
    client_time: Mutex<ClientTime>,
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

/// The logged-in time of a pool's clients, exact at any instant without a timer:
/// the time of those that left, plus, for those logged in now, `now - since` each,
/// which is `open * now - Σ since`. Changed once per login and logout, under a lock
/// of its own (never per message).
#[derive(Debug, Default)]
struct ClientTime {
    /// Clients counted now.
    open: u64,
    /// The sum of their login instants, in µs after [`epoch`].
    since_sum: u128,
    /// The logged-in time of the clients that left, in µs.
    closed: u128,
}

/// The instant client times are counted from (the first use in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
fn micros_now() -> u128 {
    epoch().elapsed().as_micros()
}

/// A snapshot of [`PoolStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub clients: usize,
    /// Logins accepted so far.
    pub logins: u64,
    /// Microseconds clients have been logged in, in total, up to the snapshot (the
    /// ones logged in now counted up to then).
    pub client_us: u64,
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
            logins: get(&self.logins),
            client_us: self.client_micros(),
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

    /// A client joins the pool: counted in `clients` (and `logins` when it logged in
    /// here), its logged-in time running from now. Returns its login instant for
    /// [`PoolStats::client_left`].
    pub fn client_joined(&self, login: bool) -> u128 {
        // Every instant is taken under the lock, so they come in the lock's order and
        // the total never goes back.
        let mut time = self.client_time.lock().expect("client time lock poisoned");
        let since = micros_now();
        time.open += 1;
        time.since_sum += since;
        self.clients.fetch_add(1, Ordering::Relaxed);
        if login {
            self.logins.fetch_add(1, Ordering::Relaxed);
        }
        since
    }

    /// The client that joined at `since` leaves.
    pub fn client_left(&self, since: u128) {
        let mut time = self.client_time.lock().expect("client time lock poisoned");
        let now = micros_now();
        time.open = time.open.saturating_sub(1);
        time.since_sum = time.since_sum.saturating_sub(since);
        time.closed += now.saturating_sub(since);
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Microseconds the pool's clients have been logged in, in total, until now.
    pub fn client_micros(&self) -> u64 {
        let time = self.client_time.lock().expect("client time lock poisoned");
        let now = micros_now();
        let open = (time.open as u128 * now).saturating_sub(time.since_sum);
        u64::try_from(time.closed + open).unwrap_or(u64::MAX)
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
    fn client_time_never_goes_back_while_clients_come_and_go() {
        let stats = std::sync::Arc::new(PoolStats::default());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let since = stats.client_joined(true);
                        stats.client_left(since);
                    }
                })
            })
            .collect();
        let mut last = 0;
        while !workers.iter().all(|w| w.is_finished()) {
            let now = stats.client_micros();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn client_time_counts_the_ones_logged_in_up_to_now_and_the_ones_that_left() {
        let stats = PoolStats::default();
        let a = stats.client_joined(true);
        let b = stats.client_joined(false);
        std::thread::sleep(Duration::from_millis(20));
        let both = stats.client_micros();
        assert!(both >= 40_000, "{both}");
        stats.client_left(a);
        let after_a = stats.client_micros();
        assert!(after_a >= both, "never goes back: {after_a} < {both}");
        stats.client_left(b);
        let done = stats.client_micros();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            stats.client_micros(),
            done,
            "nobody is logged in: it stands still"
        );
        let c = stats.snapshot();
        assert_eq!((c.clients, c.logins, c.client_us), (0, 1, done));
    }

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
