//! Building and running PostgreSQL server commands.
//!
//! Postgres, initdb and pg_ctl refuse to run as root, and Sluice runs as root. Rather than
//! needing a system account and chowning data directories, a root caller runs the binaries
//! through `unshare --user --map-user=65534 --map-group=65534`: inside the new user namespace
//! the process is uid 65534, while the kernel still sees the outer root as the owner of every
//! file, so no chown is needed. `unshare` execs the program, so the child's pid is the
//! program's own (the postmaster's pid, for `postgres`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::Error;

/// Inner uid/gid the server runs as when started by root (`nobody` on every Debian).
const UNPRIVILEGED_ID: &str = "65534";

/// A command that runs `program` from `bin_dir` (an installation's), as an unprivileged
/// user when we are root. It does not inherit `NOTIFY_SOCKET`: a postmaster built with
/// systemd support would tell the service manager of the process that started it
/// (Sluice, under `Type=notify`) READY=1 and STOPPING=1 in its name.
pub(crate) fn server_command(bin_dir: &Path, program: &str) -> Command {
    let binary = bin_dir.join(program);
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("unshare");
        command
            .arg("--user")
            .arg(format!("--map-user={UNPRIVILEGED_ID}"))
            .arg(format!("--map-group={UNPRIVILEGED_ID}"))
            .arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command.env_remove("NOTIFY_SOCKET");
    command
}

/// Renders a command line for error messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` to completion with `stdin` as its input and returns its output, failing
/// with the command line and stderr when it exits unsuccessfully.
pub(crate) fn run(command: Command, stdin: &[u8]) -> Result<Output, Error> {
    let description = describe(&command);
    let output = output(command, stdin)?;
    if !output.status.success() {
        return Err(Error::Command {
            command: description,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// Runs `command` to completion with `stdin` as its input, whatever its exit status.
pub(crate) fn output(mut command: Command, stdin: &[u8]) -> Result<Output, Error> {
    let description = describe(&command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("spawning `{description}`"), e))?;
    // Feed stdin from a thread: a chatty child could otherwise fill its stdout pipe while we
    // are still blocked writing, and both sides would wait forever.
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take().expect("stdin was piped");
    let writer = std::thread::spawn(move || {
        // A child that exits early closes the pipe; its exit status reports the real problem.
        let _ = pipe.write_all(&input);
    });
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{description}`"), e))?;
    let _ = writer.join();
    Ok(output)
}
