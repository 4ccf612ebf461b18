//! A client moved here from the Sluice this one replaced (see `successor.rs`): admitted
//! again and served by the transaction relay without a login.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use pooler::registry::ClientInfo;
use router::PoolMode;

use crate::error::ClientError;
use crate::goodbye::tell_and_close;
use crate::login::Session;
use crate::state::Proxy;
use crate::stream::ClientStream;
use crate::successor::{MovedSession, MovingClient};

/// Serves a client moved here from the process this one replaced: admitted again
/// (process and tenant caps; the tenant must still be in the catalog, unsuspended, in
/// transaction mode), its cancel key registered again, then the transaction relay,
/// without a login.
pub async fn serve_arrival(proxy: Arc<Proxy>, moving: MovingClient, id: u64) {
    let session = match MovedSession::decode(&moving.state) {
        Ok(session) => session,
        Err(e) => {
            return tracing::warn!(error = %e, "a moved client's session is unreadable; closed")
        }
    };
    let span = tracing::info_span!(
        "conn",
        id,
        client_addr = %session.client,
        tenant = %session.key.tenant,
        role = %session.key.role
    );
    let _ = moving.tcp.set_nonblocking(true);
    let tcp = match tokio::net::TcpStream::from_std(moving.tcp) {
        Ok(tcp) => tcp,
        Err(e) => return tracing::warn!(error = %e, "cannot take a moved client"),
    };
    let mut stream = ClientStream::Plain(tcp);
    let process = match proxy.gates.enter_process() {
        Ok(slot) => slot,
        Err(e) => return refuse(&mut stream, e).await,
    };
    let _guard = span.enter();
    let tenant = proxy
        .catalog
        .snapshot()
        .get(session.key.tenant.as_str())
        .cloned();
    let Some(tenant) = tenant else {
        let e = ClientError::UnknownTenant(session.key.tenant.to_string());
        return refuse(&mut stream, e).await;
    };
    if tenant.suspended.is_some() {
        return refuse(&mut stream, ClientError::Suspended(tenant.id.to_string())).await;
    }
    let gate = proxy.gates.gate(&tenant);
    let slot = match gate.enter() {
        Ok(slot) => slot,
        Err(e) => return refuse(&mut stream, e).await,
    };
    let pool = proxy.pools.get_or_create(
        session.key.clone(),
        &tenant.backend,
        &tenant.pool,
        tenant.limits.max_server_connections,
    );
    if pool.settings().mode != PoolMode::Transaction {
        let e = ClientError::Terminating("the pool mode changed during a restart");
        return refuse(&mut stream, e).await;
    }
    let cancel = proxy.cancels.register_key(session.cancel, &tenant.id);
    tracing::info!("client moved here from the process this one replaced");
    // The view is rebuilt by `transaction::run` from the reported values and the
    // client's settings: each reported one that is settable, with the client's value.
    let params = session
        .reported
        .iter()
        .map(|name| {
            let value = session
                .settings
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (name.clone(), value)
        })
        .collect();
    let relayed = Session {
        tenant: tenant.id.to_string(),
        counted: pool.client_arrived(),
        pool,
        server: None,
        params,
        cancel,
        settings_applied: false,
        settings: session.settings.into_iter().collect(),
        credential: session.credential,
        limits: tenant.limits.clone(),
        gate,
        slot,
    };
    // In the registry of clients (`/v1/clients`, the console), as after a login.
    let registered = proxy.pools.registry.client(ClientInfo {
        id,
        key: relayed.pool.key.clone(),
        addr: session.client,
        tls: false,
        mode: PoolMode::Transaction,
    });
    registered.entry.detached();
    drop(_guard);
    let started = tokio::time::Instant::now();
    let outcome = {
        use tracing::Instrument;
        Box::pin(crate::transaction::run(
            &proxy,
            stream,
            relayed,
            id,
            &registered.entry,
            session.statements,
        ))
        .instrument(span.clone())
        .await
    };
    drop(process);
    let _guard = span.enter();
    tracing::info!(
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_from_client = registered.entry.tally.from_client.load(Ordering::Relaxed),
        bytes_to_client = registered.entry.tally.to_client.load(Ordering::Relaxed),
        outcome,
        "connection closed"
    );
}

/// Tells a moved client why it cannot be served here, and closes.
async fn refuse(stream: &mut ClientStream, e: ClientError) {
    tracing::warn!(error = %e, "a moved client was refused");
    let mut out = BytesMut::new();
    e.to_response(&mut out);
    tell_and_close(stream, &out).await;
}
