//! Running SQL with `postgres --single` while the cluster is stopped.
//!
//! This is how credentials get in without a plaintext password ever touching disk or a
//! network socket: the caller passes `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'` with a
//! verifier it computed, and it travels only through a pipe.
//!
//! Input mode: the default (not `-j`), where **each line is one command**, run in its own
//! transaction; a line ending in a backslash continues on the next line. That keeps statements
//! such as CREATE DATABASE (which refuses to run in a transaction block) usable one per line.
//! `-j` would allow free-form multi-line SQL but needs a blank line after every statement,
//! and running several statements in one command puts them in one implicit transaction.

use super::Cluster;
use crate::{launcher, Error};

/// Severities that mean a statement failed. With `exit_on_error` the backend exits at the
/// first one, but it has also been seen to exit 0 after reporting an ERROR, so both the
/// status and stderr are checked.
const FAILURE_SEVERITIES: [&str; 3] = ["ERROR:", "FATAL:", "PANIC:"];

impl Cluster {
    /// Runs `sql` (one statement per line) in a single-user backend connected to database
    /// `postgres` as the bootstrap superuser. The cluster must be stopped. Fails with the
    /// backend's stderr when any statement fails; later lines are then not run.
    ///
    /// Statement texts are kept out of the backend's error output
    /// (`log_min_error_statement=panic`), so a failing `ALTER ROLE ... PASSWORD` does not
    /// copy its verifier into the returned error.
    pub fn run_single_user(&self, sql: &str) -> Result<(), Error> {
        if let Some(pid) = self.pid() {
            return Err(Error::AlreadyRunning {
                data_dir: self.data_dir.clone(),
                pid,
            });
        }
        self.clear_stale()?;
        let mut command = launcher::server_command(&self.install.bin_dir, "postgres");
        command
            .arg("--single")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .args(["-c", "exit_on_error=on"])
            .args(["-c", "log_min_error_statement=panic"])
            .args(["-c", "log_line_prefix="])
            .arg("postgres");
        let mut input = sql.to_owned();
        if !input.ends_with('\n') {
            input.push('\n');
        }
        let output = launcher::output(command, input.as_bytes())?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let failed_line = stderr.lines().any(|line| {
            let line = line.trim_start();
            FAILURE_SEVERITIES.iter().any(|s| line.starts_with(s))
        });
        if failed_line || !output.status.success() {
            let stderr = if stderr.is_empty() {
                format!("(no stderr; exit {})", output.status)
            } else {
                stderr
            };
            return Err(Error::SingleUser {
                data_dir: self.data_dir.clone(),
                stderr,
            });
        }
        Ok(())
    }
}
