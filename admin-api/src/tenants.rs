//! `/v1/tenants` and `/v1/jobs`: create (a provisioning job), read, change pool
//! settings and limits live (`PATCH`), suspend, resume, delete (a job), and list or lift
//! a tenant's login bans.
//!
//! Tenants live in the control store. A change is one store transaction with its audit
//! event; this process then re-reads the tenant into its catalog at once (the proxy,
//! subscribed to the catalog, applies new pool settings and limits to what is running),
//! and every other process does when the store's notification reaches its catalog sync.
//! With the store unreachable, these endpoints answer 503 while the data plane keeps
//! serving the catalog it has.

use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;
use router::{Cidr, Limits, PoolMode, PoolSettings};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit_api::{record, unavailable};
use crate::http::{authorize, json, list_query, Answer, ApiError, Pending, Req, MAX_PAGE};
use crate::keys::{Caller, Role};
use crate::secrets::tenant_secret;
use crate::store::rfc3339::format_micros;
use crate::store::{AuditEvent, BackendRecord, ChangeError, JobRecord, TenantRecord};
use crate::State;

/// A tenant as the API shows it. Durations and limits use the config file's keys and
/// units; 0 means "no limit".
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub id: String,
    /// `provisioning`, `active`, `suspended`, `failed` or `deleting`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
    /// Why a tenant whose backend went down and did not come back is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_reason: Option<String>,
    pub plan: Option<String>,
    pub backend: BackendView,
    /// Effective settings: the plan's, with the tenant's own keys over them.
    pub pool: PoolPatch,
    pub limits: LimitsPatch,
    /// How a client reaches the tenant through Sluice (the role and password are the
    /// client's), when the proxy's SNI suffix is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    /// `local`, `static` or `config`.
    pub driver: String,
    /// `host:port` or the socket path; none until the backend is created.
    pub address: Option<String>,
    pub tls: String,
}

/// `[defaults.pool]` keys; in a PATCH, only those given change.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prepared_statements: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_wait_ms: Option<u64>,
}

/// `[defaults.limits]` keys; in a PATCH, only those given change.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_client_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_server_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_logins: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_window_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_ban_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_cidrs: Option<Vec<String>>,
}

/// The body of `PATCH /v1/tenants/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// A new plan: its settings apply at once, and a container driver resizes the
    /// backend to the plan's size before the change is stored.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub pool: Option<PoolPatch>,
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
}

const TEN_YEARS_S: u64 = 10 * 366 * 24 * 3600;

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PoolPatch {
    pub(crate) fn of(p: &PoolSettings) -> Self {
        PoolPatch {
            mode: Some(
                match p.mode {
                    PoolMode::Session => "session",
                    PoolMode::Transaction => "transaction",
                }
                .to_owned(),
            ),
            size: Some(p.size),
            min_idle: Some(p.min_idle),
            max_wait_ms: Some(millis(p.max_wait)),
            idle_timeout_s: Some(secs(p.idle_timeout)),
            lifetime_s: Some(secs(p.lifetime)),
            max_prepared_statements: Some(p.max_prepared_statements),
            reserve: Some(p.reserve),
            reserve_wait_ms: Some(millis(p.reserve_wait)),
        }
    }

    /// `base` with the given keys changed, or what is wrong with them.
    pub(crate) fn apply(&self, base: &PoolSettings) -> Result<PoolSettings, ApiError> {
        let mut p = base.clone();
        if let Some(mode) = &self.mode {
            p.mode = match mode.as_str() {
                "session" => PoolMode::Session,
                "transaction" => PoolMode::Transaction,
                other => {
                    return Err(ApiError::invalid(format!(
                        "pool.mode: {other:?} is not one of session, transaction"
                    )))
                }
            };
        }
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ApiError::invalid(format!(
                    "pool.{key}: must be between {lo} and {hi}"
                )))
            }
        };
        if let Some(v) = self.size {
            p.size = range("size", v as u64, 1, 10_000)? as usize;
        }
        if let Some(v) = self.reserve {
            p.reserve = range("reserve", v as u64, 0, 10_000)? as usize;
        }
        if let Some(v) = self.max_prepared_statements {
            p.max_prepared_statements =
                range("max_prepared_statements", v as u64, 1, 1_000_000)? as usize;
        }
        if let Some(v) = self.max_wait_ms {
            p.max_wait = Duration::from_millis(range("max_wait_ms", v, 0, TEN_YEARS_S * 1000)?);
        }
        if let Some(v) = self.reserve_wait_ms {
            let v = range("reserve_wait_ms", v, 0, TEN_YEARS_S * 1000)?;
            p.reserve_wait = Duration::from_millis(v);
        }
        if let Some(v) = self.idle_timeout_s {
            p.idle_timeout = Duration::from_secs(range("idle_timeout_s", v, 1, TEN_YEARS_S)?);
        }
        if let Some(v) = self.lifetime_s {
            p.lifetime = Duration::from_secs(range("lifetime_s", v, 1, TEN_YEARS_S)?);
        }
        if let Some(v) = self.min_idle {
            p.min_idle = v;
        }
        if p.min_idle > p.size {
            return Err(ApiError::invalid(format!(
                "pool.min_idle ({}) must not exceed pool.size ({})",
                p.min_idle, p.size
            )));
        }
        Ok(p)
    }
}

impl LimitsPatch {
    pub(crate) fn of(l: &Limits) -> Self {
        let ms = |d: Option<Duration>| Some(d.map_or(0, millis));
        LimitsPatch {
            query_timeout_ms: ms(l.query_timeout),
            idle_in_transaction_timeout_ms: ms(l.idle_in_transaction_timeout),
            client_idle_timeout_s: Some(l.client_idle_timeout.map_or(0, secs)),
            max_client_connections: Some(l.max_client_connections.map_or(0, |n| n as u64)),
            max_server_connections: Some(l.max_server_connections.map_or(0, |n| n as u64)),
            connect_rate: Some(l.connect_rate.unwrap_or(0)),
            query_rate: Some(l.query_rate.unwrap_or(0)),
            max_concurrent_logins: Some(u32::try_from(l.max_concurrent_logins).unwrap_or(u32::MAX)),
            failed_login_max: Some(l.failed_logins.max_failures),
            failed_login_window_s: Some(secs(l.failed_logins.window)),
            failed_login_ban_s: Some(secs(l.failed_logins.ban)),
            allow_cidrs: Some(l.allow_cidrs.iter().map(Cidr::to_string).collect()),
        }
    }

    pub(crate) fn apply(&self, base: &Limits) -> Result<Limits, ApiError> {
        let mut l = base.clone();
        let upto = |key: &str, v: u64, hi: u64| {
            if v <= hi {
                Ok(v)
            } else {
                Err(ApiError::invalid(format!(
                    "limits.{key}: must be at most {hi}"
                )))
            }
        };
        let off_or = |v: u64, f: fn(u64) -> Duration| (v > 0).then(|| f(v));
        if let Some(v) = self.query_timeout_ms {
            let v = upto("query_timeout_ms", v, TEN_YEARS_S * 1000)?;
            l.query_timeout = off_or(v, Duration::from_millis);
        }
        if let Some(v) = self.idle_in_transaction_timeout_ms {
            let v = upto("idle_in_transaction_timeout_ms", v, TEN_YEARS_S * 1000)?;
            l.idle_in_transaction_timeout = off_or(v, Duration::from_millis);
        }
        if let Some(v) = self.client_idle_timeout_s {
            let v = upto("client_idle_timeout_s", v, TEN_YEARS_S)?;
            l.client_idle_timeout = off_or(v, Duration::from_secs);
        }
        if let Some(v) = self.max_client_connections {
            l.max_client_connections = (v > 0).then(|| usize::try_from(v).unwrap_or(usize::MAX));
        }
        if let Some(v) = self.max_server_connections {
            l.max_server_connections = (v > 0).then(|| usize::try_from(v).unwrap_or(usize::MAX));
        }
        if let Some(v) = self.connect_rate {
            l.connect_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.query_rate {
            l.query_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.max_concurrent_logins {
            if v == 0 {
                return Err(ApiError::invalid(
                    "limits.max_concurrent_logins: must be at least 1",
                ));
            }
            l.max_concurrent_logins = v as usize;
        }
        if let Some(v) = self.failed_login_max {
            l.failed_logins.max_failures = v;
        }
        if let Some(v) = self.failed_login_window_s {
            l.failed_logins.window =
                Duration::from_secs(upto("failed_login_window_s", v, TEN_YEARS_S)?);
        }
        if let Some(v) = self.failed_login_ban_s {
            l.failed_logins.ban = Duration::from_secs(upto("failed_login_ban_s", v, TEN_YEARS_S)?);
        }
        if let Some(list) = &self.allow_cidrs {
            l.allow_cidrs = list
                .iter()
                .map(|c| {
                    Cidr::parse(c)
                        .map_err(|e| ApiError::invalid(format!("limits.allow_cidrs: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(l)
    }
}

/// The API's view of a record: its effective settings (plan + overrides).
pub(crate) fn view(state: &State, record: &TenantRecord) -> TenantView {
    let plane = &state.plane;
    let (pool, limits) = plane.sync.plans.resolve(record).unwrap_or_else(|e| {
        tracing::warn!(tenant = %record.id, error = %format!("{e:#}"), "showing plan defaults");
        let base = &plane.sync.plans.defaults;
        (base.pool.clone(), base.limits.clone())
    });
    let b = &record.backend;
    TenantView {
        id: record.id.clone(),
        status: record.status.clone(),
        // One column holds the reason for the current status.
        suspended_reason: (record.status == "suspended")
            .then(|| record.suspended_reason.clone())
            .flatten(),
        failed_reason: (record.status == "failed")
            .then(|| record.suspended_reason.clone())
            .flatten(),
        plan: record.plan.clone(),
        backend: BackendView {
            driver: b.driver.clone(),
            address: match (&b.host, b.port) {
                (Some(host), Some(port)) => {
                    Some(router::BackendAddr::from_host(host, port).to_string())
                }
                _ => None,
            },
            tls: b.tls.clone(),
        },
        pool: PoolPatch::of(&pool),
        limits: LimitsPatch::of(&limits),
        connection_string: plane.hint.as_ref().map(|h| h.connection_string(&record.id)),
    }
}

/// How clients reach tenants, for the `connection_string` of a tenant view.
#[derive(Debug, Clone)]
pub struct ConnectionHint {
    /// `acme` → `acme.<sni_suffix>`.
    pub sni_suffix: String,
    pub port: u16,
}

impl ConnectionHint {
    fn connection_string(&self, id: &str) -> String {
        format!(
            "postgresql://{id}.{}:{}/{}?sslmode=require",
            self.sni_suffix,
            self.port,
            crate::provision::sql::APP_DATABASE
        )
    }
}

/// The tenant id of a `/v1/tenants/{id}/…` path.
pub(crate) fn tenant_id(req: &Req) -> String {
    req.segments()[2].to_owned()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("tenant \"{id}\" does not exist"))
}

/// A store failure as the API says it: 503, the store is what is missing.
pub(crate) fn store_error(what: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| {
        tracing::warn!(error = %format!("{e:#}"), "{what}");
        unavailable(format!("{what}: {e:#}"))
    }
}

/// How a refused store change reads to the caller.
pub(crate) fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Exists(what) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what} already exists"),
        ),
        ChangeError::Missing(what) => ApiError::not_found(format!("{what} does not exist")),
        ChangeError::Conflict(what) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "tenant {what} was changed concurrently or is in the wrong state; read it again"
            ),
        ),
        ChangeError::Store(e) => store_error("the control store")(e),
    }
}

/// The tenant's record, or 404.
pub(crate) async fn record_of(state: &State, id: &str) -> Result<TenantRecord, ApiError> {
    let store = state.control.store()?;
    store
        .get_tenant(id)
        .await
        .map_err(store_error("reading the tenant"))?
        .ok_or_else(|| not_found(id))
}

/// An audit event for `caller`'s change of `target`.
pub(crate) fn event(
    req: &Req,
    caller: &Caller,
    action: &str,
    target: String,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        actor: Some(caller.key_id.clone()),
        source_ip: Some(req.peer.ip().to_string()),
        target: Some(target),
        details,
        ..AuditEvent::new(action)
    }
}

/// Puts the change of tenant `id` into this process's catalog at once (other processes
/// hear of it through the store's notification).
pub(crate) async fn apply_locally(state: &State, id: &str) {
    if let Ok(store) = state.control.store() {
        if let Err(e) = state.plane.sync.refresh(store, id).await {
            tracing::warn!(tenant = %id, error = %format!("{e:#}"), "applying the change to the catalog; the next resync will");
        }
    }
}

/// `GET /v1/tenants[?limit=N][&cursor=C]`: sorted by id.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let q = list_query(req)?;
        let limit = q.limit.unwrap_or(MAX_PAGE);
        let store = state.control.store()?;
        let records = store
            .list_tenants()
            .await
            .map_err(store_error("listing tenants"))?;
        let mut page: Vec<&TenantRecord> = records
            .iter()
            .filter(|t| q.cursor.as_deref().is_none_or(|c| t.id.as_str() > c))
            .collect();
        let next_cursor = (page.len() > limit).then(|| page[limit - 1].id.clone());
        page.truncate(limit);
        let views: Vec<TenantView> = page.into_iter().map(|r| view(state, r)).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"tenants": views, "next_cursor": next_cursor}),
        ))
    })
}

/// `GET /v1/tenants/{id}`.
pub(crate) fn get<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let record = record_of(state, &tenant_id(req)).await?;
        Ok(json(StatusCode::OK, &view(state, &record)))
    })
}

/// The body of `POST /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub backend: Option<CreateBackend>,
    #[serde(default)]
    pub pool: Option<PoolPatch>,
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
}

/// `backend` of `POST /v1/tenants`: the driver, and for `static` the server to use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBackend {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<String>,
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_password: Option<String>,
    #[serde(default)]
    pub admin_database: Option<String>,
}

/// `POST /v1/tenants`: 202 with the tenant (`provisioning`) and its job. The tenant,
/// its job, its secrets and the audit event are one transaction: a refused or failed
/// request leaves nothing behind.
pub(crate) fn create<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let body: CreateTenant = req.json()?;
        let record = new_record(state, &body)?;
        let store = state.control.store()?;
        let mut secrets = Vec::new();
        let backend = body.backend.unwrap_or_default();
        if let Some(password) = &backend.admin_password {
            let name = tenant_secret(&record.id, "admin");
            secrets.push((name.clone(), state.plane.sync.secrets.seal(&name, password)));
        }
        let details = json!({
            "plan": record.plan,
            "driver": record.backend.driver,
            "params": record.backend.params,
            "pool": record.pool,
            "limits": record.limits,
        });
        let event = event(req, &caller, "tenant.create", record.id.clone(), details);
        let (tenant, job) = store
            .create_tenant(&record, &secrets, &event)
            .await
            .map_err(change_error)?;
        state.plane.wake.notify_one();
        tracing::info!(tenant = %record.id, job = job.id, key_id = %caller.key_id, "tenant queued for provisioning");
        Ok(json(
            StatusCode::ACCEPTED,
            &json!({"tenant": view(state, &tenant), "job": JobView::of(&job)}),
        ))
    })
}

/// Checks a create request and turns it into the record to insert.
fn new_record(state: &State, body: &CreateTenant) -> Result<TenantRecord, ApiError> {
    let id =
        router::TenantId::parse(&body.id).map_err(|e| ApiError::invalid(format!("id: {e}")))?;
    let plans = &state.plane.sync.plans;
    if let Some(plan) = &body.plan {
        plans
            .base(Some(plan))
            .map_err(|e| ApiError::invalid(format!("plan: {e}")))?;
    }
    let empty = CreateBackend::default();
    let b = body.backend.as_ref().unwrap_or(&empty);
    let drivers = &state.plane.drivers;
    let driver = match b.driver.as_deref().or(drivers.default) {
        Some(name) => drivers.get(name).map(|d| d.name()).ok_or_else(|| {
            ApiError::invalid(match drivers.why_unavailable(name) {
                Some(reason) => format!("backend.driver: {name:?} cannot run here: {reason}"),
                None => format!(
                    "backend.driver: {name:?} is not enabled here (enabled: {})",
                    drivers.names().join(", ")
                ),
            })
        })?,
        None => {
            return Err(ApiError::invalid(
                "backend.driver: no provisioner driver is enabled",
            ))
        }
    };
    let tls = b.tls.clone().unwrap_or_else(|| "require".into());
    if !["disable", "prefer", "require", "verify-full"].contains(&tls.as_str()) {
        return Err(ApiError::invalid(format!(
            "backend.tls: {tls:?} is not one of disable, prefer, require, verify-full"
        )));
    }
    let params = if driver == "static" {
        let host = b
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ApiError::invalid("backend.host: required by the static driver"))?;
        let admin_user = b
            .admin_user
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ApiError::invalid("backend.admin_user: required by the static driver")
            })?;
        if b.admin_password.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "backend.admin_password: required by the static driver",
            ));
        }
        let params = json!({
            "host": host,
            "port": b.port.unwrap_or(5432),
            "tls": tls,
            "tls_ca": b.tls_ca,
            "admin_user": admin_user,
            "admin_database": b.admin_database.clone().unwrap_or_else(|| "postgres".into()),
        });
        // What the job would find wrong, refused now.
        crate::provision::StaticDriver::address_from_params(&params).map_err(ApiError::invalid)?;
        params
    } else {
        let named = [
            ("host", b.host.is_some()),
            ("port", b.port.is_some()),
            ("tls_ca", b.tls_ca.is_some()),
            ("admin_user", b.admin_user.is_some()),
            ("admin_password", b.admin_password.is_some()),
            ("admin_database", b.admin_database.is_some()),
        ];
        if let Some((key, _)) = named.iter().find(|(_, given)| *given) {
            return Err(ApiError::invalid(format!(
                "backend.{key}: only for the static driver, not {driver}"
            )));
        }
        json!({})
    };
    let record = TenantRecord {
        id: id.to_string(),
        plan: body.plan.clone(),
        status: "provisioning".into(),
        suspended_reason: None,
        backend: BackendRecord {
            driver: driver.to_owned(),
            host: None,
            port: None,
            tls,
            tls_ca: None,
            admin_user: None,
            admin_database: None,
            auth_user: crate::jobs::AUTH_USER.to_owned(),
            auth_database: "postgres".into(),
            auth_query: None,
            params,
        },
        pool: body.pool.clone().unwrap_or_default(),
        limits: body.limits.clone().unwrap_or_default(),
        version: 0,
    };
    // Settings that do not resolve are refused now, not when the job ends.
    plans
        .resolve(&record)
        .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    Ok(record)
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub tenant: String,
    pub state: String,
    pub steps_done: Vec<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl JobView {
    pub fn of(job: &JobRecord) -> JobView {
        JobView {
            id: job.id,
            kind: job.kind.clone(),
            tenant: job.tenant.clone(),
            state: job.state.clone(),
            steps_done: job.steps_done.clone(),
            attempts: job.attempts,
            error: job.error.clone(),
            created_at: format_micros(job.created_at),
            updated_at: format_micros(job.updated_at),
        }
    }
}

/// `GET /v1/jobs/{id}`.
pub(crate) fn job<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let raw = req.segments()[2];
        let missing = || ApiError::not_found(format!("job {raw:?} does not exist"));
        let id: i64 = raw.parse().map_err(|_| missing())?;
        let store = state.control.store()?;
        let job = store
            .get_job(id)
            .await
            .map_err(store_error("reading the job"))?
            .ok_or_else(missing)?;
        Ok(json(StatusCode::OK, &JobView::of(&job)))
    })
}

/// `DELETE /v1/tenants/{id}`: 202 with the delete job. The tenant leaves the catalog at
/// once (new connections: 3D000); the job ends its sessions (57P01), removes the
/// backend and then the tenant.
pub(crate) fn delete<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let before = record_of(state, &id).await?;
        let store = state.control.store()?;
        let details = json!({"before": {"status": before.status, "plan": before.plan, "driver": before.backend.driver}});
        let event = event(req, &caller, "tenant.delete", id.clone(), details);
        let job = store
            .start_delete(&id, &event)
            .await
            .map_err(change_error)?;
        apply_locally(state, &id).await;
        state.plane.wake.notify_one();
        tracing::info!(tenant = %id, job = job.id, key_id = %caller.key_id, "tenant queued for deletion");
        Ok(json(
            StatusCode::ACCEPTED,
            &json!({"job": JobView::of(&job)}),
        ))
    })
}

/// `PATCH /v1/tenants/{id}` with `{"pool": {...}, "limits": {...}}`: only the keys
/// given change; the whole patch applies or nothing does. The change and its audit
/// event (`tenant.update`, with the request and the effective settings before and
/// after) commit together; a concurrent change in between answers 409.
pub(crate) fn patch<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let patch: TenantPatch = req.json()?;
        let current = record_of(state, &id).await?;
        let mut next = current.clone();
        if let Some(pool) = &patch.pool {
            next.pool = overlay(&current.pool, pool);
        }
        if let Some(limits) = &patch.limits {
            next.limits = overlay(&current.limits, limits);
        }
        if let Some(plan) = &patch.plan {
            next.plan = Some(plan.clone());
        }
        let plans = &state.plane.sync.plans;
        // Validate first: a refused request leaves no trace.
        let after = settings_of(plans, &next).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        let before = settings_of(plans, &current).unwrap_or_default();
        let details = json!({
            "request": serde_json::from_slice::<serde_json::Value>(&req.body).unwrap_or_default(),
            "before": before,
            "after": after,
        });
        let event = event(req, &caller, "tenant.update", id.clone(), details);
        let store = state.control.store()?;
        if next.plan != current.plan {
            resize_backend(state, &current, next.plan.as_deref()).await?;
        }
        let updated = store
            .update_tenant_settings(
                &id,
                current.version,
                next.plan.as_deref(),
                &next.pool,
                &next.limits,
                &event,
            )
            .await
            .map_err(change_error)?;
        apply_locally(state, &id).await;
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant pool/limits changed through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}

/// Gives the tenant's backend `plan`'s size (container drivers; the others have no
/// sizes). Done before the store records the plan, so that the store never names a plan
/// the backend was not given; a failure answers 502 and changes nothing.
async fn resize_backend(
    state: &State,
    record: &TenantRecord,
    plan: Option<&str>,
) -> Result<(), ApiError> {
    let built = record.backend.host.is_some() && record.status != "provisioning";
    let Some(driver) = state.plane.drivers.get(&record.backend.driver) else {
        return Ok(());
    };
    if !built {
        return Ok(()); // the create job sizes it from the stored plan
    }
    driver.resize(&record.id, plan).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "backend_error",
            format!("resizing the tenant's backend to the plan failed: {e:#}"),
        )
    })
}

/// `base` with the keys set in `patch` written over it.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(base: &T, patch: &T) -> T {
    let mut merged = serde_json::to_value(base).expect("settings serialize");
    if let (serde_json::Value::Object(m), serde_json::Value::Object(p)) = (
        &mut merged,
        serde_json::to_value(patch).expect("settings serialize"),
    ) {
        m.extend(p);
    }
    serde_json::from_value(merged).expect("a merge of two valid settings is valid")
}

/// A tenant's effective pool settings and limits as the API shows them (an audit
/// event's before/after).
fn settings_of(
    plans: &crate::catalog_sync::Plans,
    record: &TenantRecord,
) -> anyhow::Result<serde_json::Value> {
    let (pool, limits) = plans.resolve(record)?;
    Ok(json!({"pool": PoolPatch::of(&pool), "limits": LimitsPatch::of(&limits)}))
}

/// The body of `POST /v1/tenants/{id}/suspend`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suspend {
    #[serde(default)]
    reason: Option<String>,
    /// Also end the sessions already running (57P01).
    #[serde(default)]
    terminate: bool,
}

/// `POST /v1/tenants/{id}/suspend` `{"reason", "terminate"}`: new connections get
/// 28000 `tenant "<id>" is suspended`; with `terminate`, running sessions end.
pub(crate) fn suspend<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let body: Suspend = if req.body.is_empty() {
            Suspend::default()
        } else {
            req.json()?
        };
        let reason = body
            .reason
            .unwrap_or_else(|| "suspended by an operator".into());
        if reason.len() > 1000 {
            return Err(ApiError::invalid("reason: at most 1000 bytes"));
        }
        let before = record_of(state, &id).await?;
        let details = json!({"reason": reason, "terminate": body.terminate,
            "before": {"status": before.status, "suspended_reason": before.suspended_reason}});
        let event = event(req, &caller, "tenant.suspend", id.clone(), details);
        let store = state.control.store()?;
        let updated = store
            .set_tenant_status(
                &id,
                &["active", "suspended"],
                "suspended",
                Some(&reason),
                Some(&event),
            )
            .await
            .map_err(change_error)?;
        apply_locally(state, &id).await;
        let terminated = if body.terminate {
            let tenant = router::TenantId::parse(&id).map_err(|_| not_found(&id))?;
            state.gates.terminate_sessions(&tenant)
        } else {
            0
        };
        tracing::info!(tenant = %id, terminate = body.terminate, terminated, key_id = %caller.key_id, "tenant suspended through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}

/// `POST /v1/tenants/{id}/resume`.
pub(crate) fn resume<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let before = record_of(state, &id).await?;
        let details = json!({"before": {"status": before.status, "suspended_reason": before.suspended_reason}});
        let event = event(req, &caller, "tenant.resume", id.clone(), details);
        let store = state.control.store()?;
        let updated = store
            .set_tenant_status(&id, &["active", "suspended"], "active", None, Some(&event))
            .await
            .map_err(change_error)?;
        apply_locally(state, &id).await;
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant resumed through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}

#[derive(Serialize)]
struct BanView {
    ip: IpAddr,
    retry_in_s: u64,
    failures: u32,
}

/// `GET /v1/tenants/{id}/bans`: addresses refused for failed logins now.
pub(crate) fn bans(state: &State, req: &Req) -> Answer {
    authorize(state, req, Role::Viewer)?;
    let id = tenant_id(req);
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog.get(&id).ok_or_else(|| not_found(&id))?;
    let bans: Vec<BanView> = state
        .gates
        .bans(&tenant.id)
        .into_iter()
        .map(|b| BanView {
            ip: b.ip,
            retry_in_s: b.until_remaining.as_secs().max(1),
            failures: b.failures,
        })
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"bans": bans})))
}

/// `DELETE /v1/tenants/{id}/bans[?ip=ADDR]`: lifts one address's ban, or all.
pub(crate) fn lift_bans<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let q = list_query(req)?;
        let ip =
            q.ip.map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| ApiError::bad_request(format!("ip: {ip:?} is not an IP address")))
            })
            .transpose()?;
        let tenant = {
            let catalog = state.sources.catalog.snapshot();
            catalog.get(&id).ok_or_else(|| not_found(&id))?.id.clone()
        };
        let details = json!({"ip": ip.map(|ip| ip.to_string())});
        record(state, req, &caller, "tenant.bans.lift", id.clone(), details).await?;
        let lifted = state.gates.lift(&tenant, ip);
        tracing::info!(tenant = %id, ?ip, lifted, key_id = %caller.key_id, "bans lifted through the API");
        Ok(json(StatusCode::OK, &serde_json::json!({"lifted": lifted})))
    })
}
