//! Questions about other processes, answered from `/proc`.
//!
//! A postmaster we did not start (an earlier run of `sluice demo`, or one whose parent was
//! killed) is known only by the pid in `postmaster.pid`. Pids are reused, so "is it alive"
//! is not enough: a process counts as a server of a data directory only if its working
//! directory is that directory (postgres chdirs there) and its executable is our `postgres`.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// True if `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// True if `pid` is a live process running the `postgres` binary (canonical path).
pub(crate) fn runs(pid: u32, postgres: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == postgres) && is_alive(pid)
}

/// True if `pid` is a live postgres process working in `data_dir` (both paths canonical).
pub(crate) fn serves(pid: u32, data_dir: &Path, postgres: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
        && runs(pid, postgres)
}

/// Live postgres processes working in `data_dir`: after a postmaster is SIGKILLed its
/// backends and auxiliary processes linger for a moment, holding the shared memory that a
/// new postmaster refuses to share.
pub(crate) fn servers_of(data_dir: &Path, postgres: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| serves(pid, data_dir, postgres))
        .collect()
}

/// Sends `signal` to `pid`, ignoring a process that has already gone.
pub(crate) fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

/// Polls until `done` returns true or `timeout` passes; returns whether it became true.
pub(crate) fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
