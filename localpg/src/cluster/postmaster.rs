//! Starting and stopping the postmaster.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{pid_file, Cluster, StopMode};
use crate::process::{self, poll_until};
use crate::{launcher, Error};

/// How long startup and shutdown may take before we give up (startup) or SIGKILL (shutdown).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the leftover processes of a killed postmaster to notice and exit.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the server log an error carries.
const LOG_TAIL_BYTES: u64 = 4096;

impl Cluster {
    /// Starts the postmaster (through `unshare --user` when running as root) and waits until
    /// it accepts connections. Does nothing if this handle's postmaster is already running;
    /// fails if another one is. A stale `postmaster.pid` or socket lock left by a dead
    /// postmaster is removed first. Output goes to [`Cluster::log_path`].
    pub fn start(&mut self) -> Result<(), Error> {
        if self.own_postmaster_pid().is_some() {
            return Ok(());
        }
        self.clear_stale()?;

        let log_path = self.log_path();
        let log_dir = log_path.parent().expect("log path has a parent");
        std::fs::create_dir_all(log_dir)
            .map_err(|e| Error::io(format!("creating {}", log_dir.display()), e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_for_stdout = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log_path.display()), e))?;

        let mut command = launcher::server_command(&self.install.bin_dir, "postgres");
        command
            .arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for `sluice demo` must not reach the
            // server directly; the owner shuts it down in order.
            .process_group(0);
        let description = launcher::describe(&command);
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("spawning `{description}`"), e))?;
        *self.child() = Some(child);

        let result = self.wait_ready(log_start);
        if result.is_err() {
            if let Some(mut child) = self.child().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        result
    }

    /// Stops the postmaster with `mode`'s signal and waits for it to exit, sending SIGKILL
    /// after 30 s. Does nothing when no postmaster is running.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), Error> {
        let signal = match mode {
            StopMode::Smart => Signal::SIGTERM,
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let own = self.child().take();
        if let Some(child) = own {
            return stop_child(child, signal);
        }
        if let Some(pid) = self.foreign_postmaster_pid() {
            // Not our child: we cannot reap it, only watch it disappear.
            let signal_error = |e| Error::io(format!("signalling postmaster {pid}"), e);
            process::signal(pid, signal).map_err(signal_error)?;
            if !poll_until(TIMEOUT, || !process::is_alive(pid)) {
                process::signal(pid, Signal::SIGKILL).map_err(signal_error)?;
                poll_until(TIMEOUT, || !process::is_alive(pid));
            }
        }
        Ok(())
    }

    /// Polls `postmaster.pid` until our child reports "ready".
    fn wait_ready(&self, log_start: u64) -> Result<(), Error> {
        let mut exited = None;
        let ready = poll_until(TIMEOUT, || {
            let mut guard = self.child();
            let Some(child) = guard.as_mut() else {
                return true;
            };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    exited = Some(status.to_string());
                    *guard = None;
                    return true;
                }
                Err(e) => {
                    exited = Some(format!("cannot wait for it: {e}"));
                    return true;
                }
            }
            let pid = child.id();
            pid_file::read(&self.data_dir).is_some_and(|file| file.pid == pid && file.is_ready())
        });
        if let Some(status) = exited {
            return Err(Error::StartupExited {
                data_dir: self.data_dir.clone(),
                status,
                log_tail: log_tail(&self.log_path(), log_start),
            });
        }
        if !ready {
            return Err(Error::StartupTimeout {
                data_dir: self.data_dir.clone(),
                seconds: TIMEOUT.as_secs(),
                log_tail: log_tail(&self.log_path(), log_start),
            });
        }
        Ok(())
    }

    /// Makes sure no other postmaster runs here and removes what a dead one left behind:
    /// postgres itself cannot tell a recycled pid from a live postmaster (inside the user
    /// namespace, signalling an outside process fails with EPERM, which it reads as "alive").
    pub(super) fn clear_stale(&self) -> Result<(), Error> {
        if let Some(pid) = self.foreign_postmaster_pid() {
            return Err(Error::AlreadyRunning {
                data_dir: self.data_dir.clone(),
                pid,
            });
        }
        remove_if_exists(&self.data_dir.join(pid_file::FILE_NAME))?;
        let socket = self
            .socket_dir
            .join(format!(".s.PGSQL.{}", self.socket_port()));
        let lock = socket.with_file_name(format!(".s.PGSQL.{}.lock", self.socket_port()));
        let lock_holder = pid_file::read_socket_lock(&lock);
        // The lock may belong to another cluster sharing the socket dir and port number;
        // only the lock of a holder that is gone (or is no postgres: a recycled pid) is
        // ours to remove.
        if lock_holder.is_some_and(|pid| !process::runs(pid, &self.postgres_exe)) {
            remove_if_exists(&lock)?;
            remove_if_exists(&socket)?;
        }
        // Backends of a SIGKILLed postmaster still hold its shared memory for a moment, and
        // a new postmaster refuses to start until they are gone.
        poll_until(ORPHAN_TIMEOUT, || {
            process::servers_of(&self.data_dir, &self.postgres_exe).is_empty()
        });
        Ok(())
    }
}

fn stop_child(mut child: Child, signal: Signal) -> Result<(), Error> {
    let pid = child.id();
    let exited = |child: &mut Child| !matches!(child.try_wait(), Ok(None));
    if exited(&mut child) {
        return Ok(());
    }
    process::signal(pid, signal)
        .map_err(|e| Error::io(format!("signalling postmaster {pid}"), e))?;
    if !poll_until(TIMEOUT, || exited(&mut child)) {
        let _ = child.kill();
        child
            .wait()
            .map_err(|e| Error::io(format!("reaping postmaster {pid}"), e))?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing stale {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// The end of what the server logged since `from` (a byte offset), for error messages.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
    let mut bytes = Vec::new();
    let _ = file
        .seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).trim_end().to_owned()
}
