//! Reading `postmaster.pid`, the postmaster's lock and status file.
//!
//! Its lines are: pid, data directory, start time, port, socket directory, listen address,
//! shared memory key, status. The status line says "ready" once connections are accepted.
//! A single-user backend writes its pid negated.

use std::path::Path;

pub(super) const FILE_NAME: &str = "postmaster.pid";

/// What `postmaster.pid` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PidFile {
    pub pid: u32,
    /// The 8th line, trimmed; None while the postmaster has not written it yet.
    pub status: Option<String>,
}

impl PidFile {
    pub fn is_ready(&self) -> bool {
        self.status.as_deref() == Some("ready")
    }
}

/// Reads and parses `postmaster.pid`; None if it is missing or not (yet) parseable.
pub(super) fn read(data_dir: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(data_dir.join(FILE_NAME)).ok()?;
    parse(&text)
}

fn parse(text: &str) -> Option<PidFile> {
    let mut lines = text.lines();
    let pid: i64 = lines.next()?.trim().parse().ok()?;
    let pid = u32::try_from(pid.unsigned_abs())
        .ok()
        .filter(|&pid| pid != 0)?;
    let status = lines.nth(6).map(|line| line.trim().to_owned());
    Some(PidFile { pid, status })
}

/// Pid in a socket lock file (`.s.PGSQL.<port>.lock`), whose first line is the pid too.
pub(super) fn read_socket_lock(path: &Path) -> Option<u32> {
    parse(&std::fs::read_to_string(path).ok()?).map(|file| file.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_starting_and_ready_files() {
        let starting = "4242\n/data\n1700000000\n5432\n/sock\n127.0.0.1\n  1234 5678\n";
        let parsed = parse(starting).unwrap();
        assert_eq!(parsed.pid, 4242);
        assert!(!parsed.is_ready());
        let ready = format!("{starting}ready   \n");
        assert!(parse(&ready).unwrap().is_ready());
        assert_eq!(parse("-77\n/data\n").unwrap().pid, 77);
        assert_eq!(parse(""), None);
        assert_eq!(parse("garbage\n"), None);
    }
}
