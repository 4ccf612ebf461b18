//! CPU per run, in cores: the pooler, the spam (this process's own threads), pgbench
//! (this process's reaped children), Postgres (the postmaster and its backends, also
//! the ones that carried cancels), the machine, and everything else on it (builds,
//! other tests: a run where they used more than [`OTHERS_WARN`] cores is disturbed).

use std::time::Instant;

/// Other processes' CPU (cores) above which a run is flagged as disturbed.
pub const OTHERS_WARN: f64 = 0.15;

/// Fields 3 on of /proc/PID/stat; field N is `[N - 3]`. The command name (field 2)
/// may contain spaces: split after its ')'.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect(),
    )
}

/// (utime + stime, cutime + cstime) of `pid`; zeros once it is gone.
fn ticks(pid: &str) -> (u64, u64) {
    stat_fields(pid).map_or((0, 0), |f| (f[14 - 3] + f[15 - 3], f[16 - 3] + f[17 - 3]))
}

/// A postmaster and all its processes: its own time, its reaped children's, and the
/// live ones' (ppid = the postmaster).
fn cluster_ticks(postmaster: u32) -> u64 {
    let (own, reaped) = ticks(&postmaster.to_string());
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f[4 - 3] == u64::from(postmaster) {
                total += f[14 - 3] + f[15 - 3];
            }
        }
    }
    total
}

/// (busy, softirq) ticks of the whole machine from /proc/stat's `cpu` line (busy: user,
/// nice, system, irq and softirq; not idle, iowait, nor time the hypervisor stole).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let v: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    (v[0] + v[1] + v[2] + v[5] + v[6], v[6])
}

/// What the bench's processes had used at one moment, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    at: Instant,
    pooler: u64,
    this: (u64, u64),
    postgres: u64,
    machine: (u64, u64),
}

impl Reading {
    pub fn now(pooler: u32, postmaster: u32) -> Reading {
        Reading {
            at: Instant::now(),
            pooler: ticks(&pooler.to_string()).0,
            this: ticks("self"),
            postgres: cluster_ticks(postmaster),
            machine: machine_ticks(),
        }
    }

    /// Cores used from `self` until `later`.
    pub fn until(&self, later: &Reading, hz: f64) -> Cores {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz / secs;
        let pooler = cores(self.pooler, later.pooler);
        let spam = cores(self.this.0, later.this.0);
        let pgbench = cores(self.this.1, later.this.1);
        let postgres = cores(self.postgres, later.postgres);
        let machine = cores(self.machine.0, later.machine.0);
        let softirq = cores(self.machine.1, later.machine.1);
        Cores {
            pooler,
            spam,
            pgbench,
            postgres,
            machine,
            softirq,
            others: (machine - softirq - pooler - spam - pgbench - postgres).max(0.0),
        }
    }
}

/// CPU over one run, in cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cores {
    pub pooler: f64,
    /// This process: the spam's senders and owner (and the bench's idle threads).
    pub spam: f64,
    pub pgbench: f64,
    pub postgres: f64,
    pub machine: f64,
    /// Softirq time, mostly the loopback network's (charged to no process).
    pub softirq: f64,
    /// Machine user + system time no process above accounts for: other work on the
    /// machine, which disturbs the run.
    pub others: f64,
}
