//! Checks that need the whole config: values in range, keys that go together, ids.

use std::collections::HashSet;
use std::net::SocketAddr;

use router::TenantId;

use super::error::ConfigError;
use super::locate::{line_of, path_string, Seg};
use super::schema::{Config, FleetSection, LimitsSection, LxcSection, PoolSection};
use router::Cidr;

/// A problem at a key path, before it is located in the text.
#[derive(Debug)]
pub struct Problem {
    path: Vec<Seg>,
    message: String,
}

impl Problem {
    fn new(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
        }
    }

    pub fn locate(self, text: &str) -> ConfigError {
        ConfigError {
            key: path_string(&self.path),
            line: line_of(text, &self.path),
            message: self.message,
        }
    }
}

use Seg::{Index, Key, Owned as Name};

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let proxy = &config.proxy;

    if proxy.listen.is_empty() {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("listen")],
            "needs at least one address",
        ));
    }
    for (i, addr) in proxy.listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            problems.push(Problem::new(
                vec![Key("proxy"), Key("listen"), Index(i)],
                format!("{addr:?} is not an IP:port address"),
            ));
        }
    }
    match (&proxy.tls_cert, &proxy.tls_key) {
        (Some(_), None) => problems.push(Problem::new(
            vec![Key("proxy"), Key("tls_key")],
            "tls_cert is set, so tls_key is required",
        )),
        (None, Some(_)) => problems.push(Problem::new(
            vec![Key("proxy"), Key("tls_cert")],
            "tls_key is set, so tls_cert is required",
        )),
        (None, None) if proxy.require_tls => problems.push(Problem::new(
            vec![Key("proxy"), Key("require_tls")],
            "require_tls = true needs tls_cert and tls_key",
        )),
        _ => {}
    }
    if let Some(suffix) = &proxy.sni_suffix {
        let valid = !suffix.is_empty()
            && suffix
                .split('.')
                .all(|label| TenantId::parse(label).is_ok());
        if !valid {
            problems.push(Problem::new(
                vec![Key("proxy"), Key("sni_suffix")],
                format!("{suffix:?} is not a lowercase DNS name (no leading dot)"),
            ));
        }
    }
    // `""` is unset, as the design writes it.
    if let Some(tenant) = proxy.default_tenant.as_deref().filter(|t| !t.is_empty()) {
        if let Err(e) = TenantId::parse(tenant) {
            problems.push(Problem::new(
                vec![Key("proxy"), Key("default_tenant")],
                e.to_string(),
            ));
        }
    }
    if proxy.sni_suffix.is_none()
        && !proxy.tenant_from_options
        && !proxy.tenant_from_user
        && proxy.default_tenant.as_deref().unwrap_or("").is_empty()
    {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("tenant_from_options")],
            "with no sni_suffix, default_tenant or tenant_from_user and tenant_from_options = false no client can name a tenant",
        ));
    }
    check_proxy_protocol(
        &proxy.proxy_protocol,
        &proxy.proxy_protocol_from,
        &mut problems,
    );
    if config.admin.listen.parse::<SocketAddr>().is_err() {
        problems.push(Problem::new(
            vec![Key("admin"), Key("listen")],
            format!("{:?} is not an IP:port address", config.admin.listen),
        ));
    }
    for (key, url) in [
        ("database_url", &config.control.database_url),
        ("audit_database_url", &config.control.audit_database_url),
    ] {
        // The message never repeats the URL: it may carry a password.
        if let Some(Err(e)) = url.as_deref().map(control::open::parse_database_url) {
            problems.push(Problem::new(
                vec![Key("control"), Key(key)],
                format!("not a PostgreSQL connection string: {e}"),
            ));
        }
    }
    if let Some(fleet) = &config.fleet {
        check_fleet(fleet, config.control.database_url.is_some(), &mut problems);
    }
    match config.provisioner.driver.as_str() {
        "local" | "static" | "none" | "lxc" => {}
        "proxmox" if config.provisioner.proxmox.is_some() => {}
        "proxmox" => problems.push(Problem::new(
            vec![Key("provisioner"), Key("driver")],
            "\"proxmox\" needs a [provisioner.proxmox] section",
        )),
        other => problems.push(Problem::new(
            vec![Key("provisioner"), Key("driver")],
            format!("{other:?} is not one of local, static, lxc, proxmox, none"),
        )),
    }
    if let Some(lxc) = &config.provisioner.lxc {
        check_lxc(lxc, &mut problems);
    }
    if let Some(pve) = &config.provisioner.proxmox {
        if pve.tls_fingerprint.is_some() == pve.tls_ca.is_some() {
            problems.push(Problem::new(
                vec![Key("provisioner"), Key("proxmox")],
                "set exactly one of tls_fingerprint and tls_ca",
            ));
        }
    }
    if config.usage.flush_interval_s == 0 {
        problems.push(Problem::new(
            vec![Key("usage"), Key("flush_interval_s")],
            "must be at least 1",
        ));
    }
    if config.admin.refusal_audit_interval_s == 0 {
        problems.push(Problem::new(
            vec![Key("admin"), Key("refusal_audit_interval_s")],
            "must be at least 1",
        ));
    }
    // A message buffer must hold at least a read buffer's worth (16 KiB), and no more
    // than Postgres' own message limit (1 GiB).
    if !(16 * 1024..=1 << 30).contains(&proxy.max_client_message_buffer) {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("max_client_message_buffer")],
            "must be between 16384 and 1073741824 bytes",
        ));
    }
    if proxy.memory_budget_per_tenant < proxy.max_client_message_buffer {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("memory_budget_per_tenant")],
            "must be at least max_client_message_buffer (a tenant must fit one message)",
        ));
    }
    if proxy.memory_budget < proxy.memory_budget_per_tenant {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("memory_budget")],
            "must be at least memory_budget_per_tenant",
        ));
    }
    if proxy.cancel_rate_per_ip > 0 && proxy.cancel_rate_per_ip < proxy.cancel_rate_per_key {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("cancel_rate_per_ip")],
            format!(
                "must be 0 (no limit) or at least cancel_rate_per_key ({}): one client's \
                 cancels would hit the address's limit first",
                proxy.cancel_rate_per_key
            ),
        ));
    }
    if proxy.login_timeout_ms == 0 {
        problems.push(Problem::new(
            vec![Key("proxy"), Key("login_timeout_ms")],
            "must be > 0",
        ));
    }

    check_pool(
        &config.defaults.pool,
        vec![Key("defaults"), Key("pool")],
        &mut problems,
    );
    check_limits(
        &config.defaults.limits,
        vec![Key("defaults"), Key("limits")],
        &mut problems,
    );
    for (name, plan) in &config.plans {
        if TenantId::parse(name).is_err() {
            problems.push(Problem::new(
                vec![Key("plans")],
                format!("plan name {name:?} must be lowercase letters, digits and '-'"),
            ));
        }
        check_pool(
            &plan.pool,
            vec![Key("plans"), Name(name.clone()), Key("pool")],
            &mut problems,
        );
        check_limits(
            &plan.limits,
            vec![Key("plans"), Name(name.clone()), Key("limits")],
            &mut problems,
        );
    }

    let mut seen = HashSet::new();
    for (i, tenant) in config.tenants.iter().enumerate() {
        let at = |rest: &[Seg]| {
            let mut path = vec![Key("tenants"), Index(i)];
            path.extend_from_slice(rest);
            path
        };
        if let Err(e) = TenantId::parse(&tenant.id) {
            problems.push(Problem::new(at(&[Key("id")]), e.to_string()));
        }
        if !seen.insert(tenant.id.as_str()) {
            problems.push(Problem::new(
                at(&[Key("id")]),
                format!("tenant {:?} is declared twice", tenant.id),
            ));
        }
        let backend = &tenant.backend;
        if backend.host.is_empty() {
            problems.push(Problem::new(
                at(&[Key("backend"), Key("host")]),
                "must not be empty",
            ));
        }
        match backend.tls.as_str() {
            "disable" | "prefer" | "require" => {}
            "verify-full" if backend.tls_ca.is_none() => problems.push(Problem::new(
                at(&[Key("backend"), Key("tls_ca")]),
                "tls = \"verify-full\" needs tls_ca",
            )),
            "verify-full" => {}
            other => problems.push(Problem::new(
                at(&[Key("backend"), Key("tls")]),
                format!("{other:?} is not one of disable, prefer, require, verify-full"),
            )),
        }
        if backend.auth_user.is_empty() {
            problems.push(Problem::new(
                at(&[Key("backend"), Key("auth_user")]),
                "must not be empty",
            ));
        }
        check_pool(&tenant.pool, at(&[Key("pool")]), &mut problems);
        check_limits(&tenant.limits, at(&[Key("limits")]), &mut problems);
        if let Some(plan) = &tenant.plan {
            if !config.plans.contains_key(plan) {
                let known: Vec<&str> = config.plans.keys().map(String::as_str).collect();
                problems.push(Problem::new(
                    at(&[Key("plan")]),
                    format!("no plan {plan:?} (plans: {known:?})"),
                ));
            }
        }
    }
    problems
}

fn check_proxy_protocol(mode: &str, from: &[String], problems: &mut Vec<Problem>) {
    match mode {
        "off" | "optional" => {}
        "v2" if from.is_empty() => problems.push(Problem::new(
            vec![Key("proxy"), Key("proxy_protocol_from")],
            "proxy_protocol = \"v2\" needs the load balancers' addresses (CIDRs) here",
        )),
        "v2" => {}
        other => problems.push(Problem::new(
            vec![Key("proxy"), Key("proxy_protocol")],
            format!("{other:?} is not one of off, v2, optional"),
        )),
    }
    for (i, cidr) in from.iter().enumerate() {
        if let Err(e) = Cidr::parse(cidr) {
            problems.push(Problem::new(
                vec![Key("proxy"), Key("proxy_protocol_from"), Index(i)],
                e.to_string(),
            ));
        }
    }
}

/// `[provisioner.lxc]`: a known storage, and the btrfs keys only with btrfs, one source.
fn check_lxc(lxc: &LxcSection, problems: &mut Vec<Problem>) {
    let key = |name| vec![Key("provisioner"), Key("lxc"), Key(name)];
    let btrfs = match lxc.storage.as_deref() {
        None | Some("dir") => false,
        Some("btrfs") => true,
        Some(other) => {
            problems.push(Problem::new(
                key("storage"),
                format!("{other:?} is not one of dir, btrfs"),
            ));
            return;
        }
    };
    for (name, set) in [
        ("btrfs_image_gib", lxc.btrfs_image_gib.is_some()),
        ("btrfs_device", lxc.btrfs_device.is_some()),
    ] {
        if set && !btrfs {
            problems.push(Problem::new(key(name), "needs storage = \"btrfs\""));
        }
    }
    if lxc.btrfs_image_gib.is_some() && lxc.btrfs_device.is_some() {
        problems.push(Problem::new(
            key("btrfs_device"),
            "set at most one of btrfs_image_gib and btrfs_device",
        ));
    }
    if lxc.btrfs_image_gib == Some(0) {
        problems.push(Problem::new(key("btrfs_image_gib"), "must be at least 1"));
    }
}

fn check_fleet(fleet: &FleetSection, external_store: bool, problems: &mut Vec<Problem>) {
    let key = |key| vec![Key("fleet"), Key(key)];
    if !external_store {
        problems.push(Problem::new(
            key("id"),
            "a fleet shares one control store: set [control] database_url",
        ));
    }
    let id_ok = !fleet.id.is_empty()
        && fleet.id.len() <= 63
        && fleet
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !id_ok {
        problems.push(Problem::new(
            key("id"),
            "1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    if fleet.listen.parse::<SocketAddr>().is_err() {
        problems.push(Problem::new(
            key("listen"),
            format!("{:?} is not an IP:port address", fleet.listen),
        ));
    }
    if let Some(advertise) = &fleet.advertise {
        if advertise.parse::<SocketAddr>().is_err() {
            problems.push(Problem::new(
                key("advertise"),
                format!("{advertise:?} is not an IP:port address"),
            ));
        }
    }
    if fleet.heartbeat_ms < 100 {
        problems.push(Problem::new(key("heartbeat_ms"), "at least 100"));
    }
    if fleet.expire_after_ms < 2 * fleet.heartbeat_ms {
        problems.push(Problem::new(
            key("expire_after_ms"),
            "at least twice heartbeat_ms, or a replica that misses one heartbeat is dropped",
        ));
    }
}

/// The files the config names that Sluice reads: each must be readable now (what
/// `config check` and a reload look at before anything starts or changes).
pub fn check_files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut check = |path: Vec<Seg>, file: &std::path::Path| {
        if let Err(e) = std::fs::File::open(file) {
            problems.push(Problem::new(
                path,
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    };
    if let Some(file) = &config.proxy.tls_cert {
        check(vec![Key("proxy"), Key("tls_cert")], file);
    }
    if let Some(file) = &config.proxy.tls_key {
        check(vec![Key("proxy"), Key("tls_key")], file);
    }
    for (i, tenant) in config.tenants.iter().enumerate() {
        let backend = |key| vec![Key("tenants"), Index(i), Key("backend"), Key(key)];
        check(
            backend("auth_password_file"),
            &tenant.backend.auth_password_file,
        );
        if let Some(file) = &tenant.backend.tls_ca {
            check(backend("tls_ca"), file);
        }
    }
    if let Some(pve) = &config.provisioner.proxmox {
        let key = |key| vec![Key("provisioner"), Key("proxmox"), Key(key)];
        check(key("token_secret_file"), &pve.token_secret_file);
        if let Some(file) = &pve.tls_ca {
            check(key("tls_ca"), file);
        }
    }
    if let Some(fleet) = &config.fleet {
        let path = vec![Key("fleet"), Key("secret_file")];
        match std::fs::read(&fleet.secret_file) {
            Ok(secret) if secret.trim_ascii().len() < 32 => problems.push(Problem::new(
                path,
                format!("{} holds fewer than 32 bytes", fleet.secret_file.display()),
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::new(
                path,
                format!("cannot read {}: {e}", fleet.secret_file.display()),
            )),
        }
    }
    problems
}

fn check_limits(limits: &LimitsSection, path: Vec<Seg>, problems: &mut Vec<Problem>) {
    let at = |key: &'static str| {
        let mut p = path.clone();
        p.push(Key(key));
        p
    };
    for (i, cidr) in limits.allow_cidrs.iter().flatten().enumerate() {
        if let Err(e) = Cidr::parse(cidr) {
            let mut p = at("allow_cidrs");
            p.push(Index(i));
            problems.push(Problem::new(p, e.to_string()));
        }
    }
    if limits.max_concurrent_logins == Some(0) {
        problems.push(Problem::new(
            at("max_concurrent_logins"),
            "must be at least 1",
        ));
    }
    if limits
        .disk_limit_mb
        .is_some_and(|v| v > control::settings::MAX_DISK_LIMIT_MB)
    {
        problems.push(Problem::new(
            at("disk_limit_mb"),
            format!("must be at most {}", control::settings::MAX_DISK_LIMIT_MB),
        ));
    }
    const TEN_YEARS_S: u64 = 10 * 366 * 24 * 3600;
    for (key, value) in [
        ("client_idle_timeout_s", limits.client_idle_timeout_s),
        ("suspend_after_idle_s", limits.suspend_after_idle_s),
        ("failed_login_window_s", limits.failed_login_window_s),
        ("failed_login_ban_s", limits.failed_login_ban_s),
    ] {
        if value.is_some_and(|v| v > TEN_YEARS_S) {
            problems.push(Problem::new(at(key), "must be at most ten years"));
        }
    }
}

fn check_pool(pool: &PoolSection, path: Vec<Seg>, problems: &mut Vec<Problem>) {
    let at = |key: &'static str| {
        let mut p = path.clone();
        p.push(Key(key));
        p
    };
    match pool.mode.as_deref() {
        None | Some("session") | Some("transaction") => {}
        Some(other) => problems.push(Problem::new(
            at("mode"),
            format!("{other:?} is not one of session, transaction"),
        )),
    }
    if let Some(word) = pool.session_state.as_deref() {
        if router::SessionState::parse(word).is_none() {
            problems.push(Problem::new(
                at("session_state"),
                format!("{word:?} is not one of pin, refuse"),
            ));
        }
    }
    if let Some(size) = pool.size {
        if !(1..=10_000).contains(&size) {
            problems.push(Problem::new(at("size"), "must be between 1 and 10000"));
        }
    }
    // Up to ten years: durations past that overflow clock arithmetic.
    const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;
    for (key, value) in [
        ("lifetime_s", pool.lifetime_s),
        ("idle_timeout_s", pool.idle_timeout_s),
    ] {
        if value.is_some_and(|v| !(1..=TEN_YEARS).contains(&v)) {
            problems.push(Problem::new(
                at(key),
                format!("must be between 1 and {TEN_YEARS}"),
            ));
        }
    }
    for (key, value) in [
        ("max_wait_ms", pool.max_wait_ms),
        ("reserve_wait_ms", pool.reserve_wait_ms),
    ] {
        if value.is_some_and(|v| v > TEN_YEARS * 1000) {
            problems.push(Problem::new(at(key), "must be at most ten years"));
        }
    }
    if let (Some(min), Some(size)) = (pool.min_idle, pool.size) {
        if min > size {
            problems.push(Problem::new(at("min_idle"), "must not exceed size"));
        }
    }
    if pool.reserve.is_some_and(|r| r > 10_000) {
        problems.push(Problem::new(at("reserve"), "must be at most 10000"));
    }
    if pool.max_prepared_statements == Some(0) {
        problems.push(Problem::new(
            at("max_prepared_statements"),
            "must be at least 1",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const GOOD: &str = r#"
data_dir = "/tmp/sluice"
[proxy]
listen = ["127.0.0.1:0"]
tls_cert = "/etc/c.pem"
tls_key = "/etc/k.pem"
sni_suffix = "db.example.test"

[[tenants]]
id = "acme"
[tenants.backend]
host = "/run/acme"
auth_user = "sluice_auth"
auth_password_file = "acme.pw"
"#;

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../configs/sluice.example.toml");
        let config = Config::parse(text, Path::new("/etc/sluice")).unwrap_or_else(|e| {
            panic!("configs/sluice.example.toml: {e:?}");
        });
        assert_eq!(config.plans.len(), 4);
        assert_eq!(config.tenants[0].plan.as_deref(), Some("pro"));
    }

    #[test]
    fn lxc_storage_keys_are_checked() {
        let section = |keys: &str| format!("{GOOD}[provisioner.lxc]\n{keys}\n");
        for (keys, expect) in [
            (
                "storage = \"zfs\"",
                "provisioner.lxc.storage: \"zfs\" is not one of dir, btrfs",
            ),
            (
                "btrfs_image_gib = 8",
                "provisioner.lxc.btrfs_image_gib: needs storage = \"btrfs\"",
            ),
            (
                "storage = \"btrfs\"\nbtrfs_image_gib = 8\nbtrfs_device = \"/dev/vdb1\"",
                "provisioner.lxc.btrfs_device: set at most one of",
            ),
            (
                "storage = \"btrfs\"\nbtrfs_image_gib = 0",
                "provisioner.lxc.btrfs_image_gib: must be at least 1",
            ),
        ] {
            let errs = Config::parse(&section(keys), Path::new("/")).unwrap_err();
            let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            assert!(
                shown.iter().any(|s| s.contains(expect)),
                "{keys}: {shown:?}"
            );
        }
        let config = Config::parse(
            &section("storage = \"btrfs\"\nbtrfs_image_gib = 8"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            config.lxc().unwrap().storage,
            provision::lxc::Storage::Btrfs(provision::lxc::BtrfsSource::Image { gib: 8 })
        );
        let config = Config::parse(&section(""), Path::new("/")).unwrap();
        assert_eq!(config.lxc().unwrap().storage, provision::lxc::Storage::Dir);
    }

    #[test]
    fn tenants_name_existing_plans_and_valid_cidrs() {
        let text = GOOD.replace("id = \"acme\"", "id = \"acme\"\nplan = \"gold\"")
            + "[tenants.limits]\nallow_cidrs = [\"10.0.0.1/8\"]\n";
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            shown
                .iter()
                .any(|s| s.contains("tenants[0].plan: no plan \"gold\"")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("tenants[0].limits.allow_cidrs[0]") && s.contains("10.0.0.0/8")),
            "{shown:?}"
        );
    }

    #[test]
    fn routing_fallbacks_parse_and_are_checked() {
        let text = GOOD.replace(
            "sni_suffix = ",
            "default_tenant = \"acme\"\ntenant_from_user = true\nsni_suffix = ",
        );
        let c = Config::parse(&text, Path::new("/")).unwrap();
        assert_eq!(c.proxy.default_tenant.as_deref(), Some("acme"));
        assert!(c.proxy.tenant_from_user);
        let c = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(
            (c.proxy.default_tenant, c.proxy.tenant_from_user),
            (None, false)
        );

        let text = GOOD.replace("sni_suffix = ", "default_tenant = \"Acme\"\nsni_suffix = ");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert!(
            errs.iter().any(|e| e.key == "proxy.default_tenant"),
            "{errs:?}"
        );
        // A default tenant alone is a way to name one.
        let text = GOOD.replace(
            "sni_suffix = \"db.example.test\"",
            "tenant_from_options = false",
        );
        assert!(Config::parse(&text, Path::new("/")).is_err());
        let text = text.replace(
            "tenant_from_options",
            "default_tenant = \"acme\"\ntenant_from_options",
        );
        Config::parse(&text, Path::new("/")).unwrap();
        // The design's spelling of "unset".
        let empty = text.replace("default_tenant = \"acme\"", "default_tenant = \"\"");
        assert!(Config::parse(&empty, Path::new("/")).is_err());
        let text = GOOD.replace("sni_suffix = ", "default_tenant = \"\"\nsni_suffix = ");
        Config::parse(&text, Path::new("/")).unwrap();
    }

    #[test]
    fn a_good_config_parses() {
        let c = Config::parse(GOOD, Path::new("/etc/sluice")).unwrap();
        assert_eq!(c.tenants[0].backend.port, 5432);
        assert_eq!(
            c.tenants[0].backend.auth_password_file,
            Path::new("/etc/sluice/acme.pw")
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_lines() {
        let text = GOOD.replace("sni_suffix", "sni_sufix");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(7), "{errs:?}");
        assert!(
            errs[0].message.contains("unknown field `sni_sufix`"),
            "{errs:?}"
        );
        // Named by its path, not as a syntax error.
        assert_eq!(errs[0].key, "proxy.sni_sufix", "{errs:?}");
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let text = GOOD
            .replace(
                "host = \"/run/acme\"",
                "host = \"/run/acme\"\ntls = \"sometimes\"",
            )
            .replace("id = \"acme\"", "id = \"Acme\"");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("line 10: tenants[0].id: invalid tenant id")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("line 13: tenants[0].backend.tls:")),
            "{shown:?}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let text = GOOD.replace("listen = [\"127.0.0.1:0\"]", "listen = \"nonsense\"");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "proxy.listen", "{errs:?}");
        assert_eq!(errs[0].line, Some(4));
        let text = GOOD.replace("host = \"/run/acme\"", "host = \"/run/acme\"\nport = \"x\"");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "tenants[0].backend.port", "{errs:?}");
    }

    #[test]
    fn cancel_rates_default_and_go_together() {
        let c = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(
            (c.proxy.cancel_rate_per_key, c.proxy.cancel_rate_per_ip),
            (5, 100)
        );
        let rates = |text: &str| {
            let p = Config::parse(text, Path::new("/")).unwrap().proxy;
            (p.cancel_rate_per_key, p.cancel_rate_per_ip)
        };
        let text = GOOD.replace(
            "sni_suffix = ",
            "cancel_rate_per_key = 0\ncancel_rate_per_ip = 0\nsni_suffix = ",
        );
        assert_eq!(rates(&text), (0, 0), "0 switches both off");
        let text = GOOD.replace(
            "sni_suffix = ",
            "cancel_rate_per_key = 20\ncancel_rate_per_ip = 10\nsni_suffix = ",
        );
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "proxy.cancel_rate_per_ip", "{errs:?}");
        assert!(errs[0]
            .message
            .contains("at least cancel_rate_per_key (20)"));
        let text = GOOD.replace(
            "sni_suffix = ",
            "cancel_rate_per_key = 0\ncancel_rate_per_ip = 10\nsni_suffix = ",
        );
        assert_eq!(rates(&text), (0, 10), "a per-address limit alone is fine");
    }

    #[test]
    fn proxy_protocol_keys() {
        let c = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(c.proxy.proxy_protocol, "off");
        assert!(c.proxy.proxy_protocol_from.is_empty());
        let with = |lines: &str| GOOD.replace("sni_suffix = ", &format!("{lines}\nsni_suffix = "));
        let text =
            with("proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1/128\"]");
        // The tenant's auth_password_file is read relative to the config's directory.
        let dir = std::env::temp_dir().join(format!("sluice-pp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("acme.pw"), "x").unwrap();
        let runtime = Config::parse(&text, &dir).unwrap().runtime().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            runtime.proxy.proxy_protocol.mode,
            proxy::config::ProxyProtocolMode::V2
        );
        assert_eq!(runtime.proxy.proxy_protocol.from.len(), 2);
        let errs = Config::parse(&with("proxy_protocol = \"v2\""), Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "proxy.proxy_protocol_from", "{errs:?}");
        let errs = Config::parse(&with("proxy_protocol = \"v1\""), Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "proxy.proxy_protocol", "{errs:?}");
        let text = with("proxy_protocol = \"optional\"\nproxy_protocol_from = [\"10.0.0.1/8\"]");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "proxy.proxy_protocol_from[0]", "{errs:?}");
        assert!(errs[0].line.is_some(), "{errs:?}");
        // "optional" with nobody trusted: everyone is a direct client.
        assert!(Config::parse(&with("proxy_protocol = \"optional\""), Path::new("/")).is_ok());
    }

    #[test]
    fn pool_modes() {
        let text = format!("{GOOD}\n[defaults.pool]\nmode = \"transaction\"\n");
        assert!(Config::parse(&text, Path::new("/")).is_ok());
        let text = format!("{GOOD}\n[defaults.pool]\nmode = \"statement\"\n");
        let errs = Config::parse(&text, Path::new("/")).unwrap_err();
        assert_eq!(errs[0].key, "defaults.pool.mode");
    }
}
