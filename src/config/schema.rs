//! The config file's keys: one serde struct per section, strict (`deny_unknown_fields`),
//! with the defaults `configs/sluice.example.toml` documents.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Sluice keeps its state (generated files, later the control cluster).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `text` (default) or `json`: one JSON object per log line.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log each session start and each connection's end (duration, bytes) at `info`.
    #[serde(default = "yes")]
    pub log_connections: bool,
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub usage: UsageSection,
    /// Present: this process is a replica of a fleet (docs/fleet.md).
    pub fleet: Option<FleetSection>,
    #[serde(default)]
    pub provisioner: ProvisionerSection,
    #[serde(default)]
    pub defaults: DefaultsSection,
    /// Named bundles of pool settings and limits (`nano`, `lite`, …) that tenants pick
    /// with `plan = "…"`: defaults, then the plan, then the tenant's own keys.
    #[serde(default)]
    pub plans: std::collections::BTreeMap<String, PlanSection>,
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSection {
    pub pool: PoolSection,
    pub limits: LimitsSection,
    /// The backend's size (cores, memory, swap, disk) for drivers that size backends
    /// (`proxmox`); unset: the driver's default size.
    pub backend: Option<provision::PlanSize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn yes() -> bool {
    true
}

/// The admin listener: the API, `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: String,
    /// Default: `<data_dir>/admin.key`.
    pub bootstrap_key_file: Option<PathBuf>,
    /// Refused connections are summed into the audit log this often, per tenant and
    /// reason.
    pub refusal_audit_interval_s: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:8080".into(),
            bootstrap_key_file: None,
            refusal_audit_interval_s: 60,
        }
    }
}

/// `[fleet]`: this process is one replica of several sharing the control store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// The replica's name, kept across restarts (`sluice replicas` lists it).
    pub id: String,
    /// Where the other replicas reach this one (forwarded cancels): `IP:port`.
    pub listen: String,
    /// The address the others are told, when `listen` is a wildcard (`0.0.0.0:…`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The secret every replica of the fleet shares (at least 32 bytes; e.g.
    /// `head -c 32 /dev/urandom | base64`). Signs forwarded cancels and tags cancel keys.
    pub secret_file: PathBuf,
    /// How often the replica renews its row in the store and reads the others'.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A replica silent this long is dead to the others.
    #[serde(default = "default_expire_after_ms")]
    pub expire_after_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1000
}

fn default_expire_after_ms() -> u64 {
    5000
}

/// The control store: tenants, roles, jobs, API keys, secrets and the audit log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// An external PostgreSQL (`postgres://…` or libpq `key=value`). Unset: Sluice runs
    /// its own cluster under `<data_dir>/control`.
    pub database_url: Option<String>,
    /// A separate PostgreSQL for the audit log (same forms as `database_url`). Unset:
    /// the control store keeps it.
    pub audit_database_url: Option<String>,
    /// The AES-256 key that encrypts backend credentials in the store (64 hex digits,
    /// mode 0600; generated when missing). Default `<data_dir>/secrets.key`. Every
    /// Sluice sharing a store needs the same key.
    pub secrets_key_file: Option<PathBuf>,
}

/// How `POST /v1/tenants` makes backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionerSection {
    /// The driver of a tenant created without `backend.driver`: `local` (a cluster per
    /// tenant under `<data_dir>/backends`), `static` (an existing server named in the
    /// request) or `proxmox` (an LXC container per tenant on a Proxmox VE cluster,
    /// `[provisioner.proxmox]`), or `lxc` (an unprivileged LXC container per tenant on
    /// this host, `[provisioner.lxc]`). `none`: every request names its driver.
    pub driver: String,
    /// The Proxmox VE cluster; its presence enables the `proxmox` driver.
    pub proxmox: Option<ProxmoxSection>,
    /// Containers on this host; its presence (or `driver = "lxc"`) enables the `lxc`
    /// driver.
    pub lxc: Option<LxcSection>,
}

impl Default for ProvisionerSection {
    fn default() -> Self {
        ProvisionerSection {
            driver: "local".into(),
            proxmox: None,
            lxc: None,
        }
    }
}

/// `[provisioner.lxc]`: see docs/drivers.md. Every key has a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LxcSection {
    /// Where the template, the containers and their sockets live; default
    /// `<data_dir>/lxc`. Every directory above it must be traversable by others (o+x).
    pub path: Option<PathBuf>,
    /// The pre-shifted rootfs template containers are copied from; default
    /// `<path>/template`. Several Sluices on one machine may share one.
    pub template: Option<PathBuf>,
    /// The first of the 65536 host ids the containers map to (root's range in
    /// /etc/subuid and /etc/subgid); default 200000.
    pub subid_base: Option<u32>,
    /// The Debian mirror the template is built from; default: the host's apt mirror.
    pub mirror: Option<String>,
    /// The Debian suite; default `bookworm`.
    pub suite: Option<String>,
    /// What the containers' root filesystems are: `dir` (default; a full copy of the
    /// template each, no disk limit) or `btrfs` (`<path>/containers` a btrfs
    /// filesystem: each rootfs a snapshot of the template, its plan's `disk_gib` a
    /// qgroup limit).
    pub storage: Option<String>,
    /// With `btrfs`: the size in GiB of a sparse image file `<path>/btrfs.img` the
    /// driver makes and loop-mounts at `<path>/containers`. Default: none.
    pub btrfs_image_gib: Option<u64>,
    /// With `btrfs`: a block device (partition) holding a btrfs filesystem, mounted at
    /// `<path>/containers`. Default: none. Without this or `btrfs_image_gib`,
    /// `<path>/containers` must already be on btrfs.
    pub btrfs_device: Option<PathBuf>,
}

/// `[provisioner.proxmox]`: see docs/drivers.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxSection {
    /// `https://HOST:8006`.
    pub url: String,
    /// `USER@REALM!TOKENID`.
    pub token_id: String,
    /// File holding the token's secret (one line).
    pub token_secret_file: PathBuf,
    /// SHA-256 fingerprint of the API's certificate (hex, colons allowed) ...
    pub tls_fingerprint: Option<String>,
    /// ... or a PEM file of CA certificates (one of the two).
    pub tls_ca: Option<PathBuf>,
    /// Nodes containers may go to; empty: every online node.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The template volume, e.g. `local:vztmpl/sluice-pg15.tar.zst`.
    pub ostemplate: String,
    /// Storage for root disks.
    pub storage: String,
    /// Bridge of the containers' `net0` (default `vmbr0`).
    pub bridge: Option<String>,
    /// Addresses or CIDRs allowed to reach PostgreSQL in the containers (the Sluice
    /// hosts).
    pub sluice_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `false`: `/metrics` answers 404 and the latency histograms are not fed.
    pub enabled: bool,
    /// Tenants that get series of their own; the rest share `tenant="_other"`.
    pub max_tenant_series: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            max_tenant_series: 1000,
        }
    }
}

/// `[usage]`: metering what each tenant uses (docs/usage.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSection {
    /// How often this process writes its usage totals to the control store.
    pub flush_interval_s: u64,
    /// How often each tenant's database sizes are sampled; 0: never.
    pub disk_sample_interval_s: u64,
}

impl Default for UsageSection {
    fn default() -> Self {
        UsageSection {
            flush_interval_s: 10,
            disk_sample_interval_s: 60,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/sluice")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    pub listen: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub sni_suffix: Option<String>,
    pub require_tls: bool,
    pub tenant_from_options: bool,
    /// A user name `<role>.<tenant>` names the tenant when no SNI or options does
    /// (Supavisor's form).
    pub tenant_from_user: bool,
    /// The tenant of clients that name none; unset or `""`: they are refused (08004).
    pub default_tenant: Option<String>,
    pub login_timeout_ms: u64,
    pub shutdown_grace_s: u64,
    pub auth_cache_ttl_s: u64,
    /// Client connections in the whole process; 0 = no limit.
    pub max_client_connections: u64,
    /// Logins (TLS handshake to authenticated) in progress at once, whole process.
    pub max_concurrent_logins: u32,
    /// Bytes: the largest client message held whole (larger ones are streamed to the
    /// server, or refused with 54000 when they cannot be).
    pub max_client_message_buffer: u64,
    /// Bytes all clients together may make Sluice hold beyond their read buffers.
    pub memory_budget: u64,
    /// Bytes the clients of one tenant may make Sluice hold beyond their read buffers.
    pub memory_budget_per_tenant: u64,
    /// Connections between accept and a proved password (the pre-login phase), whole
    /// process; past it new connections get 53300 at accept. 0 = no limit.
    pub max_pending_logins: u64,
    /// The same per client address. 0 = no limit.
    pub max_pending_logins_per_ip: u64,
    /// Cancel requests forwarded per second for one client key; 0 = no limit.
    pub cancel_rate_per_key: u32,
    /// Cancel requests per second from one client address (IPv6: /64); 0 = no limit.
    pub cancel_rate_per_ip: u32,
    /// `off`, `v2` (every connection comes from `proxy_protocol_from` with a PROXY
    /// protocol header) or `optional` (those peers may send one).
    pub proxy_protocol: String,
    /// The load balancers (CIDRs) whose PROXY protocol headers are believed.
    pub proxy_protocol_from: Vec<String>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: vec!["127.0.0.1:6432".into()],
            tls_cert: None,
            tls_key: None,
            sni_suffix: None,
            require_tls: true,
            tenant_from_options: true,
            tenant_from_user: false,
            default_tenant: None,
            login_timeout_ms: 15_000,
            shutdown_grace_s: 30,
            auth_cache_ttl_s: 30,
            max_client_connections: 100_000,
            max_concurrent_logins: 1000,
            max_client_message_buffer: proxy::config::DEFAULT_MAX_CLIENT_MESSAGE_BUFFER as u64,
            memory_budget: proxy::config::DEFAULT_MEMORY_BUDGET as u64,
            memory_budget_per_tenant: proxy::config::DEFAULT_MEMORY_BUDGET_PER_TENANT as u64,
            max_pending_logins: 10_000,
            max_pending_logins_per_ip: 1000,
            cancel_rate_per_key: 5,
            cancel_rate_per_ip: 100,
            proxy_protocol: "off".into(),
            proxy_protocol_from: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSection {
    pub pool: PoolSection,
    pub limits: LimitsSection,
}

/// Limits; unset keys take the plan's, then `[defaults.limits]`'s. 0 = none.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub query_timeout_ms: Option<u64>,
    pub idle_in_transaction_timeout_ms: Option<u64>,
    pub client_idle_timeout_s: Option<u64>,
    pub max_client_connections: Option<u64>,
    pub max_server_connections: Option<u64>,
    pub connect_rate: Option<u32>,
    pub query_rate: Option<u32>,
    pub client_bytes_rate: Option<u64>,
    pub server_bytes_rate: Option<u64>,
    pub max_concurrent_logins: Option<u32>,
    pub failed_login_max: Option<u32>,
    pub failed_login_window_s: Option<u64>,
    pub failed_login_ban_s: Option<u64>,
    pub allow_cidrs: Option<Vec<String>>,
    pub suspend_after_idle_s: Option<u64>,
    pub disk_limit_mb: Option<u64>,
}

/// Pool settings; in `[defaults.pool]` unset keys take the built-in defaults, in
/// `[tenants.pool]` they take `[defaults.pool]`'s.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    pub mode: Option<String>,
    pub size: Option<usize>,
    pub max_wait_ms: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    pub lifetime_s: Option<u64>,
    pub max_prepared_statements: Option<usize>,
    pub min_idle: Option<usize>,
    pub reserve: Option<usize>,
    pub reserve_wait_ms: Option<u64>,
    /// Transaction mode: `pin` (default) or `refuse` a client whose SQL leaves state
    /// on its server connection.
    pub session_state: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    pub plan: Option<String>,
    pub backend: BackendSection,
    #[serde(default)]
    pub pool: PoolSection,
    #[serde(default)]
    pub limits: LimitsSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_backend_tls")]
    pub tls: String,
    pub tls_ca: Option<PathBuf>,
    pub auth_user: String,
    /// Clients may log in through Sluice as `auth_user` (default false: 28000).
    #[serde(default)]
    pub allow_auth_user_login: bool,
    pub auth_password_file: PathBuf,
    #[serde(default = "default_auth_database")]
    pub auth_database: String,
    pub auth_query: Option<String>,
}

fn default_port() -> u16 {
    5432
}

fn default_backend_tls() -> String {
    "prefer".into()
}

fn default_auth_database() -> String {
    "postgres".into()
}
