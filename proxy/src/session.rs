//! One client connection from accept to goodbye: negotiate, log in (login.rs), relay,
//! release.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pooler::Release;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::Instrument;

use crate::admit::Admission;
use crate::cancel;
use crate::error::ClientError;
use crate::listener::Proxy;
use crate::login::{establish, Session};
use crate::negotiate::{negotiate, Negotiated};
use crate::relay::{relay, RelayEnd, Tally, Watch};
use crate::stream::ClientStream;
use crate::transaction;
use router::{PoolMode, TenantId, Who};
use std::sync::atomic::Ordering;

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
        let accepted = Instant::now();
        let deadline = accepted + proxy.config.login_timeout;
        let mut admission = Admission::default();
        match proxy.gates.enter_process() {
            Ok(slot) => admission.process = Some(slot),
            Err(refused) => admission.refusal = Some(refused),
        }
        let negotiated = async {
            match negotiate(tcp, proxy.tls.as_ref()).await? {
                Negotiated::Hello(hello) => {
                    at_client_hello(&proxy, hello.sni.as_deref(), peer.ip(), &mut admission).await;
                    if let Some(ClientError::ConnectRateLimited(tenant)) = &admission.refusal {
                        let storm = admission.gate.as_ref().is_some_and(|g| g.shed_refusal());
                        if storm {
                            return Err((None, ClientError::ConnectRateShed(tenant.clone())));
                        }
                    }
                    let tls = proxy
                        .tls
                        .as_ref()
                        .expect("a ClientHello is read only with TLS");
                    hello.complete(tls).await
                }
                other => Ok(other),
            }
        };
        let (mut stream, startup, sni) = match timeout_at(deadline, negotiated).await {
            // Like Postgres: a client that never finishes its startup packet is dropped.
            Err(_) => return tracing::info!("login timeout before the startup packet"),
            Ok(Err((stream, err))) => {
                return refuse(&proxy, stream, &err, admission.tenant.as_ref()).await;
            }
            Ok(Ok(Negotiated::Cancel(key))) => return handle_cancel(&proxy, key).await,
            Ok(Ok(Negotiated::Hello(_))) => unreachable!("completed above"),
            Ok(Ok(Negotiated::Startup {
                stream,
                startup,
                sni,
            })) => (stream, startup, sni),
        };
        let login = establish(
            &proxy,
            &mut stream,
            &startup,
            sni.as_deref(),
            peer.ip(),
            &mut admission,
        );
        let tenant = |a: &Admission| a.tenant.clone();
        let session = match timeout_at(deadline, login).await {
            Ok(Ok(session)) => session,
            Ok(Err(err)) => {
                return refuse(&proxy, Some(stream), &err, tenant(&admission).as_ref()).await
            }
            Err(_) => {
                let err = ClientError::LoginTimeout;
                return refuse(&proxy, Some(stream), &err, tenant(&admission).as_ref()).await;
            }
        };
        drop(admission.login_slots);
        let tally = Tally::default();
        let outcome = match session.pool.settings().mode {
            PoolMode::Session => run_session(&proxy, stream, session, &tally).await,
            PoolMode::Transaction => transaction::run(&proxy, stream, session, id, &tally).await,
        };
        log_connection!(
            proxy,
            duration_ms = accepted.elapsed().as_millis() as u64,
            bytes_from_client = tally.from_client.load(Ordering::Relaxed),
            bytes_to_client = tally.to_client.load(Ordering::Relaxed),
            outcome,
            "connection closed"
        );
    }
    .instrument(span)
    .await
}

/// The tenant checks, as soon as SNI names a tenant in the catalog: before the TLS
/// handshake's expensive part. A refusal is kept to be told once TLS is up.
async fn at_client_hello(
    proxy: &Proxy,
    sni: Option<&str>,
    ip: std::net::IpAddr,
    admission: &mut Admission,
) {
    if admission.refusal.is_some() {
        return;
    }
    let Ok(identified) = router::identify(&proxy.config.identify, sni, None) else {
        return;
    };
    let Some(tenant) = proxy.catalog.snapshot().get(&identified.tenant).cloned() else {
        return;
    };
    tracing::Span::current().record("tenant", tenant.id.as_str());
    if let Err(refused) = admission.tenant(&proxy.gates, &tenant, ip).await {
        admission.refusal = Some(refused);
    }
}

/// Counts a connection refused during login against its tenant (as far as it got),
/// and tells the client why.
async fn refuse(
    proxy: &Proxy,
    stream: Option<ClientStream>,
    err: &ClientError,
    tenant: Option<&TenantId>,
) {
    if let Some(reason) = err.reason() {
        let who = match (tenant, err) {
            (Some(id), _) => Who::Tenant(id),
            (None, ClientError::UnknownTenant(_)) => Who::Unknown,
            (None, _) => Who::Nobody,
        };
        proxy.rejections.record(who, reason);
    }
    reject(stream, err).await;
}

/// Tells the client why it is being turned away, if it can still hear it.
async fn reject(stream: Option<ClientStream>, err: &ClientError) {
    match err {
        ClientError::BackendUnavailable { detail, .. } => {
            tracing::warn!(error = %err, detail, "client rejected")
        }
        // A storm: counted in the metrics and the audit log, not a line each.
        ClientError::ConnectRateShed(_) => tracing::debug!(error = %err, "client rejected"),
        _ => tracing::info!(error = %err, "client rejected"),
    }
    let Some(mut stream) = stream else { return };
    if !err.can_tell_client() {
        return;
    }
    let mut out = BytesMut::new();
    err.to_response(&mut out);
    // A client that stopped reading must not hold this task (or shutdown) forever.
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Why a session was ended from outside: Sluice's shutdown, or its tenant's
/// suspension.
pub(crate) fn terminated(proxy: &Proxy, gate: &crate::admit::TenantGate) -> ClientError {
    if proxy.terminate.is_cancelled() {
        ClientError::Terminating("Sluice is shutting down")
    } else {
        ClientError::TenantTerminated(gate.id.to_string())
    }
}

/// How long Sluice tries to tell a departing client why.
pub(crate) const REJECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn handle_cancel(proxy: &Proxy, key: wire::startup::CancelKey) {
    match proxy.cancels.resolve(key) {
        Some(target) => match cancel::forward(&target).await {
            Ok(()) => tracing::info!(backend_pid = target.key.pid, "cancel request forwarded"),
            Err(e) => tracing::warn!(error = %e, "forwarding cancel request failed"),
        },
        None => tracing::info!("cancel request with unknown key ignored"),
    }
}

/// Relays until someone leaves, then puts the server connection back or closes it;
/// says how the session ended.
async fn run_session(
    proxy: &Proxy,
    mut stream: ClientStream,
    session: Session,
    tally: &Tally,
) -> String {
    let Session {
        tenant,
        server,
        cancel,
        settings_applied,
        limits,
        gate,
        counted: _counted,
        ..
    } = session;
    let mut server = server.expect("a session-mode client always holds a server connection");
    let pool = server.pool().clone();
    let conn = server.conn();
    let watch = Watch {
        limits: &limits,
        gate: &gate,
        cancel: conn.cancel_key.map(|key| (conn.addr.clone(), key)),
    };
    let end = relay(
        &mut stream,
        server.conn().stream_mut(),
        &gate.session_token(),
        &pool,
        tally,
        watch,
    )
    .await;
    // Forget the key before the server connection can go to another client, so a late
    // cancel from this one can never hit that client's query.
    drop(cancel);
    match end {
        RelayEnd::ClientLeft(release) => {
            let release = match release {
                Release::AtReadyForQuery { status, discard } => Release::AtReadyForQuery {
                    status,
                    discard: discard || settings_applied,
                },
                Release::Dirty => Release::Dirty,
            };
            tracing::debug!(?release, "client left");
            server.release(release).await;
            "client left".to_owned()
        }
        RelayEnd::ServerGone(detail) => {
            tracing::warn!(detail, "server connection lost");
            drop(server);
            let err = ClientError::BackendUnavailable { tenant, detail };
            reject(Some(stream), &err).await;
            err.to_string()
        }
        RelayEnd::IdleInTransaction(release) => {
            server.release(release).await;
            let err = ClientError::IdleInTransactionTimeout;
            reject(Some(stream), &err).await;
            err.to_string()
        }
        RelayEnd::IdleSession(release) => {
            server.release(release).await;
            let err = ClientError::IdleSessionTimeout;
            reject(Some(stream), &err).await;
            err.to_string()
        }
        RelayEnd::QueryRateLimited => {
            // The refused batch never reached the server, but earlier ones may be
            // running: the connection is not reused.
            server.release(Release::Dirty).await;
            let err = ClientError::QueryRateLimited(tenant);
            proxy
                .rejections
                .record(Who::Tenant(&gate.id), router::Reason::QueryRate);
            reject(Some(stream), &err).await;
            err.to_string()
        }
        RelayEnd::Terminated => {
            // The server may be mid-query: cancel it and close the connection.
            server.release(Release::Dirty).await;
            let err = terminated(proxy, &gate);
            reject(Some(stream), &err).await;
            err.to_string()
        }
    }
}
