//! The initdb'd template that every new cluster is copied from.
//!
//! initdb costs about half a second; copying its result costs a fifth of that, so it runs
//! once per (cache dir, major version). Several test processes may race to create the same
//! template: each runs initdb into its own temporary sibling and renames it into place; the
//! rename of a directory onto a non-empty one fails, so exactly one wins and the others use
//! the winner's copy.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{launcher, Error, Installation};

/// An initdb'd data directory used as the copy source for new clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template data directory (`<cache dir>/pg<major>`). Never started, never modified.
    pub dir: PathBuf,
}

impl Template {
    /// Returns the template for `install` in `cache_dir`, running initdb if it is missing.
    ///
    /// initdb runs with `-U postgres --auth=scram-sha-256 -E UTF8 --locale=C -N` and a random
    /// superuser password that is then discarded: clusters set their own credentials in
    /// single-user mode.
    pub fn ensure(install: &Installation, cache_dir: &Path) -> Result<Self, Error> {
        let dir = cache_dir.join(format!("pg{}", install.major));
        // PG_VERSION only appears in `dir` through the final rename, so it marks a complete template.
        if dir.join("PG_VERSION").is_file() {
            return Ok(Template { dir });
        }
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| Error::io(format!("creating {}", cache_dir.display()), e))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".pg{}-initdb-", install.major))
            .tempdir_in(cache_dir)
            .map_err(|e| {
                Error::io(
                    format!("creating a staging dir in {}", cache_dir.display()),
                    e,
                )
            })?;
        let fresh = staging.path().join("data");
        initdb(install, &fresh, staging.path())?;
        match std::fs::rename(&fresh, &dir) {
            Ok(()) => Ok(Template { dir }),
            // Lost the race: someone else's complete template is already in place.
            Err(_) if dir.join("PG_VERSION").is_file() => Ok(Template { dir }),
            Err(e) => Err(Error::io(
                format!("renaming {} to {}", fresh.display(), dir.display()),
                e,
            )),
        }
        // `staging` is removed on drop, together with the loser's initdb output.
    }
}

fn initdb(install: &Installation, data_dir: &Path, scratch: &Path) -> Result<(), Error> {
    let password_file = scratch.join("pwfile");
    write_random_password(&password_file)?;
    let mut command = launcher::server_command(&install.bin_dir, "initdb");
    command
        .arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
        .args(["--locale=C", "-N"])
        .arg(format!("--pwfile={}", password_file.display()));
    let result = launcher::run(command, b"");
    // The password is never needed again; do not leave it lying around even briefly.
    let _ = std::fs::remove_file(&password_file);
    result.map(drop)
}

fn write_random_password(path: &Path) -> Result<(), Error> {
    let bytes: [u8; 24] = rand::random();
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    writeln!(file, "{password}").map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Default cache dir for templates: `$SLUICE_PG_TEMPLATE_DIR`, else
/// `$XDG_CACHE_HOME/sluice/pg-templates`, else `~/.cache/sluice/pg-templates` (or
/// `/tmp/sluice-pg-templates` when `HOME` is unset).
pub fn default_template_cache() -> PathBuf {
    template_cache_from(|name| std::env::var_os(name))
}

fn template_cache_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("SLUICE_PG_TEMPLATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(cache) = non_empty("XDG_CACHE_HOME") {
        return PathBuf::from(cache).join("sluice/pg-templates");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".cache/sluice/pg-templates");
    }
    PathBuf::from("/tmp/sluice-pg-templates")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(vars: &[(&str, &str)]) -> PathBuf {
        template_cache_from(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn cache_dir_follows_the_documented_order() {
        let all = [
            ("SLUICE_PG_TEMPLATE_DIR", "/explicit"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/me"),
        ];
        assert_eq!(cache_with(&all), PathBuf::from("/explicit"));
        assert_eq!(
            cache_with(&all[1..]),
            PathBuf::from("/xdg/sluice/pg-templates")
        );
        assert_eq!(
            cache_with(&all[2..]),
            PathBuf::from("/home/me/.cache/sluice/pg-templates")
        );
        assert_eq!(
            cache_with(&[("XDG_CACHE_HOME", "")]),
            PathBuf::from("/tmp/sluice-pg-templates")
        );
    }
}
