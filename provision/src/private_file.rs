//! Files and directories only root (Sluice) may read: the bootstrap admin key, the
//! secrets key, the embedded store's and the local backends' directories, and the
//! `owner.lock` that keeps two Sluice processes off one data_dir.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use nix::fcntl::{Flock, FlockArg};

/// The trimmed text of `path`, or `generate()`'s, written to a new file of mode 0600
/// when `path` does not exist (its directory is created). A file that group or others
/// can read is refused: the secret in it may already have leaked.
pub fn read_or_create(path: &Path, generate: impl FnOnce() -> String) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            Ok(text.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = generate();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{text}")?;
            file.sync_all()?;
            Ok(text)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Creates `path` (and its parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Locks `dir/owner.lock` (flock, exclusive) for as long as the returned guard lives,
/// or says that another Sluice process holds `what` (e.g. "the embedded control store").
/// The lock file is opened close-on-exec, so a postmaster started meanwhile does not
/// inherit it: the lock ends with the process that took it, even on SIGKILL.
pub fn take_ownership(dir: &Path, what: &str) -> anyhow::Result<Flock<fs::File>> {
    let path = dir.join("owner.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
            "{what} under {} is in use by another Sluice process (it holds {}): two Sluice \
             processes cannot share a data_dir",
            dir.display(),
            path.display()
        ),
        Err((_, e)) => Err(anyhow!("locking {}: {e}", path.display())),
    }
}
