//! One client connection from accept to goodbye, as a pipeline of phases.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pooler::{CheckoutError, ConnectError, PoolKey, PooledConn, Release};
use router::{identify, IdentifyError, Tenant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;
use wire::messages;
use wire::startup::StartupMessage;

use crate::auth::authenticate;
use crate::cancel::{self, CancelHandle, CancelTarget};
use crate::error::ClientError;
use crate::listener::Proxy;
use crate::negotiate::{negotiate, Negotiated};
use crate::params;
use crate::relay::{relay, RelayEnd};
use crate::stream::ClientStream;

/// A client that got through the handshake, holding a server connection.
struct Ready {
    tenant: String,
    stream: ClientStream,
    server: PooledConn,
    /// Keeps this client's cancel key alive for as long as the session lasts.
    _cancel: CancelHandle,
    /// Settings were SET on the server, so it needs a reset even if the client sends
    /// nothing.
    settings_applied: bool,
}

/// Serves one accepted TCP connection to the end. Never panics on client input; every
/// rejection the client can still read is a FATAL ErrorResponse.
pub async fn serve_connection(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let span = tracing::info_span!(
        "conn",
        id,
        client_addr = %peer,
        tenant = tracing::field::Empty,
        role = tracing::field::Empty
    );
    async move {
        let _ = tcp.set_nodelay(true);
        let login = tokio::time::timeout(proxy.config.login_timeout, login(&proxy, tcp));
        let ready = match login.await {
            Err(_) => {
                tracing::info!("login timeout");
                return;
            }
            Ok(Ok(Some(ready))) => ready,
            Ok(Ok(None)) => return, // a cancel request, handled
            Ok(Err((stream, err))) => {
                reject(stream, &err).await;
                return;
            }
        };
        run_session(&proxy, ready).await;
    }
    .instrument(span)
    .await
}

/// Tells the client why it is being turned away, if it can still hear it.
async fn reject(stream: Option<ClientStream>, err: &ClientError) {
    match err {
        ClientError::AuthFailed(_) | ClientError::TlsRequired | ClientError::UnknownTenant(_) => {
            tracing::info!(error = %err, "client rejected")
        }
        ClientError::BackendUnavailable { detail, .. } => {
            tracing::warn!(error = %err, detail, "client rejected")
        }
        _ => tracing::info!(error = %err, "client rejected"),
    }
    let Some(mut stream) = stream else { return };
    if !err.can_tell_client() {
        return;
    }
    let mut out = BytesMut::new();
    err.to_response(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

type LoginError = (Option<ClientStream>, ClientError);

/// negotiate → identify → admit → authenticate → checkout → greet.
async fn login(proxy: &Arc<Proxy>, tcp: TcpStream) -> Result<Option<Ready>, LoginError> {
    let (mut stream, startup, sni) = match negotiate(tcp, proxy.tls.as_ref()).await? {
        Negotiated::Cancel(key) => {
            handle_cancel(proxy, key).await;
            return Ok(None);
        }
        Negotiated::Startup {
            stream,
            startup,
            sni,
        } => (stream, startup, sni),
    };
    macro_rules! fail {
        ($e:expr) => {
            return Err((Some(stream), $e))
        };
    }

    if proxy.config.require_tls && !stream.is_tls() {
        fail!(ClientError::TlsRequired);
    }
    let span = tracing::Span::current();
    let Some(role) = startup.user().map(str::to_owned) else {
        fail!(ClientError::Protocol("no user name in startup packet".into()))
    };
    span.record("role", role.as_str());
    let database = startup.database().unwrap_or(&role).to_owned();

    let identified = match identify(&proxy.config.identify, sni.as_deref(), startup.get("options")) {
        Ok(found) => found,
        Err(IdentifyError::NoTenant { hint }) => fail!(ClientError::NoTenant(format!("no tenant: {hint}"))),
        Err(e @ IdentifyError::Conflict { .. }) => fail!(ClientError::NoTenant(e.to_string())),
    };
    span.record("tenant", identified.tenant.as_str());
    let Some(tenant) = proxy.catalog.snapshot().get(&identified.tenant).cloned() else {
        fail!(ClientError::UnknownTenant(identified.tenant))
    };
    let settings = match params::client_settings(&startup.params, identified.options.as_deref()) {
        Ok(s) => s,
        Err(e) => fail!(e),
    };
    if startup.minor > 0 || startup.params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        if let Err(e) = negotiate_version(&mut stream, &startup).await {
            fail!(e)
        }
    }

    let secret = match proxy.secrets.lookup(&tenant, &role, &proxy.pools.tls).await {
        Ok(secret) => secret,
        Err(e) => fail!(e),
    };
    let channel_binding = proxy.tls.as_ref().and_then(|t| t.channel_binding.as_deref());
    let credential =
        match authenticate(&mut stream, &role, secret, channel_binding, &proxy.mock_secret).await {
            Ok(c) => c,
            Err(e) => fail!(e),
        };

    let key = PoolKey {
        tenant: tenant.id.clone(),
        database: database.clone(),
        role: role.clone(),
    };
    let pool = proxy.pools.get_or_create(key, &tenant.backend, &tenant.pool);
    let mut server = match pool.checkout(&credential, &proxy.pools.tls).await {
        Ok(s) => s,
        Err(e) => fail!(checkout_error(&tenant, e)),
    };
    let applied = match params::apply(server.conn(), &settings).await {
        Ok(()) => !settings.is_empty(),
        Err(e) => {
            let e = match e {
                ClientError::BackendUnavailable { detail, .. } => ClientError::BackendUnavailable {
                    tenant: tenant.id.to_string(),
                    detail,
                },
                e => e,
            };
            fail!(e)
        }
    };

    let cancel = proxy.cancels.register();
    let conn = server.conn();
    if let Some(key) = conn.cancel_key {
        cancel.set_target(Some(CancelTarget {
            addr: conn.addr.clone(),
            key,
        }));
    }
    let mut out = BytesMut::new();
    for (name, value) in &conn.params {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, cancel.key);
    messages::ready_for_query(&mut out, messages::tag::STATUS_IDLE);
    if let Err(e) = stream.write_all(&out).await {
        // The client vanished; the server is clean apart from our SETs.
        server
            .release(Release::AtReadyForQuery {
                status: messages::tag::STATUS_IDLE,
                used: applied,
            })
            .await;
        return Err((None, e.into()));
    }
    tracing::info!(backend_pid = ?conn.backend_pid(), "session started");
    Ok(Some(Ready {
        tenant: tenant.id.to_string(),
        stream,
        server,
        _cancel: cancel,
        settings_applied: applied,
    }))
}

fn checkout_error(tenant: &Tenant, e: CheckoutError) -> ClientError {
    match e {
        CheckoutError::Timeout => ClientError::PoolTimeout,
        CheckoutError::Connect(ConnectError::Refused(fields)) => ClientError::BackendRefused(fields),
        CheckoutError::Connect(e) => ClientError::BackendUnavailable {
            tenant: tenant.id.to_string(),
            detail: e.to_string(),
        },
    }
}

/// Protocol 3.x with x > 0, or `_pq_` options: Sluice speaks 3.0 and says so.
async fn negotiate_version(stream: &mut ClientStream, startup: &StartupMessage) -> Result<(), ClientError> {
    let unrecognized: Vec<&str> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut out = BytesMut::new();
    messages::negotiate_protocol_version(&mut out, 0, &unrecognized);
    stream.write_all(&out).await?;
    Ok(())
}

async fn handle_cancel(proxy: &Proxy, key: wire::startup::CancelKey) {
    match proxy.cancels.resolve(key) {
        Some(target) => {
            if let Err(e) = cancel::forward(&target).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            } else {
                tracing::info!(backend_pid = target.key.pid, "cancel request forwarded");
            }
        }
        None => tracing::info!("cancel request with unknown key ignored"),
    }
}

/// Relays until someone leaves, then puts the server connection back or closes it.
async fn run_session(proxy: &Proxy, ready: Ready) {
    let Ready {
        tenant,
        mut stream,
        mut server,
        _cancel,
        settings_applied,
    } = ready;
    let end = relay(&mut stream, server.conn().stream_mut(), &proxy.terminate).await;
    match end {
        RelayEnd::ClientLeft(release) => {
            let release = match release {
                Release::AtReadyForQuery { status, used } => Release::AtReadyForQuery {
                    status,
                    used: used || settings_applied,
                },
                Release::Dirty => Release::Dirty,
            };
            tracing::info!(?release, "client left");
            server.release(release).await;
        }
        RelayEnd::ServerGone(detail) => {
            tracing::warn!(detail, "server connection lost");
            drop(server);
            let err = ClientError::BackendUnavailable { tenant, detail };
            reject(Some(stream), &err).await;
        }
        RelayEnd::Terminated => {
            drop(server);
            reject(Some(stream), &ClientError::Terminating("Sluice is shutting down")).await;
        }
    }
}
