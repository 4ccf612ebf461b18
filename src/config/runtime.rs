//! Turning a validated config into what the components take: the proxy settings and
//! the tenant catalog (reading secret files on the way).

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;
use std::path::PathBuf;

use admin_api::AdminConfig;
use control::catalog_sync::Base;
use control::store::{BackendRecord, TenantRecord};
use control::{ConfigTenant, ControlConfig, Plans};
use proxy::config::{FleetSecret, ProxyConfig, ProxyProtocol, ProxyProtocolMode, TlsFiles};
use router::{BanPolicy, Cidr, IdentifyRules, Limits, PoolMode, PoolSettings, SessionState};

use super::error::ConfigError;
use super::schema::{Config, LimitsSection, PoolSection};

/// Everything `serve` needs from the config.
#[derive(Debug)]
pub struct Runtime {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub control: ControlConfig,
    pub max_tenant_series: usize,
    /// `[defaults.*]` and `[plans.*]`, resolved.
    pub plans: Plans,
    /// `[[tenants]]`, upserted into the control store at start.
    pub tenants: Vec<ConfigTenant>,
    /// `[provisioner] driver`, or None for `none`.
    pub default_driver: Option<&'static str>,
    pub data_dir: PathBuf,
    pub secrets_key_file: PathBuf,
    /// `[provisioner.proxmox]`, with the token secret read and the plans' sizes.
    pub proxmox: Option<provision::ProxmoxConfig>,
    /// `[provisioner.lxc]` (or its defaults, with `driver = "lxc"`) and the plans' sizes.
    pub lxc: Option<provision::LxcConfig>,
    /// `[fleet]`, if this process is a replica of one.
    pub fleet: Option<FleetRuntime>,
}

/// `[fleet]`, with the secret read (it is also in `proxy.fleet_secret`).
#[derive(Debug, Clone)]
pub struct FleetRuntime {
    pub id: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub member: control::fleet::FleetConfig,
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
                tenant_from_user: p.tenant_from_user,
                default_tenant: p.default_tenant.clone().filter(|t| !t.is_empty()),
            },
            require_tls: p.require_tls,
            login_timeout: Duration::from_millis(p.login_timeout_ms),
            shutdown_grace: Duration::from_secs(p.shutdown_grace_s),
            auth_cache_ttl: Duration::from_secs(p.auth_cache_ttl_s),
            log_connections: self.log_connections,
            max_client_connections: cap(p.max_client_connections),
            max_concurrent_logins: p.max_concurrent_logins as usize,
            max_client_message_buffer: bytes(p.max_client_message_buffer),
            memory_budget: bytes(p.memory_budget),
            memory_budget_per_tenant: bytes(p.memory_budget_per_tenant),
            max_pending_logins: cap(p.max_pending_logins),
            max_pending_logins_per_ip: cap(p.max_pending_logins_per_ip),
            cancel_rate_per_key: (p.cancel_rate_per_key > 0).then_some(p.cancel_rate_per_key),
            cancel_rate_per_ip: (p.cancel_rate_per_ip > 0).then_some(p.cancel_rate_per_ip),
            proxy_protocol: ProxyProtocol {
                mode: match p.proxy_protocol.as_str() {
                    "v2" => ProxyProtocolMode::V2,
                    "optional" => ProxyProtocolMode::Optional,
                    _ => ProxyProtocolMode::Off,
                },
                from: p
                    .proxy_protocol_from
                    .iter()
                    .map(|c| Cidr::parse(c).expect("validated"))
                    .collect(),
            },
            fleet_secret: None,
        };
        let mut proxy = proxy;
        let fleet = match &self.fleet {
            Some(f) => {
                let secret = std::fs::read(&f.secret_file).map_err(|e| ConfigError {
                    key: "fleet.secret_file".into(),
                    line: None,
                    message: format!("cannot read {}: {e}", f.secret_file.display()),
                })?;
                proxy.fleet_secret = Some(FleetSecret(secret.trim_ascii().to_vec()));
                Some(FleetRuntime {
                    id: f.id.clone(),
                    listen: f.listen.parse().expect("validated"),
                    advertise: f
                        .advertise
                        .as_deref()
                        .map(|a| a.parse().expect("validated")),
                    member: control::fleet::FleetConfig {
                        heartbeat: Duration::from_millis(f.heartbeat_ms),
                        expire_after: Duration::from_millis(f.expire_after_ms),
                    },
                })
            }
            None => None,
        };
        let admin = AdminConfig {
            listen: self.admin.listen.parse().expect("validated"),
            bootstrap_key_file: self
                .admin
                .bootstrap_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("admin.key")),
            metrics_enabled: self.metrics.enabled,
            usage: control::usage::UsageConfig {
                flush_interval: Duration::from_secs(self.usage.flush_interval_s),
                disk_interval: (self.usage.disk_sample_interval_s > 0)
                    .then(|| Duration::from_secs(self.usage.disk_sample_interval_s)),
                replica: self
                    .fleet
                    .as_ref()
                    .map(|f| f.id.clone())
                    .unwrap_or_default(),
                spool_dir: Some(self.data_dir.join("usage-spool")),
            },
        };
        let control = ControlConfig {
            database_url: self.control.database_url.clone(),
            audit_database_url: self.control.audit_database_url.clone(),
            data_dir: self.data_dir.clone(),
            refusal_audit_interval: Duration::from_secs(self.admin.refusal_audit_interval_s),
            home: self.fleet.as_ref().map(|f| f.id.clone()),
        };
        let defaults = pool_settings(&self.defaults.pool, &PoolSettings::default());
        let default_limits = limits(&self.defaults.limits, &Limits::default());
        let plans = Plans {
            named: self
                .plans
                .iter()
                .map(|(name, plan)| {
                    // A plan with a backend size has that disk as its limit, unless its
                    // limits say otherwise (docs/limits.md, "Storage watermarks").
                    let mut plan_base = default_limits.clone();
                    if let Some(size) = plan.backend {
                        plan_base.disk_limit = Some(size.disk_gib.saturating_mul(1 << 30));
                    }
                    let base = Base {
                        pool: pool_settings(&plan.pool, &defaults),
                        limits: limits(&plan.limits, &plan_base),
                    };
                    (name.clone(), base)
                })
                .collect::<HashMap<_, _>>(),
            defaults: Base {
                pool: defaults,
                limits: default_limits,
            },
        };
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (i, t) in self.tenants.iter().enumerate() {
            let b = &t.backend;
            let password =
                std::fs::read_to_string(&b.auth_password_file).map_err(|e| ConfigError {
                    key: format!("tenants[{i}].backend.auth_password_file"),
                    line: None,
                    message: format!("cannot read {}: {e}", b.auth_password_file.display()),
                })?;
            let record = TenantRecord {
                id: t.id.clone(),
                plan: t.plan.clone(),
                status: "active".into(),
                suspended_reason: None,
                backend: BackendRecord {
                    driver: "config".into(),
                    host: Some(b.host.clone()),
                    port: Some(b.port),
                    tls: b.tls.clone(),
                    tls_ca: b.tls_ca.clone(),
                    admin_user: None,
                    admin_database: None,
                    auth_user: b.auth_user.clone(),
                    allow_auth_user_login: b.allow_auth_user_login,
                    auth_database: b.auth_database.clone(),
                    auth_query: b.auth_query.clone(),
                    params: serde_json::Value::Null,
                },
                pool: as_patch(&t.pool),
                limits: as_patch(&t.limits),
                version: 0,
            };
            // The same resolution the catalog makes, so a bad combination is reported
            // here with the tenant's key rather than at start.
            plans.resolve(&record).map_err(|e| ConfigError {
                key: format!("tenants[{i}]"),
                line: None,
                message: format!("{e:#}"),
            })?;
            tenants.push(ConfigTenant {
                record,
                auth_password: password.trim_end_matches(['\n', '\r']).to_owned(),
            });
        }
        Ok(Runtime {
            proxy,
            admin,
            control,
            max_tenant_series: self.metrics.max_tenant_series,
            plans,
            tenants,
            default_driver: match self.provisioner.driver.as_str() {
                "local" => Some("local"),
                "static" => Some("static"),
                "proxmox" => Some("proxmox"),
                "lxc" => Some("lxc"),
                _ => None,
            },
            proxmox: self.proxmox()?,
            lxc: self.lxc(),
            fleet,
            data_dir: self.data_dir.clone(),
            secrets_key_file: self
                .control
                .secrets_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("secrets.key")),
        })
    }
}

/// A process-wide count from the config: 0 switches it off.
fn cap(n: u64) -> Option<usize> {
    match n {
        0 => None,
        n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
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
    let bytes_rate = |v: Option<u64>, base: Option<u64>| match v {
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
        client_bytes_rate: bytes_rate(section.client_bytes_rate, base.client_bytes_rate),
        server_bytes_rate: bytes_rate(section.server_bytes_rate, base.server_bytes_rate),
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
        suspend_after_idle: s(section.suspend_after_idle_s, base.suspend_after_idle),
        disk_limit: match section.disk_limit_mb {
            Some(0) => None,
            Some(mb) => Some(mb.saturating_mul(1 << 20)),
            None => base.disk_limit,
        },
    }
}

fn pool_settings(section: &PoolSection, base: &PoolSettings) -> PoolSettings {
    PoolSettings {
        session_state: section
            .session_state
            .as_deref()
            .and_then(SessionState::parse)
            .unwrap_or(base.session_state),
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

/// A config section as the API's patch of the same keys (the shapes match by design).
fn as_patch<S: serde::Serialize, P: serde::de::DeserializeOwned>(section: &S) -> P {
    let value = serde_json::to_value(section).expect("config sections serialize");
    serde_json::from_value(value).expect("config sections and API patches have the same keys")
}

impl Config {
    /// The plans' backend sizes, for the container drivers.
    fn plan_sizes(&self) -> HashMap<String, provision::PlanSize> {
        self.plans
            .iter()
            .filter_map(|(name, plan)| Some((name.clone(), plan.backend?)))
            .collect()
    }

    pub fn lxc(&self) -> Option<provision::LxcConfig> {
        use provision::{lxc, LxcConfig};
        let section = match (&self.provisioner.lxc, self.provisioner.driver.as_str()) {
            (Some(section), _) => section.clone(),
            (None, "lxc") => Default::default(),
            (None, _) => return None,
        };
        let root = section.path.unwrap_or_else(|| self.data_dir.join("lxc"));
        Some(LxcConfig {
            template: section.template.unwrap_or_else(|| root.join("template")),
            root,
            subid_base: section.subid_base.unwrap_or(LxcConfig::DEFAULT_SUBID_BASE),
            mirror: section.mirror.unwrap_or_else(lxc::host_mirror),
            suite: section
                .suite
                .unwrap_or_else(|| LxcConfig::DEFAULT_SUITE.to_owned()),
            plans: self.plan_sizes(),
            default_plan: Default::default(),
            storage: match section.storage.as_deref() {
                Some("btrfs") => {
                    lxc::Storage::Btrfs(match (section.btrfs_image_gib, section.btrfs_device) {
                        (Some(gib), _) => lxc::BtrfsSource::Image { gib },
                        (None, Some(device)) => lxc::BtrfsSource::Device(device),
                        (None, None) => lxc::BtrfsSource::Existing,
                    })
                }
                _ => lxc::Storage::Dir,
            },
        })
    }

    fn proxmox(&self) -> Result<Option<provision::ProxmoxConfig>, ConfigError> {
        use provision::proxmox::PveTls;
        let Some(pve) = &self.provisioner.proxmox else {
            return Ok(None);
        };
        let secret = std::fs::read_to_string(&pve.token_secret_file).map_err(|e| ConfigError {
            key: "provisioner.proxmox.token_secret_file".into(),
            line: None,
            message: format!("cannot read {}: {e}", pve.token_secret_file.display()),
        })?;
        let tls = match (&pve.tls_fingerprint, &pve.tls_ca) {
            (Some(fingerprint), _) => PveTls::Fingerprint(fingerprint.clone()),
            (None, Some(ca)) => PveTls::Ca(ca.clone()),
            (None, None) => unreachable!("validated"),
        };
        Ok(Some(provision::ProxmoxConfig {
            url: pve.url.clone(),
            token_id: pve.token_id.clone(),
            token_secret: secret.trim().to_owned(),
            tls,
            nodes: pve.nodes.clone(),
            ostemplate: pve.ostemplate.clone(),
            storage: pve.storage.clone(),
            bridge: pve.bridge.clone(),
            sluice_hosts: pve.sluice_hosts.clone(),
            plans: self.plan_sizes(),
            default_plan: Default::default(),
        }))
    }
}

/// A size from the config file (validated to fit) as a `usize`.
fn bytes(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
