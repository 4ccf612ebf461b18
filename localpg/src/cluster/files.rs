//! The configuration files localpg writes into a new data directory.
//!
//! Settings go into a separate `sluice-localpg.conf` included at the end of postgresql.conf,
//! so initdb's file stays recognisable and `ALTER SYSTEM` (postgresql.auto.conf, read last)
//! can still override them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::ClusterConfig;
use crate::Error;

/// Our settings file, relative to the data directory.
const SETTINGS_FILE: &str = "sluice-localpg.conf";
/// Server certificate and key, relative to the data directory.
const CERT_FILE: &str = "server.crt";
const KEY_FILE: &str = "server.key";

/// Every connection authenticates with SCRAM, over the socket as well: the socket directory
/// is private to root, but peer or trust auth would make any process that gets in a superuser.
const PG_HBA: &str = "\
# Written by localpg: SCRAM everywhere, loopback TCP only.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

/// Rejects setting names that could not be written as one postgresql.conf line.
pub(super) fn validate_settings(settings: &[(String, String)]) -> Result<(), Error> {
    for (name, _) in settings {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(Error::InvalidSetting {
                name: name.clone(),
                reason: "names may contain only ASCII letters, digits, '_' and '.'",
            });
        }
    }
    Ok(())
}

/// Writes `sluice-localpg.conf`, its include line, pg_hba.conf and the TLS files.
pub(super) fn write_server_config(
    data_dir: &Path,
    config: &ClusterConfig,
    socket_dir: &Path,
) -> Result<(), Error> {
    let mut lines: Vec<(&str, String)> = vec![
        (
            "port",
            config
                .port
                .unwrap_or(super::config::DEFAULT_SOCKET_PORT)
                .to_string(),
        ),
        (
            "listen_addresses",
            if config.port.is_some() {
                "127.0.0.1"
            } else {
                ""
            }
            .to_owned(),
        ),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("password_encryption", "scram-sha-256".to_owned()),
    ];
    if let Some(tls) = &config.tls {
        copy_private(&tls.cert_pem, &data_dir.join(CERT_FILE))?;
        copy_private(&tls.key_pem, &data_dir.join(KEY_FILE))?;
        lines.push(("ssl", "on".to_owned()));
        lines.push(("ssl_cert_file", CERT_FILE.to_owned()));
        lines.push(("ssl_key_file", KEY_FILE.to_owned()));
    }
    let mut text = String::from("# Written by localpg when the cluster was created.\n");
    let extra = config.settings.iter().map(|(k, v)| (k.as_str(), v.clone()));
    for (name, value) in lines.into_iter().chain(extra) {
        text.push_str(&format!("{name} = '{}'\n", quote(&value)));
    }
    write_file(&data_dir.join(SETTINGS_FILE), text.as_bytes())?;

    let main_conf = data_dir.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&main_conf)
        .map_err(|e| Error::io(format!("opening {}", main_conf.display()), e))?;
    writeln!(file, "\ninclude '{SETTINGS_FILE}'")
        .map_err(|e| Error::io(format!("appending to {}", main_conf.display()), e))?;

    write_file(&data_dir.join("pg_hba.conf"), PG_HBA.as_bytes())
}

/// Escapes a value for a single-quoted postgresql.conf string, where backslash escapes apply.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Copies `from` to `to` with mode 0600: postgres refuses a key file others can read.
fn copy_private(from: &Path, to: &Path) -> Result<(), Error> {
    let contents =
        std::fs::read(from).map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(&contents))
        .map_err(|e| Error::io(format!("writing {}", to.display()), e))
}

/// The major version recorded by initdb in `PG_VERSION`.
pub(super) fn read_major_version(data_dir: &Path) -> Result<u32, Error> {
    let path: PathBuf = data_dir.join("PG_VERSION");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::NotACluster {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.trim().parse().map_err(|_| Error::NotACluster {
        path,
        reason: format!("unexpected contents {:?}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_values_on_one_line() {
        assert_eq!(quote("it's"), "it''s");
        assert_eq!(quote("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn setting_names_are_checked() {
        let ok = vec![("max_connections".to_owned(), "50".to_owned())];
        assert!(validate_settings(&ok).is_ok());
        let bad = vec![("port = 1\nssl".to_owned(), "on".to_owned())];
        assert!(validate_settings(&bad).is_err());
    }
}
