//! The config file: typed, strict (unknown keys are errors), validated as a whole, with
//! errors that name the key and its line. See `configs/sluice.example.toml`.
//!
//! [`schema`] is the file's keys, [`locate`] finds a key's line, [`validate`] checks a
//! parsed file as a whole, [`runtime`] turns it into what `serve` needs; this module
//! reads a file through them.

mod diff;
mod error;
mod locate;
mod runtime;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use diff::{changed_keys, is_live};
pub use error::{ConfigError, ConfigErrors};
pub use runtime::Runtime;
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
        let config = Config::parse(&text, base).map_err(fail)?;
        let table = text
            .parse::<toml::Table>()
            .expect("a file that parsed as a Config is a TOML table");
        Ok((config, table))
    }

    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| vec![locate::parse_error(text, &e)])?;
        config.resolve_paths(base);
        let errors = validate::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.into_iter().map(|e| e.locate(text)).collect())
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
