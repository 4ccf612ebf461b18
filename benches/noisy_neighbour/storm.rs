//! The connection storm against A: threads of TLS + SCRAM connection attempts, each
//! classified as admitted, refused with 53400, shed, or other.

use super::*;

#[derive(Debug, Default, Clone)]
pub(crate) struct StormCounts {
    pub(crate) attempts: u64,
    pub(crate) admitted: u64,
    /// 53400 with "connection rate limit exceeded for tenant \"acme\"".
    pub(crate) refused_rate: u64,
    /// Closed during the TLS handshake: shed at the ClientHello in a storm.
    pub(crate) shed: u64,
    pub(crate) other: u64,
    pub(crate) first_other: Option<String>,
    /// Attempts started in each second since the storm started.
    pub(crate) per_second: Vec<u64>,
    /// When the last attempt ended, in seconds since the storm started.
    pub(crate) ended_after: f64,
}

impl StormCounts {
    pub(crate) fn add(&mut self, o: &StormCounts) {
        if self.per_second.len() < o.per_second.len() {
            self.per_second.resize(o.per_second.len(), 0);
        }
        for (total, n) in self.per_second.iter_mut().zip(&o.per_second) {
            *total += n;
        }
        self.ended_after = self.ended_after.max(o.ended_after);
        self.attempts += o.attempts;
        self.admitted += o.admitted;
        self.refused_rate += o.refused_rate;
        self.shed += o.shed;
        self.other += o.other;
        if self.first_other.is_none() {
            self.first_other.clone_from(&o.first_other);
        }
    }
}

/// [`storm_threads`] threads connecting to A in a loop until the deadline, the attempt
/// budget, or the stop flag (set on drop, which then joins them).
pub(crate) struct Storm {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) threads: Vec<JoinHandle<StormCounts>>,
    /// When it started (seconds since the epoch).
    pub(crate) started_at: f64,
}

impl Storm {
    pub(crate) fn start(target: &PgTarget, for_how_long: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicU64::new(0));
        let (started, started_at) = (Instant::now(), epoch_now());
        let deadline = started + for_how_long;
        let tls = testkit::clients::tls_connector(&target.ca);
        let mut config = testkit::clients::pg_config(target);
        config.connect_timeout(ATTEMPT_TIMEOUT);
        let expected = format!("connection rate limit exceeded for tenant \"{A}\"");
        let n = storm_threads();
        // Each thread's attempts are `gap` apart when the storm is paced.
        let gap = storm_rate().map(|rate| Duration::from_secs_f64(n as f64 / rate));
        let threads = (0..n)
            .map(|_| {
                let (stop, budget) = (stop.clone(), budget.clone());
                let (tls, config, expected) = (tls.clone(), config.clone(), expected.clone());
                std::thread::spawn(move || {
                    let pace = (started, deadline, gap);
                    storm_thread(&stop, &budget, pace, tls, config, &expected)
                })
            })
            .collect();
        Storm {
            stop,
            threads,
            started_at,
        }
    }

    pub(crate) fn finish(mut self) -> StormCounts {
        let mut total = StormCounts::default();
        for t in self.threads.drain(..) {
            total.add(&t.join().expect("storm thread"));
        }
        total
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) fn storm_thread(
    stop: &AtomicBool,
    budget: &AtomicU64,
    (started, deadline, gap): (Instant, Instant, Option<Duration>),
    tls: MakeRustlsConnect,
    config: tokio_postgres::Config,
    expected: &str,
) -> StormCounts {
    if let Some(cpu) = flood_cpu() {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("a CPU number");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .expect("confining the storm thread");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut counts = StormCounts::default();
    runtime.block_on(async {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && budget.fetch_add(1, Ordering::Relaxed) < STORM_MAX_ATTEMPTS
        {
            if let Some(gap) = gap {
                // A fixed schedule: an attempt that ran late does not make the next early.
                tokio::time::sleep_until(next.into()).await;
                next = (next + gap).max(Instant::now());
            }
            counts.attempts += 1;
            let second = started.elapsed().as_secs() as usize;
            if counts.per_second.len() <= second {
                counts.per_second.resize(second + 1, 0);
            }
            counts.per_second[second] += 1;
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, config.connect(tls.clone())).await;
            let other = match attempt {
                // Admitted: hang up at once (the connection is dropped unpolled).
                Ok(Ok(_client_and_connection)) => {
                    counts.admitted += 1;
                    continue;
                }
                Ok(Err(e)) => match e.as_db_error() {
                    Some(db) if db.code().code() == "53400" && db.message() == expected => {
                        counts.refused_rate += 1;
                        continue;
                    }
                    Some(db) => format!("{} {}", db.code().code(), db.message()),
                    None => {
                        counts.shed += 1;
                        continue;
                    }
                },
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            counts.other += 1;
            counts.first_other.get_or_insert(other);
        }
    });
    counts.ended_after = started.elapsed().as_secs_f64();
    counts
}
