//! CPU accounting per phase: Sluice, the storm's clients (this process), both
//! clusters, the pgbench processes, the machine, its softirq time, and everything else.

use super::*;

/// Fields 3 on of /proc/PID/stat ("self" for this process), if it exists; field N is
/// `[N - 3]`. The command name (field 2) may contain spaces: split after its ')'.
pub(crate) fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is a letter: keep the positions with a placeholder.
    Some(
        rest.split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime (fields 14, 15) of `pid`, plus with `children` the times of its
/// children it has reaped (cutime + cstime, fields 16, 17); 0 once it is gone.
pub(crate) fn cpu_ticks(pid: &str, children: bool) -> u64 {
    let Some(f) = stat_fields(pid) else {
        return 0;
    };
    let own = f[14 - 3] + f[15 - 3];
    if children {
        own + f[16 - 3] + f[17 - 3]
    } else {
        own
    }
}

/// A postmaster and all its processes: its own time, its reaped backends' (cutime),
/// and the live ones' (ppid = the postmaster). A backend counted live at one reading
/// and reaped at the next is counted once either way.
pub(crate) fn cluster_ticks(postmaster: u32) -> u64 {
    let mut ticks = cpu_ticks(&postmaster.to_string(), true);
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
                ticks += f[14 - 3] + f[15 - 3];
            }
        }
    }
    ticks
}

/// (busy, user + nice + system, softirq) ticks of the whole machine from /proc/stat's
/// `cpu` line; idle and iowait are not busy.
pub(crate) fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let line = stat.lines().next().expect("cpu line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4], v[0] + v[1] + v[2], v[6])
}

/// CPU ticks of the kernel's `ksoftirqd/N` threads: network work deferred from
/// interrupt context to a thread, where it waits its turn like any process.
pub(crate) fn ksoftirqd_ticks() -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.starts_with("ksoftirqd/")
                .then(|| cpu_ticks(&pid, false))
        })
        .sum()
}

/// CPU used over one phase, in cores (CPU seconds per wall-clock second).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// Sluice's CPU seconds over the phase.
    pub(crate) sluice_secs: f64,
    pub(crate) sluice: f64,
    /// This process: the storm's clients (and the waiting threads).
    pub(crate) client: f64,
    /// Both clusters' postmasters and backends.
    pub(crate) postgres: f64,
    /// The pgbench processes (reaped children of this process).
    pub(crate) pgbench: f64,
    pub(crate) machine: f64,
    /// Softirq time (/proc/stat), mostly the loopback network's receive side.
    pub(crate) softirq: f64,
    /// The ksoftirqd threads: softirq work the kernel deferred to them.
    pub(crate) ksoftirqd: f64,
    /// Machine user + system time not spent by any process above: other work on the
    /// machine (builds, other tests), which disturbs the phase.
    pub(crate) others: f64,
}

/// What the processes of the bench have used so far, in ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) sluice: u64,
    pub(crate) client: u64,
    pub(crate) postgres: u64,
    pub(crate) pgbench: u64,
    pub(crate) machine: (u64, u64, u64),
    pub(crate) ksoftirqd: u64,
}

pub(crate) struct CpuMeter {
    pub(crate) sluice_pid: String,
    pub(crate) postmasters: Vec<u32>,
    pub(crate) hz: f64,
    pub(crate) started: Instant,
    pub(crate) start: Reading,
}

impl CpuMeter {
    pub(crate) fn start(ctx: &Ctx) -> Self {
        let mut meter = CpuMeter {
            sluice_pid: ctx.sluice.pid().to_string(),
            postmasters: ctx.postmasters.clone(),
            hz: ctx.hz,
            started: Instant::now(),
            start: Reading {
                sluice: 0,
                client: 0,
                postgres: 0,
                pgbench: 0,
                machine: (0, 0, 0),
                ksoftirqd: 0,
            },
        };
        meter.start = meter.read();
        meter
    }

    pub(crate) fn read(&self) -> Reading {
        let own = stat_fields("self").expect("/proc/self/stat");
        Reading {
            sluice: cpu_ticks(&self.sluice_pid, true),
            client: own[14 - 3] + own[15 - 3],
            pgbench: own[16 - 3] + own[17 - 3],
            postgres: self.postmasters.iter().map(|&p| cluster_ticks(p)).sum(),
            machine: machine_ticks(),
            ksoftirqd: ksoftirqd_ticks(),
        }
    }

    pub(crate) fn stop(&self) -> Cpu {
        let wall = self.started.elapsed().as_secs_f64();
        let (a, b) = (self.start, self.read());
        // /proc/stat counts in the same USER_HZ ticks as /proc/PID/stat.
        let cores = |ticks: u64| ticks as f64 / self.hz / wall;
        let ours = (b.sluice - a.sluice)
            + (b.client - a.client)
            + (b.postgres - a.postgres)
            + (b.pgbench - a.pgbench);
        let sluice_secs = (b.sluice - a.sluice) as f64 / self.hz;
        Cpu {
            sluice_secs,
            sluice: sluice_secs / wall,
            client: cores(b.client - a.client),
            postgres: cores(b.postgres - a.postgres),
            pgbench: cores(b.pgbench - a.pgbench),
            machine: cores(b.machine.0 - a.machine.0),
            softirq: cores(b.machine.2 - a.machine.2),
            ksoftirqd: cores(b.ksoftirqd - a.ksoftirqd),
            others: cores((b.machine.1 - a.machine.1).saturating_sub(ours)),
        }
    }
}
