//! Turning a validated config into what the components take: the proxy settings and
//! the tenant catalog (reading secret files on the way).

use std::net::SocketAddr;
use std::time::Duration;

use admin_api::AdminConfig;
use proxy::config::{ProxyConfig, TlsFiles};
use router::{
    Backend, BackendAddr, BackendTls, IdentifyRules, Limits, PoolMode, PoolSettings, Tenant,
    TenantId,
};

use super::{Config, ConfigError, LimitsSection, PoolSection};

/// Everything `serve` needs from the config.
#[derive(Debug)]
pub struct Runtime {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub max_tenant_series: usize,
    pub tenants: Vec<Tenant>,
}

impl Config {
    pub fn runtime(&self) -> Result<Runtime, ConfigError> {
        let p = &self.proxy;
        let proxy = ProxyConfig {
            listen: p
                .listen
                .iter()
                .map(|a| a.parse::<SocketAddr>().expect("validated"))
                .collect(),
            tls: p
                .tls_cert
                .clone()
                .zip(p.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            identify: IdentifyRules {
                sni_suffix: p.sni_suffix.clone(),
                tenant_from_options: p.tenant_from_options,
            },
            require_tls: p.require_tls,
            login_timeout: Duration::from_millis(p.login_timeout_ms),
            shutdown_grace: Duration::from_secs(p.shutdown_grace_s),
            auth_cache_ttl: Duration::from_secs(p.auth_cache_ttl_s),
            log_connections: self.log_connections,
        };
        let admin = AdminConfig {
            listen: self.admin.listen.parse().expect("validated"),
            bootstrap_key_file: self
                .admin
                .bootstrap_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("admin.key")),
            metrics_enabled: self.metrics.enabled,
        };
        let defaults = pool_settings(&self.defaults.pool, &PoolSettings::default());
        let default_limits = limits(&self.defaults.limits, &Limits::default());
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (i, t) in self.tenants.iter().enumerate() {
            let b = &t.backend;
            let password =
                std::fs::read_to_string(&b.auth_password_file).map_err(|e| ConfigError {
                    key: format!("tenants[{i}].backend.auth_password_file"),
                    line: None,
                    message: format!("cannot read {}: {e}", b.auth_password_file.display()),
                })?;
            let pool = pool_settings(&t.pool, &defaults);
            if pool.min_idle > pool.size {
                return Err(ConfigError {
                    key: format!("tenants[{i}].pool.min_idle"),
                    line: None,
                    message: format!(
                        "min_idle ({}) exceeds the pool size ({}) this tenant gets",
                        pool.min_idle, pool.size
                    ),
                });
            }
            tenants.push(Tenant {
                id: TenantId::parse(&t.id).expect("validated"),
                backend: std::sync::Arc::new(Backend {
                    addr: BackendAddr::from_host(&b.host, b.port),
                    tls: match b.tls.as_str() {
                        "disable" => BackendTls::Disable,
                        "require" => BackendTls::Require,
                        "verify-full" => BackendTls::VerifyFull,
                        _ => BackendTls::Prefer,
                    },
                    tls_ca: b.tls_ca.clone(),
                    auth_user: b.auth_user.clone(),
                    auth_password: password.trim_end_matches(['\n', '\r']).to_owned(),
                    auth_database: b.auth_database.clone(),
                    auth_query: b
                        .auth_query
                        .clone()
                        .unwrap_or_else(|| router::tenant::DEFAULT_AUTH_QUERY.to_owned()),
                }),
                pool,
                limits: limits(&t.limits, &default_limits),
            });
        }
        Ok(Runtime {
            proxy,
            admin,
            max_tenant_series: self.metrics.max_tenant_series,
            tenants,
        })
    }
}

fn limits(section: &LimitsSection, base: &Limits) -> Limits {
    // 0 switches a limit off, as in Postgres.
    let ms = |v: Option<u64>, base: Option<Duration>| match v {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => base,
    };
    Limits {
        query_timeout: ms(section.query_timeout_ms, base.query_timeout),
        idle_in_transaction_timeout: ms(
            section.idle_in_transaction_timeout_ms,
            base.idle_in_transaction_timeout,
        ),
    }
}

fn pool_settings(section: &PoolSection, base: &PoolSettings) -> PoolSettings {
    PoolSettings {
        mode: match section.mode.as_deref() {
            Some("transaction") => PoolMode::Transaction,
            Some(_) => PoolMode::Session,
            None => base.mode,
        },
        max_prepared_statements: section
            .max_prepared_statements
            .unwrap_or(base.max_prepared_statements),
        min_idle: section.min_idle.unwrap_or(base.min_idle),
        reserve: section.reserve.unwrap_or(base.reserve),
        reserve_wait: section
            .reserve_wait_ms
            .map(Duration::from_millis)
            .unwrap_or(base.reserve_wait),
        size: section.size.unwrap_or(base.size),
        max_wait: section
            .max_wait_ms
            .map(Duration::from_millis)
            .unwrap_or(base.max_wait),
        idle_timeout: section
            .idle_timeout_s
            .map(Duration::from_secs)
            .unwrap_or(base.idle_timeout),
        lifetime: section
            .lifetime_s
            .map(Duration::from_secs)
            .unwrap_or(base.lifetime),
    }
}
