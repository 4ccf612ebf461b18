//! The config file: typed, strict (unknown keys are errors), validated as a whole, with
//! errors that name the key and its line. See `configs/sluice.example.toml`.
//!
//! [`schema`] is the file's keys, [`locate`] finds a key's line, [`validate`] checks a
//! parsed file as a whole, [`runtime`] turns it into what `serve` needs; this module
//! reads a file through them.

mod collect;
mod diff;
mod error;
mod locate;
mod runtime;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use diff::{changed_keys, is_live};
pub use error::{ConfigError, ConfigErrors};
pub use runtime::{FleetRuntime, Runtime};
pub use schema::*;

impl Config {
    /// Reads, parses and validates a config file; relative paths in it are relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::read(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the file's keys as written (what a reload
    /// compares, [`changed_keys`]).
    pub fn read(path: &Path) -> Result<(Config, toml::Table), ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_owned(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                key: "(file)".into(),
                line: None,
                message: e.to_string(),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Config::parse_checked(&text, base, true).map_err(fail)?;
        let table = text
            .parse::<toml::Table>()
            .expect("a file that parsed as a Config is a TOML table");
        Ok((config, table))
    }

    /// Parses and validates a config's text, without reading the files it names.
    /// Every problem is reported: syntax, types and unknown keys (read past, see
    /// [`collect`]), then the checks of the whole file on what remains.
    // Called by the tests and the config fuzz target, not by the binary.
    #[allow(dead_code)]
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse_checked(text, base, false)
    }

    /// [`Config::parse`], and with `files` also whether the files it names can be read
    /// (password files, TLS certificates and keys, CA files).
    fn parse_checked(text: &str, base: &Path, files: bool) -> Result<Config, Vec<ConfigError>> {
        let collect::Read {
            config,
            mut errors,
            removed,
        } = collect::deserialize(text);
        let Some(mut config) = config else {
            return Err(errors);
        };
        config.resolve_paths(base);
        let mut problems = validate::validate(&config);
        if files {
            problems.extend(validate::check_files(&config));
        }
        // A key taken out for its type error now holds its default: its checks say
        // nothing about the file.
        let taken_out = |key: &str| {
            removed.iter().any(|r| {
                key.strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        };
        errors.extend(
            problems
                .into_iter()
                .map(|p| p.locate(text))
                .filter(|e| !taken_out(&e.key)),
        );
        if errors.is_empty() {
            Ok(config)
        } else {
            // In file order; problems without a line last.
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(errors)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(p) = self.admin.bootstrap_key_file.as_mut() {
            fix(p)
        }
        if let Some(p) = self.proxy.tls_cert.as_mut() {
            fix(p)
        }
        if let Some(p) = self.proxy.tls_key.as_mut() {
            fix(p)
        }
        for t in &mut self.tenants {
            fix(&mut t.backend.auth_password_file);
            if let Some(p) = t.backend.tls_ca.as_mut() {
                fix(p)
            }
        }
    }
}
