//! From a startup message to a client holding a server connection:
//! identify → admit → authenticate → checkout → apply settings → greet.
//!
//! Works on a borrowed stream so the caller keeps it whatever happens, and can tell the
//! client why (including when the login timeout cuts this short).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pooler::{
    CheckoutError, ClientInPool, ConnectError, Pool, PoolKey, PooledConn, Release, ServerCredential,
};
use router::{identify, IdentifyClient, IdentifyError, Limits, PoolMode};
use tokio::io::AsyncWriteExt;
use wire::messages;
use wire::startup::StartupMessage;

use crate::admit::{Admission, TenantGate, TenantSlot};
use crate::auth::authenticate;
use crate::cancel::{CancelHandle, CancelTarget};
use crate::error::ClientError;
use crate::params;
use crate::state::Proxy;
use crate::stream::ClientStream;
use crate::tls::hostnames::HostCert;

/// A client that is in: it holds a server connection and has been greeted.
#[derive(Debug)]
pub struct Session {
    pub tenant: String,
    pub pool: Arc<Pool>,
    /// Counts this client in its pool's stats until the session ends.
    pub counted: ClientInPool,
    /// The server connection; always there in session mode, and in transaction mode
    /// only when the pool had to open one to learn the server's parameters.
    pub server: Option<PooledConn>,
    /// The ParameterStatus values the client was greeted with.
    pub params: BTreeMap<String, String>,
    /// This client's cancel key, live for as long as it holds the server connection.
    pub cancel: CancelHandle,
    /// Settings were SET on the server, so it needs a reset even if the client sends
    /// nothing.
    pub settings_applied: bool,
    /// The client's own settings (startup parameters and `-c` options).
    pub settings: Vec<(String, String)>,
    /// How Sluice logs into the backend as this client's role.
    pub credential: ServerCredential,
    /// The tenant's limits at login.
    pub limits: Limits,
    /// The tenant's admission state (query rate) and this client's place in its
    /// connection count.
    pub gate: Arc<TenantGate>,
    pub slot: TenantSlot,
}

/// Logs the client in. `admission` records the tenant as soon as it is found in the
/// catalog, so that a failure after that point is counted against it.
pub async fn establish(
    proxy: &Arc<Proxy>,
    stream: &mut ClientStream,
    startup: &StartupMessage,
    sni: Option<&str>,
    host: Option<&HostCert>,
    ip: IpAddr,
    admission: &mut Admission,
) -> Result<Session, ClientError> {
    if let Some(refused) = admission.refusal.take() {
        return Err(refused);
    }
    if proxy.config.require_tls && !stream.is_tls() {
        return Err(ClientError::TlsRequired);
    }
    let span = tracing::Span::current();
    let user = startup
        .user()
        .ok_or_else(|| ClientError::Protocol("no user name in startup packet".into()))?;
    let catalog = proxy.catalog.snapshot();
    let client = IdentifyClient {
        sni,
        host_tenant: host.map(|h| h.tenant.as_str()),
        options: startup.get("options"),
        user: Some(user),
    };
    let identified = identify(&proxy.config.identify, client, |id| {
        catalog.get(id).is_some()
    })
    .map_err(|e| match e {
        IdentifyError::NoTenant { hint } => ClientError::NoTenant(format!("no tenant: {hint}")),
        conflict => ClientError::NoTenant(conflict.to_string()),
    })?;
    // `app` for `user=app.acme` (tenant_from_user): the role everything below uses.
    let role = identified.role.as_deref().unwrap_or(user);
    span.record("role", role);
    let database = startup.database().unwrap_or(role);
    // Postgres truncates names to 63 bytes; so must the pool key, or one role could
    // get many pools (and many times the pool size) by varying the tail.
    let (role, database) = (truncate_name(role), truncate_name(database));
    span.record("tenant", identified.tenant.as_str());
    let tenant = catalog
        .get(&identified.tenant)
        .cloned()
        .ok_or_else(|| ClientError::UnknownTenant(identified.tenant.clone()))?;
    drop(catalog);
    let gate = admission.tenant(&proxy.gates, &tenant, ip).await?;
    // Sluice's own role for reading secrets is no client's, unless the tenant says so:
    // refused before any secret lookup or SCRAM work.
    if role == tenant.backend.auth_user && !tenant.backend.allow_auth_user_login {
        return Err(ClientError::AuthUserLogin(role.to_owned()));
    }
    let slot = gate.enter()?;
    let settings = params::client_settings(&startup.params, identified.options.as_deref())?;
    let minor = agreed_minor(startup.minor);
    if minor != startup.minor || startup.params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        negotiate_version(stream, startup, minor).await?;
    }
    // Protocol 3.2: the client's cancel key has a 32-byte secret.
    let long_key = minor >= 2;

    // A parked backend starts before its roles' secrets can be read from it.
    crate::park::wake_for_login(proxy, &tenant).await?;
    let looked = proxy
        .secrets
        .lookup(&tenant, role, &proxy.pools.tls)
        .await?;
    // The certificate this client was served: a tenant's own host name's, or the
    // listener's.
    let channel_binding = match host {
        Some(host) => host.tls.channel_binding.as_deref(),
        None => proxy
            .tls
            .as_ref()
            .and_then(|t| t.channel_binding.as_deref()),
    };
    // A failed password check against a cached secret: the password may have changed.
    let cached_since = looked.cached_since;
    let second_look = async || match cached_since {
        Some(seen) => {
            let tls = &proxy.pools.tls;
            proxy.secrets.reread(&tenant, role, tls, seen).await
        }
        None => None,
    };
    let mock = &proxy.mock_secret;
    let credential = match authenticate(
        stream,
        role,
        looked.secret,
        channel_binding,
        mock,
        second_look,
    )
    .await
    {
        Ok(credential) => credential,
        Err(e) => {
            if matches!(e, ClientError::AuthFailed(_)) {
                gate.login_failed(ip);
            }
            return Err(e);
        }
    };
    gate.login_succeeded(ip);
    // The expensive part of the login is over: let the next one in. The pre-login
    // phase ends here too (prelogin.rs).
    admission.login_slots.clear();
    admission.pending = None;

    let key = PoolKey {
        tenant: tenant.id.clone(),
        database: database.to_owned(),
        role: role.to_owned(),
    };
    let pool = proxy.pools.get_or_create(
        key,
        &tenant.backend,
        &tenant.pool,
        tenant.limits.max_server_connections,
    );
    if pool.settings().mode == PoolMode::Transaction {
        // What a server would report once the client's settings are applied, when
        // Sluice can tell without asking one.
        if let Some(params) = pool.fresh_params().and_then(|f| greeting(&f, &settings)) {
            // No fixed backend: the process id in the client's key is Sluice's own.
            let cancel = proxy.cancels.register_for(None, &tenant.id, long_key);
            greet(stream, &params, &cancel).await?;
            log_connection!(proxy, "session started (transaction mode)");
            return Ok(Session {
                tenant: tenant.id.to_string(),
                counted: pool.client_joined(),
                pool,
                server: None,
                params,
                cancel,
                settings_applied: false,
                settings,
                credential,
                limits: tenant.limits.clone(),
                gate,
                slot,
            });
        }
    }
    // Queued for a server connection, the client waits up to the pool's `max_wait`
    // (then 53300), even past the login deadline (session.rs).
    let _ = admission.queue_wait.set(pool.settings().max_wait);
    let mut server = checkout(proxy, &pool, &credential).await?;
    params::sync(server.conn(), params::pairs(&settings), tenant.id.as_str()).await?;
    let settings_applied = !settings.is_empty();

    let conn = server.conn();
    // In session mode the client keeps this backend, so its key carries the backend's
    // own process id (as `pg_backend_pid()` says), with Sluice's secret.
    let pid = match pool.settings().mode {
        PoolMode::Session => conn.cancel_key.map(|key| key.pid),
        PoolMode::Transaction => None,
    };
    let cancel = proxy.cancels.register_for(pid, &tenant.id, long_key);
    if let Some(key) = conn.cancel_key {
        let cancelled = cancel.set_target(Some(CancelTarget {
            addr: conn.addr.clone(),
            key,
        }));
        debug_assert!(!cancelled, "a new key points at no connection");
    }
    let params = conn.params.clone();
    if let Err(e) = greet(stream, &params, &cancel).await {
        // The client vanished; the server is clean apart from our SETs.
        server
            .release(Release::AtReadyForQuery {
                status: messages::tag::STATUS_IDLE,
                discard: settings_applied,
            })
            .await;
        return Err(e);
    }
    log_connection!(
        proxy,
        backend_pid = server.conn().backend_pid(),
        "session started"
    );
    Ok(Session {
        tenant: tenant.id.to_string(),
        counted: pool.client_joined(),
        pool,
        server: Some(server),
        params,
        cancel,
        settings_applied,
        settings,
        credential,
        limits: tenant.limits.clone(),
        gate,
        slot,
    })
}

/// The first 63 bytes of a name (NAMEDATALEN - 1), cut at a character boundary.
fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The end of the login: the server's parameters, the client's cancel key, ready.
async fn greet(
    stream: &mut ClientStream,
    params: &BTreeMap<String, String>,
    cancel: &CancelHandle,
) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    for (name, value) in params {
        messages::parameter_status(&mut out, name, value);
    }
    messages::client_key_data(&mut out, &cancel.key);
    messages::ready_for_query(&mut out, messages::tag::STATUS_IDLE);
    stream.write_all(&out).await?;
    Ok(())
}

/// A server connection from `pool` for a client logged in with `credential`. A backend
/// that refuses the credential (the password changed) also drops the role's cached
/// secret, so the next login reads the new one.
pub(crate) async fn checkout(
    proxy: &Proxy,
    pool: &Arc<Pool>,
    credential: &ServerCredential,
) -> Result<PooledConn, ClientError> {
    let key = &pool.key;
    match pool.checkout(credential, &proxy.pools.tls).await {
        Ok(server) => Ok(server),
        Err(e) => {
            let e = checkout_error(key.tenant.as_str(), e);
            if matches!(&e, ClientError::BackendRefused(f) if f.code == "28P01") {
                proxy.secrets.invalidate(&key.tenant, &key.role);
            }
            // A database that does not exist makes no lasting pool (any client could
            // otherwise add stats rows by naming databases).
            if matches!(&e, ClientError::BackendRefused(f) if f.code == "3D000") {
                proxy.pools.forget_unused(key);
            }
            Err(e)
        }
    }
}

fn checkout_error(tenant: &str, e: CheckoutError) -> ClientError {
    match e {
        CheckoutError::Timeout => ClientError::PoolTimeout,
        CheckoutError::Paused => ClientError::Paused(tenant.to_owned()),
        CheckoutError::BackendDown => ClientError::BackendUnavailable {
            tenant: tenant.to_owned(),
            detail: "backend failed moments ago (fail-fast backoff)".into(),
        },
        CheckoutError::Connect(ConnectError::Refused(fields)) => {
            ClientError::BackendRefused(fields)
        }
        CheckoutError::Connect(e) => ClientError::BackendUnavailable {
            tenant: tenant.to_owned(),
            detail: e.to_string(),
        },
    }
}

/// The ParameterStatus values a server would greet this client with: what a fresh
/// connection reported, with the client's settings written over them, spelled as the
/// server spells them. None when Sluice cannot know the server's spelling of a value
/// (`DateStyle=iso` is reported as `ISO, MDY`): the login then asks a server.
fn greeting(
    fresh: &std::collections::BTreeMap<String, String>,
    settings: &[(String, String)],
) -> Option<std::collections::BTreeMap<String, String>> {
    // Loose spelling: case, `-` and `_` aside (`utf-8` is `UTF8`).
    let loose = |v: &str| -> String {
        v.chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let mut params = fresh.clone();
    for (name, value) in settings {
        let Some((key, now)) = params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) else {
            continue;
        };
        let key = key.clone();
        let spelled = if loose(now) == loose(value) {
            now.clone()
        } else if key == "application_name"
            && value.len() < 64
            && value.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            // Reported as given (Postgres only truncates it and masks non-ASCII).
            value.clone()
        } else {
            return None;
        };
        params.insert(key, spelled);
    }
    Some(params)
}

/// The protocol minor version Sluice speaks with a client that asked for 3.`asked`:
/// 3.2 (PostgreSQL 18's: a longer cancel key, nothing else) for 3.2 and later, 3.0
/// for 3.0 and 3.1 (a version no PostgreSQL release ever used). Sluice speaks 3.0 to
/// its backends whatever the client's version: it answers cancels itself.
pub fn agreed_minor(asked: u16) -> u16 {
    if asked >= 2 {
        2
    } else {
        0
    }
}

/// A client that asked for a minor version Sluice does not speak (3.1, 3.3 and later),
/// or sent `_pq_` options: Sluice says which version it speaks (`minor`), and that it
/// knows none of those options.
async fn negotiate_version(
    stream: &mut ClientStream,
    startup: &StartupMessage,
    minor: u16,
) -> Result<(), ClientError> {
    let unrecognized: Vec<&str> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut out = BytesMut::new();
    messages::negotiate_protocol_version(&mut out, u32::from(minor), &unrecognized);
    stream.write_all(&out).await?;
    Ok(())
}
