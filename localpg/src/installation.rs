//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{launcher, Error};

/// Where the PostgreSQL server binaries are: `$SLUICE_PG_BIN` if set, else the highest
/// `/usr/lib/postgresql/<N>/bin` that has `postgres` and `initdb`, else the directory of
/// `postgres` on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// Directory holding `postgres` and `initdb`.
    pub bin_dir: PathBuf,
    /// Major version (e.g. 15); templates and clusters are only compatible within one major.
    pub major: u32,
}

/// Debian's layout: one directory per installed major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

impl Installation {
    /// Looks for an installation in the documented order.
    pub fn discover() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
            return Self::at(PathBuf::from(dir));
        }
        if let Some(dir) = highest_debian_bin() {
            return Self::at(dir);
        }
        if let Some(dir) = postgres_on_path() {
            return Self::at(dir);
        }
        Err(Error::NoInstallation {
            searched: format!("$SLUICE_PG_BIN (unset), {DEBIAN_ROOT}/*/bin, $PATH"),
        })
    }

    /// Uses the binaries in `bin_dir`, asking `postgres --version` for the major version.
    pub fn at(bin_dir: PathBuf) -> Result<Self, Error> {
        if !has_server_binaries(&bin_dir) {
            return Err(Error::NoInstallation {
                searched: format!("{} (no postgres and initdb there)", bin_dir.display()),
            });
        }
        let major = version_of(&bin_dir.join("postgres"))?;
        Ok(Installation { bin_dir, major })
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

fn highest_debian_bin() -> Option<PathBuf> {
    let entries = std::fs::read_dir(DEBIAN_ROOT).ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn postgres_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let binary = dir.join("postgres");
        if !binary.is_file() {
            return None;
        }
        if has_server_binaries(&dir) {
            return Some(dir);
        }
        // A lone symlink on PATH (e.g. /usr/local/bin/postgres): initdb sits next to the target.
        let real_dir = binary.canonicalize().ok()?.parent()?.to_path_buf();
        has_server_binaries(&real_dir).then_some(real_dir)
    })
}

/// `postgres --version` prints e.g. "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)".
/// It answers before the root check, so it runs without the user namespace.
fn version_of(postgres: &Path) -> Result<u32, Error> {
    let mut command = Command::new(postgres);
    command.arg("--version");
    let output = launcher::run(command, b"")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_major(&text).ok_or_else(|| Error::Command {
        command: format!("{} --version", postgres.display()),
        status: "unrecognised output".to_owned(),
        stderr: text.trim().to_owned(),
    })
}

fn parse_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn parses_release_and_development_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else"), None);
    }
}
