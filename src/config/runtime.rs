//! Turning a validated config into what the components take: the proxy settings and
//! the tenant catalog (reading secret files on the way).

use std::net::SocketAddr;
use std::time::Duration;

use admin_api::{AdminConfig, ControlConfig};
use proxy::config::{ProxyConfig, TlsFiles};
use router::{
    Backend, BackendAddr, BackendTls, BanPolicy, Cidr, IdentifyRules, Limits, PoolMode,
    PoolSettings, Tenant, TenantId,
};

use super::{Config, ConfigError, LimitsSection, PoolSection};

/// Everything `serve` needs from the config.
#[derive(Debug)]
pub struct Runtime {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub control: ControlConfig,
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
            max_client_connections: match p.max_client_connections {
                0 => None,
                n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            },
            max_concurrent_logins: p.max_concurrent_logins as usize,
        };
        let admin = AdminConfig {
            listen: self.admin.listen.parse().expect("validated"),
            bootstrap_key_file: self
                .admin
                .bootstrap_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("admin.key")),
            metrics_enabled: self.metrics.enabled,
            refusal_audit_interval: Duration::from_secs(self.admin.refusal_audit_interval_s),
        };
        let control = ControlConfig {
            database_url: self.control.database_url.clone(),
            data_dir: self.data_dir.clone(),
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
            // Defaults, then the tenant's plan, then its own keys.
            let plan = t.plan.as_ref().map(|name| &self.plans[name]);
            let (plan_pool, plan_limits) = match plan {
                Some(plan) => (
                    pool_settings(&plan.pool, &defaults),
                    limits(&plan.limits, &default_limits),
                ),
                None => (defaults.clone(), default_limits.clone()),
            };
            let pool = pool_settings(&t.pool, &plan_pool);
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
                limits: limits(&t.limits, &plan_limits),
                suspended: None,
            });
        }
        Ok(Runtime {
            proxy,
            admin,
            control,
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
    let s = |v: Option<u64>, base: Option<Duration>| ms(v.map(|s| s.saturating_mul(1000)), base);
    let count = |v: Option<u64>, base: Option<usize>| match v {
        Some(0) => None,
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => base,
    };
    let rate = |v: Option<u32>, base: Option<u32>| match v {
        Some(0) => None,
        Some(n) => Some(n),
        None => base,
    };
    let bans = &base.failed_logins;
    Limits {
        query_timeout: ms(section.query_timeout_ms, base.query_timeout),
        idle_in_transaction_timeout: ms(
            section.idle_in_transaction_timeout_ms,
            base.idle_in_transaction_timeout,
        ),
        client_idle_timeout: s(section.client_idle_timeout_s, base.client_idle_timeout),
        max_client_connections: count(section.max_client_connections, base.max_client_connections),
        max_server_connections: count(section.max_server_connections, base.max_server_connections),
        connect_rate: rate(section.connect_rate, base.connect_rate),
        query_rate: rate(section.query_rate, base.query_rate),
        max_concurrent_logins: section
            .max_concurrent_logins
            .map_or(base.max_concurrent_logins, |n| n as usize),
        failed_logins: BanPolicy {
            max_failures: section.failed_login_max.unwrap_or(bans.max_failures),
            window: section
                .failed_login_window_s
                .map_or(bans.window, Duration::from_secs),
            ban: section
                .failed_login_ban_s
                .map_or(bans.ban, Duration::from_secs),
        },
        allow_cidrs: match &section.allow_cidrs {
            Some(list) => list
                .iter()
                .map(|c| Cidr::parse(c).expect("validated"))
                .collect(),
            None => base.allow_cidrs.clone(),
        },
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
