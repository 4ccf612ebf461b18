//! `tenants create`'s backend flags. Without them the server provisions the tenant
//! with its default driver (`local`); `--static-host` names an existing Postgres
//! (the `static` driver) that Sluice reaches with an admin role to create login roles.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Static backend (an existing Postgres)")]
pub struct StaticBackendArgs {
    /// The backend's host: a name, an IP, or a unix-socket directory (as in libpq).
    /// Selects the static driver.
    #[arg(long, value_name = "HOST", requires_all = ["admin_user", "admin_password_file"])]
    static_host: Option<String>,
    /// The backend's port.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 5432,
        requires = "static_host"
    )]
    port: u16,
    /// TLS from Sluice to the backend (the server's default, require, when left out).
    #[arg(long, value_name = "MODE", value_enum, requires = "static_host")]
    tls: Option<BackendTls>,
    /// CA certificate for verify-full: a path on the Sluice host, as in the config file.
    #[arg(long, value_name = "PATH", requires = "static_host")]
    tls_ca: Option<String>,
    /// Role Sluice uses to create and rotate login roles on the backend.
    #[arg(long, value_name = "USER", requires = "static_host")]
    admin_user: Option<String>,
    /// File holding that role's password (`-`: standard input); never on the command
    /// line, where every user of the machine can read it.
    #[arg(long, value_name = "FILE", requires = "static_host")]
    admin_password_file: Option<PathBuf>,
    /// Database the admin role connects to (the server's default when left out).
    #[arg(long, value_name = "DB", requires = "static_host")]
    admin_database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendTls {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl BackendTls {
    fn as_str(self) -> &'static str {
        match self {
            BackendTls::Disable => "disable",
            BackendTls::Prefer => "prefer",
            BackendTls::Require => "require",
            BackendTls::VerifyFull => "verify-full",
        }
    }
}

impl StaticBackendArgs {
    /// Whether the admin password comes from standard input (which a `--file -` body
    /// cannot share).
    pub fn reads_stdin(&self) -> bool {
        self.admin_password_file.as_deref() == Some(Path::new("-"))
    }

    /// The body's `backend`, or `None` for the server's default driver.
    pub fn to_json(&self) -> anyhow::Result<Option<Value>> {
        let Some(host) = &self.static_host else {
            return Ok(None);
        };
        let (Some(user), Some(password_file)) = (&self.admin_user, &self.admin_password_file)
        else {
            bail!("--static-host needs --admin-user and --admin-password-file");
        };
        let mut backend = json!({
            "driver": "static",
            "host": host,
            "port": self.port,
            "admin_user": user,
            "admin_password": read_password(password_file)?,
        });
        if let Some(tls) = self.tls {
            backend["tls"] = tls.as_str().into();
        }
        if let Some(ca) = &self.tls_ca {
            backend["tls_ca"] = ca.as_str().into();
        }
        if let Some(db) = &self.admin_database {
            backend["admin_database"] = db.as_str().into();
        }
        Ok(Some(backend))
    }
}

/// A password from a file or standard input, without the line end a file or `echo`
/// leaves.
pub fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .context("reading the password from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("the password in {} is empty", path.display());
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        backend: StaticBackendArgs,
    }

    fn parse(args: &[&str]) -> Result<StaticBackendArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.backend)
    }

    #[test]
    fn no_flags_means_the_default_driver() {
        assert_eq!(parse(&[]).unwrap().to_json().unwrap(), None);
    }

    #[test]
    fn a_static_backend_reads_its_password_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let pw = pw.to_str().unwrap();
        let args = parse(&[
            "--static-host",
            "10.0.0.5",
            "--tls",
            "verify-full",
            "--tls-ca",
            "/etc/ca.pem",
            "--admin-user",
            "postgres",
            "--admin-password-file",
            pw,
        ])
        .unwrap();
        assert_eq!(
            args.to_json().unwrap().unwrap(),
            json!({"driver": "static", "host": "10.0.0.5", "port": 5432, "tls": "verify-full",
                   "tls_ca": "/etc/ca.pem", "admin_user": "postgres", "admin_password": "s3cret"})
        );
        assert!(!args.reads_stdin());
    }

    #[test]
    fn half_a_static_backend_is_refused() {
        assert!(parse(&["--static-host", "db"]).is_err());
        assert!(parse(&["--admin-user", "postgres"]).is_err());
        assert!(parse(&["--port", "6543"]).is_err());
        assert!(parse(&[
            "--static-host",
            "db",
            "--admin-user",
            "u",
            "--admin-password-file",
            "-",
            "--tls",
            "maybe"
        ])
        .is_err());
        let stdin = parse(&[
            "--static-host",
            "db",
            "--admin-user",
            "u",
            "--admin-password-file",
            "-",
        ]);
        let stdin = stdin.unwrap();
        assert!(stdin.reads_stdin());
        assert_eq!(stdin.tls, None, "the server picks the default");
    }

    #[test]
    fn empty_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "\n").unwrap();
        assert!(read_password(&pw)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::write(&pw, "a b \r\n").unwrap();
        assert_eq!(read_password(&pw).unwrap(), "a b ");
    }
}
