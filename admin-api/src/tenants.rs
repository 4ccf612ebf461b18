//! `/v1/tenants`: read the catalog, change a tenant's pool settings and limits live
//! (`PATCH`), and list or lift its login bans.
//!
//! A change replaces the catalog; the proxy, subscribed to it, applies the new pool
//! settings to running pools and the new limits to its admission gates at once. Every
//! change is first appended to the audit log (see [`crate::audit_api`]); with the
//! control store unreachable, changes answer 503. The catalog itself is not in the store
//! yet: changes last until the process restarts.

use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;
use router::{Cidr, Limits, PoolMode, PoolSettings, Tenant};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit_api::record;
use crate::http::{authorize, json, list_query, Answer, ApiError, Pending, Req, MAX_PAGE};
use crate::keys::Role;
use crate::State;

/// A tenant as the API shows it. Durations and limits use the config file's keys and
/// units; 0 means "no limit".
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub id: String,
    /// `active` or `suspended` (provisioning states come with the control plane).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
    pub backend: BackendView,
    pub pool: PoolPatch,
    pub limits: LimitsPatch,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub address: String,
    pub tls: &'static str,
}

/// `[defaults.pool]` keys; in a PATCH, only those given change.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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
    fn of(p: &PoolSettings) -> Self {
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
    fn apply(&self, base: &PoolSettings) -> Result<PoolSettings, ApiError> {
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
    fn of(l: &Limits) -> Self {
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

    fn apply(&self, base: &Limits) -> Result<Limits, ApiError> {
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

fn view(t: &Tenant) -> TenantView {
    TenantView {
        id: t.id.to_string(),
        status: if t.suspended.is_some() {
            "suspended"
        } else {
            "active"
        },
        suspended_reason: t.suspended.clone(),
        backend: BackendView {
            address: t.backend.addr.to_string(),
            tls: match t.backend.tls {
                router::BackendTls::Disable => "disable",
                router::BackendTls::Prefer => "prefer",
                router::BackendTls::Require => "require",
                router::BackendTls::VerifyFull => "verify-full",
            },
        },
        pool: PoolPatch::of(&t.pool),
        limits: LimitsPatch::of(&t.limits),
    }
}

fn tenant_id(req: &Req) -> String {
    req.segments()[2].to_owned()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("tenant \"{id}\" does not exist"))
}

/// `GET /v1/tenants[?limit=N][&cursor=C]`: sorted by id.
pub(crate) fn list(state: &State, req: &Req) -> Answer {
    authorize(state, req, Role::Viewer)?;
    let q = list_query(req)?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    let catalog = state.sources.catalog.snapshot();
    let mut tenants: Vec<&Tenant> = catalog
        .iter()
        .map(|t| &**t)
        .filter(|t| q.cursor.as_deref().is_none_or(|c| t.id.as_str() > c))
        .collect();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    let next_cursor = (tenants.len() > limit).then(|| tenants[limit - 1].id.to_string());
    tenants.truncate(limit);
    let views: Vec<TenantView> = tenants.into_iter().map(view).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"tenants": views, "next_cursor": next_cursor}),
    ))
}

/// `GET /v1/tenants/{id}`.
pub(crate) fn get(state: &State, req: &Req) -> Answer {
    authorize(state, req, Role::Viewer)?;
    let id = tenant_id(req);
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(json(StatusCode::OK, &view(tenant)))
}

/// `PATCH /v1/tenants/{id}` with `{"pool": {...}, "limits": {...}}`: only the keys
/// given change; the whole patch applies or nothing does. Audited (`tenant.update`, with
/// the request and the settings before and after) before it applies.
pub(crate) fn patch<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let patch: TenantPatch = req.json()?;
        let apply = |current: &Tenant| -> Result<Tenant, ApiError> {
            let mut next = current.clone();
            if let Some(pool) = &patch.pool {
                next.pool = pool.apply(&current.pool)?;
            }
            if let Some(limits) = &patch.limits {
                next.limits = limits.apply(&current.limits)?;
            }
            Ok(next)
        };
        // Validate against the current catalog first: a refused request leaves no trace.
        let (before, after) = {
            let catalog = state.sources.catalog.snapshot();
            let current = catalog.get(&id).ok_or_else(|| not_found(&id))?;
            let next = apply(current)?;
            (settings(current), settings(&next))
        };
        let details = json!({
            "request": serde_json::from_slice::<serde_json::Value>(&req.body).unwrap_or_default(),
            "before": before,
            "after": after,
        });
        record(state, req, &caller, "tenant.update", id.clone(), details).await?;
        let mut changed = None;
        state
            .sources
            .catalog
            .update(|catalog| {
                let current = catalog.get(&id).ok_or_else(|| not_found(&id))?;
                let next = apply(current)?;
                changed = Some(view(&next));
                Ok::<_, ApiError>(catalog.with(next))
            })
            .inspect_err(|e| unapplied(&id, e))?;
        let answer = changed.expect("set when the update succeeded");
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant pool/limits changed through the API");
        Ok(json(StatusCode::OK, &answer))
    })
}

/// A tenant's pool settings and limits as the API shows them (an audit event's
/// before/after).
fn settings(t: &Tenant) -> serde_json::Value {
    json!({"pool": PoolPatch::of(&t.pool), "limits": LimitsPatch::of(&t.limits)})
}

/// Logs a change that was audited but then could not be applied (a concurrent change
/// made it invalid, or the tenant went away).
fn unapplied(id: &str, e: &ApiError) {
    tracing::warn!(tenant = %id, error = %e.message, "an audited change was not applied: the audit log records a change that did not happen");
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
        let before = status_of(state, &id)?;
        let details = json!({"reason": reason, "terminate": body.terminate, "before": before});
        record(state, req, &caller, "tenant.suspend", id.clone(), details).await?;
        let answer = set_suspended(state, &id, Some(reason)).inspect_err(|e| unapplied(&id, e))?;
        let terminated = if body.terminate {
            let tenant = router::TenantId::parse(&id).map_err(|_| not_found(&id))?;
            state.gates.terminate_sessions(&tenant)
        } else {
            0
        };
        tracing::info!(tenant = %id, terminate = body.terminate, terminated, key_id = %caller.key_id, "tenant suspended through the API");
        Ok(json(StatusCode::OK, &answer))
    })
}

/// `POST /v1/tenants/{id}/resume`.
pub(crate) fn resume<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let before = status_of(state, &id)?;
        let details = json!({"before": before});
        record(state, req, &caller, "tenant.resume", id.clone(), details).await?;
        let answer = set_suspended(state, &id, None).inspect_err(|e| unapplied(&id, e))?;
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant resumed through the API");
        Ok(json(StatusCode::OK, &answer))
    })
}

/// `{"status", "suspended_reason"}` of a tenant now, or 404.
fn status_of(state: &State, id: &str) -> Result<serde_json::Value, ApiError> {
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog.get(id).ok_or_else(|| not_found(id))?;
    let v = view(tenant);
    Ok(json!({"status": v.status, "suspended_reason": v.suspended_reason}))
}

fn set_suspended(state: &State, id: &str, reason: Option<String>) -> Result<TenantView, ApiError> {
    let mut answer = None;
    state.sources.catalog.update(|catalog| {
        let current = catalog.get(id).ok_or_else(|| not_found(id))?;
        let mut next = (**current).clone();
        next.suspended = reason;
        answer = Some(view(&next));
        Ok::<_, ApiError>(catalog.with(next))
    })?;
    Ok(answer.expect("set when the update succeeded"))
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
