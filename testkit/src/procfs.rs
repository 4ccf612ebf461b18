//! Readings from /proc about a process: its CPU time (utime, stime), context switches,
//! resident memory, parent and name, and open-files limits (raised with `prlimit` when
//! too low). What the benchmarks charge to a pooler and what the memory tests watch.

use std::process::Command;

/// The first word after `prefix` on a line of `text` (pgbench's summary, a /proc
/// status file), parsed.
pub fn field<T: std::str::FromStr>(text: &str, prefix: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Clock ticks per second for /proc/PID/stat times (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// utime and stime (fields 14 and 15 of /proc/PID/stat) of `pid`, in clock ticks.
pub fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name (field 2) may contain spaces: count from after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is fields[N - 3].
    let utime: u64 = fields[14 - 3].parse().expect("utime");
    let stime: u64 = fields[15 - 3].parse().expect("stime");
    (utime, stime)
}

/// Context switches of all of `pid`'s threads so far: voluntary (the thread blocked:
/// epoll_wait, a futex) plus involuntary (preempted), from /proc/PID/task/*/status.
/// Threads that ended before the call are not counted.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            let count = |key: &str| field::<u64>(&status, key).unwrap_or(0);
            count("voluntary_ctxt_switches:") + count("nonvoluntary_ctxt_switches:")
        })
        .sum()
}

/// The parent pid (field 4) and command name (field 2) of `pid`.
pub fn ppid_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// VmRSS of `pid`, in KiB; `None` once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The soft and hard RLIMIT_NOFILE of `pid`, from /proc/PID/limits.
pub fn open_files_limits(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    let soft = words.next()?.parse().ok()?;
    let hard = words.next()?.parse().unwrap_or(u64::MAX);
    Some((soft, hard))
}

/// Lets this process, and every process it starts afterwards (limits are inherited),
/// open at least `n` files: raises RLIMIT_NOFILE with util-linux's `prlimit` when the
/// soft limit is lower (past the hard limit only with CAP_SYS_RESOURCE). Returns the
/// soft limit in force.
pub fn ensure_open_files(n: u64) -> u64 {
    let pid = std::process::id();
    let Some((soft, hard)) = open_files_limits(pid) else {
        return 0;
    };
    if soft >= n {
        return soft;
    }
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{}", hard.max(n)))
        .status();
    let now = open_files_limits(pid).map_or(soft, |(s, _)| s);
    if now < n {
        println!("warning: could not raise the open-files limit from {soft} to {n} ({status:?})");
    }
    now
}

/// A process's TCP connections on local port `port`, by state (`ESTABLISHED`,
/// `TIME_WAIT`, `CLOSE_WAIT`, `other`; listening sockets left out), from
/// /proc/<pid>/net/tcp and tcp6. Both files list the whole network namespace; the local
/// port is what picks the server's side of its client connections.
pub fn tcp_states(pid: u32, port: u16) -> std::collections::HashMap<&'static str, usize> {
    let mut states = std::collections::HashMap::new();
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            let name = match *state {
                "01" => "ESTABLISHED",
                "06" => "TIME_WAIT",
                "08" => "CLOSE_WAIT",
                "0A" => continue, // LISTEN
                _ => "other",
            };
            *states.entry(name).or_insert(0) += 1;
        }
    }
    states
}

/// How many of `states` ([`tcp_states`]) are in `state`.
pub fn in_state(states: &std::collections::HashMap<&'static str, usize>, state: &str) -> usize {
    states.get(state).copied().unwrap_or(0)
}
