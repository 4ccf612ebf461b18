//! The `static` driver: a PostgreSQL server the operator already runs.
//!
//! Sluice never creates, starts, stops or removes it; `create` only reads the address from
//! the request, checks that the administrator credential logs in and is a superuser, and
//! hands the address back. (The file is not called `static.rs`: `static` is a keyword.)

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Map, Value};

use crate::driver::{BackendAddress, BackendRequest, BoxFuture, Driver};
use crate::sql;

/// The keys of the request's `backend` object.
const KEYS: [&str; 6] = [
    "host",
    "port",
    "tls",
    "tls_ca",
    "admin_user",
    "admin_database",
];

/// Backends the operator runs; see the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct StaticDriver;

impl StaticDriver {
    /// Reads and checks a `backend` object: `host` (required, non-empty), `port` (1 to
    /// 65535, default 5432), `tls` (disable, prefer, require or verify-full; default
    /// prefer, as for `[tenants.backend]`), `tls_ca` (required for verify-full, used only
    /// then), `admin_user` (required), `admin_database` (default `postgres`). Unknown keys
    /// are errors. The API can call this before queueing a job, to answer 422 at once.
    pub fn address_from_params(params: &Value) -> Result<BackendAddress, String> {
        let Some(object) = params.as_object() else {
            return Err(format!(
                "backend must be an object with the keys {}",
                KEYS.join(", ")
            ));
        };
        if let Some(key) = object.keys().find(|key| !KEYS.contains(&key.as_str())) {
            return Err(format!(
                "backend.{key} is not a known key (known: {})",
                KEYS.join(", ")
            ));
        }
        let host = text(object, "host")?.unwrap_or_default();
        if host.is_empty() {
            return Err("backend.host is required".to_owned());
        }
        let port = match object.get("port") {
            None | Some(Value::Null) => 5432,
            Some(value) => value
                .as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .filter(|&port| port != 0)
                .ok_or_else(|| "backend.port must be a whole number from 1 to 65535".to_owned())?,
        };
        let tls = text(object, "tls")?.unwrap_or_else(|| "prefer".to_owned());
        let mode = sql::tls_mode(&tls).map_err(|e| format!("backend.{e}"))?;
        let tls_ca = text(object, "tls_ca")?.map(PathBuf::from);
        if mode == router::BackendTls::VerifyFull && tls_ca.is_none() {
            return Err("backend.tls_ca is required with tls = \"verify-full\"".to_owned());
        }
        let admin_user = text(object, "admin_user")?
            .filter(|user| !user.is_empty())
            .ok_or_else(|| {
                "backend.admin_user is required: the superuser Sluice manages the backend's \
                 roles as"
                    .to_owned()
            })?;
        let admin_database = text(object, "admin_database")?
            .filter(|database| !database.is_empty())
            .unwrap_or_else(|| sql::AUTH_DATABASE.to_owned());
        Ok(BackendAddress {
            host,
            port,
            tls,
            tls_ca,
            admin_user,
            admin_database,
        })
    }
}

/// A string member, None when absent or null.
fn text(object: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(format!("backend.{key} must be a string")),
    }
}

/// Logs in with the operator's credential and checks that it is a superuser: the auth
/// lookup function reads `pg_authid`, which only a superuser may, and a function owned by
/// anyone else would install fine and then fail at every client login.
async fn check_admin(addr: &BackendAddress, password: &str) -> anyhow::Result<()> {
    let client = sql::connect_admin(addr, password, None).await?;
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("reading the administrator's attributes")?
        .get(0);
    if !superuser {
        return Err(sql::Permanent(format!(
            "{:?} on {}:{} is not a superuser; Sluice needs one to manage the backend's roles \
             and to read their SCRAM verifiers",
            addr.admin_user, addr.host, addr.port
        ))
        .into());
    }
    Ok(())
}

impl Driver for StaticDriver {
    fn name(&self) -> &'static str {
        "static"
    }

    fn create<'a>(
        &'a self,
        req: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>> {
        Box::pin(async move {
            let addr = Self::address_from_params(&req.params).map_err(sql::Permanent)?;
            if req.admin_password.is_empty() {
                return Err(
                    sql::Permanent("the backend's admin password is required".into()).into(),
                );
            }
            check_admin(&addr, &req.admin_password)
                .await
                .with_context(|| format!("checking the static backend of tenant {}", req.tenant))?;
            Ok(addr)
        })
    }

    fn ensure_running<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn destroy<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn shutdown(&self) {}
}
