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

use crate::cancel;
use crate::error::ClientError;
use crate::listener::Proxy;
use crate::login::{establish, Session};
use crate::negotiate::{negotiate, Negotiated};
use crate::relay::{relay, RelayEnd, Watch};
use crate::stream::ClientStream;
use crate::transaction;
use router::PoolMode;

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
        let deadline = Instant::now() + proxy.config.login_timeout;
        let (mut stream, startup, sni) =
            match timeout_at(deadline, negotiate(tcp, proxy.tls.as_ref())).await {
                // Like Postgres: a client that never finishes its startup packet is dropped.
                Err(_) => return tracing::info!("login timeout before the startup packet"),
                Ok(Err((stream, err))) => return reject(stream, &err).await,
                Ok(Ok(Negotiated::Cancel(key))) => return handle_cancel(&proxy, key).await,
                Ok(Ok(Negotiated::Startup {
                    stream,
                    startup,
                    sni,
                })) => (stream, startup, sni),
            };
        let login = establish(&proxy, &mut stream, &startup, sni.as_deref());
        match timeout_at(deadline, login).await {
            Ok(Ok(session)) => match session.pool.settings().mode {
                PoolMode::Session => run_session(&proxy, stream, session).await,
                PoolMode::Transaction => transaction::run(&proxy, stream, session, id).await,
            },
            Ok(Err(err)) => reject(Some(stream), &err).await,
            Err(_) => reject(Some(stream), &ClientError::LoginTimeout).await,
        }
    }
    .instrument(span)
    .await
}

/// Tells the client why it is being turned away, if it can still hear it.
async fn reject(stream: Option<ClientStream>, err: &ClientError) {
    match err {
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
    // A client that stopped reading must not hold this task (or shutdown) forever.
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
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

/// Relays until someone leaves, then puts the server connection back or closes it.
async fn run_session(proxy: &Proxy, mut stream: ClientStream, session: Session) {
    let Session {
        tenant,
        server,
        cancel,
        settings_applied,
        limits,
        counted: _counted,
        ..
    } = session;
    let mut server = server.expect("a session-mode client always holds a server connection");
    let pool = server.pool().clone();
    let conn = server.conn();
    let watch = Watch {
        limits: &limits,
        cancel: conn.cancel_key.map(|key| (conn.addr.clone(), key)),
    };
    let end = relay(
        &mut stream,
        server.conn().stream_mut(),
        &proxy.terminate,
        &pool.stats,
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
            tracing::info!(?release, "client left");
            server.release(release).await;
        }
        RelayEnd::ServerGone(detail) => {
            tracing::warn!(detail, "server connection lost");
            drop(server);
            reject(
                Some(stream),
                &ClientError::BackendUnavailable { tenant, detail },
            )
            .await;
        }
        RelayEnd::IdleInTransaction(release) => {
            server.release(release).await;
            reject(Some(stream), &ClientError::IdleInTransactionTimeout).await;
        }
        RelayEnd::Terminated => {
            drop(server);
            reject(
                Some(stream),
                &ClientError::Terminating("Sluice is shutting down"),
            )
            .await;
        }
    }
}
