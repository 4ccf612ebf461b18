//! One client connection from accept to goodbye: negotiate, log in (login.rs), relay,
//! release.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pooler::Release;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::Instrument;

use crate::admit::Admission;
use crate::config::PeerKind;
use crate::console;
use crate::error::ClientError;
use crate::goodbye::{terminated, REJECT_TIMEOUT};
use crate::login::{establish, Session};
use crate::negotiate::{negotiate, tls_handshake, ClientHello, Negotiated};
use crate::prelogin::PendingSlot;
use crate::proxy_protocol;
use crate::relay::{relay, RelayEnd, Tally, Watch};
use crate::state::Proxy;
use crate::stream::ClientStream;
use crate::transaction;
use pooler::registry::ClientInfo;
use router::{PoolMode, TenantId, Who};
use std::sync::atomic::Ordering;

/// What the front runtime hands to the main one: a socket whose ClientHello has been
/// read (the handshake continues from it), or a plaintext client with its startup
/// packet read.
enum Handoff {
    Tls {
        tcp: std::net::TcpStream,
        accepted: Box<rustls::server::Accepted>,
        sni: Option<String>,
        direct: bool,
    },
    Plain {
        tcp: std::net::TcpStream,
        startup: wire::startup::StartupMessage,
    },
}

/// Serves one accepted TCP connection to the end. Never panics on client input; every
/// rejection the client can still read is a FATAL ErrorResponse. `pending` counts it
/// in the pre-login phase until its password is proved (prelogin.rs). `peer` is the
/// socket's peer: behind a load balancer its PROXY protocol header is read first
/// (proxy_protocol.rs), and the client's address it gives is used from then on.
///
/// Runs on the front runtime (the accept loops' own thread) until the client has been
/// admitted: reading its first packets and, for TLS, its whole ClientHello (for the
/// server name) and the tenant's checks. Only then does the connection move to
/// `main`, where the rest of the TLS handshake, logins and relays run; so a storm of
/// connections that are refused (or shed) never queues ahead of established sessions.
/// Everything on the front waits for the socket to be readable, never polls.
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    (tcp, pending): (TcpStream, PendingSlot),
    peer: SocketAddr,
    id: u64,
    main: tokio::runtime::Handle,
    tracker: tokio_util::task::TaskTracker,
) {
    // Behind a balancer the client's address is known only once its PROXY protocol
    // header is read: `client_addr` is filled in then, `proxy_addr` is the balancer.
    let behind_balancer = proxy.config.proxy_protocol.at_accept(peer.ip()) == PeerKind::Balancer;
    let span = tracing::info_span!(
        "conn",
        id,
        client_addr = tracing::field::Empty,
        proxy_addr = tracing::field::Empty,
        tenant = tracing::field::Empty,
        role = tracing::field::Empty
    );
    if !behind_balancer {
        span.record("client_addr", tracing::field::display(peer));
    }
    let session_span = span.clone();
    async move {
        let _ = tcp.set_nodelay(true);
        let accepted = Instant::now();
        let deadline = accepted + proxy.config.login_timeout;
        let mut admission = Admission {
            pending: Some(pending),
            ..Admission::default()
        };
        match proxy.gates.enter_process() {
            Ok(slot) => admission.process = Some(slot),
            Err(refused) => admission.refusal = Some(refused),
        }
        let front = async {
            let mut tcp = tcp;
            let resolved =
                match proxy_protocol::resolve(&mut tcp, peer, &proxy.config.proxy_protocol).await {
                    Ok(resolved) => resolved,
                    Err(err) => {
                        // What else the peer sent already is read once (as at accept,
                        // prelogin::turn_away), so that closing does not reset the
                        // connection over unread bytes before the error is read.
                        let mut unread = [0u8; 1024];
                        let _ = tcp.try_read(&mut unread);
                        return Err((Some(ClientStream::Plain(tcp)), err));
                    }
                };
            let client = resolved.client;
            if behind_balancer {
                let span = tracing::Span::current();
                span.record("client_addr", tracing::field::display(client));
                if let Some(via) = resolved.via {
                    span.record("proxy_addr", tracing::field::display(via));
                }
            }
            // A balancer's connection is counted under its client's address now.
            if let Some(slot) = admission.pending.as_mut() {
                if let Err(err) = proxy.pending.key(slot, client.ip()) {
                    return Err((Some(ClientStream::Plain(tcp)), err));
                }
            }
            let mut first = resolved.first;
            if resolved.local {
                // The balancer's own connection: its health checks end here.
                let mut byte = [0u8; 1];
                match tcp.read(&mut byte).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => first = Some(byte[0]),
                }
            }
            let negotiated = match negotiate(tcp, first, proxy.tls.as_ref()).await? {
                Negotiated::Tls(hello) => {
                    let sni = hello.sni.as_deref();
                    at_client_hello(&proxy, sni, client.ip(), &mut admission).await;
                    if let Some(ClientError::ConnectRateLimited(tenant)) = &admission.refusal {
                        let storm = admission.gate.as_ref().is_some_and(|g| g.shed_refusal());
                        if storm {
                            return Err((None, ClientError::ConnectRateShed(tenant.clone())));
                        }
                    }
                    Negotiated::Tls(hello)
                }
                other => other,
            };
            Ok(Some((client, negotiated)))
        };
        let (client, negotiated) = match timeout_at(deadline, front).await {
            // Like Postgres: a client that never finishes its startup packet is dropped.
            Err(_) => return tracing::info!("login timeout before the startup packet"),
            Ok(Err((stream, err))) => {
                return refuse(&proxy, stream, &err, admission.tenant.as_ref()).await;
            }
            // Not a client, and not a refusal: no line at info, no count.
            Ok(Ok(None)) => return tracing::debug!("health check from the load balancer"),
            Ok(Ok(Some(resolved))) => resolved,
        };
        let handoff = match negotiated {
            Negotiated::Cancel { key, stream } => {
                return handle_cancel(&proxy, key, client, stream).await
            }
            Negotiated::Tls(ClientHello {
                tcp,
                accepted,
                sni,
                direct,
            }) => tcp.into_std().map(|tcp| Handoff::Tls {
                tcp,
                accepted,
                sni,
                direct,
            }),
            Negotiated::Startup {
                stream, startup, ..
            } => match stream {
                ClientStream::Plain(tcp) => {
                    tcp.into_std().map(|tcp| Handoff::Plain { tcp, startup })
                }
                ClientStream::Tls(_) => unreachable!("TLS is negotiated on the main runtime"),
            },
        };
        let handoff = match handoff {
            Ok(handoff) => handoff,
            Err(e) => return tracing::warn!(error = %e, "could not hand the connection over"),
        };
        let proxy = proxy.clone();
        tracker.spawn_on(
            async move { session(proxy, handoff, client, id, admission, accepted, deadline).await }
                .instrument(session_span),
            &main,
        );
    }
    .instrument(span)
    .await
}

/// The rest of a connection, on the main runtime: TLS handshake, login, relay.
/// `client`: the client's address (from the PROXY protocol header behind a balancer).
async fn session(
    proxy: Arc<Proxy>,
    handoff: Handoff,
    client: SocketAddr,
    id: u64,
    mut admission: Admission,
    accepted: Instant,
    deadline: Instant,
) {
    // A tenant's own host name: its certificate, its channel binding, its tenant.
    let mut host = None;
    let negotiated = match handoff {
        Handoff::Plain { tcp, startup } => match TcpStream::from_std(tcp) {
            Ok(tcp) => Ok(Negotiated::Startup {
                stream: ClientStream::Plain(tcp),
                startup,
                sni: None,
            }),
            Err(e) => return tracing::warn!(error = %e, "could not take the connection over"),
        },
        Handoff::Tls {
            tcp,
            accepted,
            sni,
            direct,
        } => {
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => return tracing::warn!(error = %e, "could not take the connection over"),
            };
            host = sni.as_deref().and_then(|name| proxy.hostnames.get(name));
            let tls = match &host {
                Some(host) => &host.tls,
                None => proxy
                    .tls
                    .as_ref()
                    .expect("TLS is wanted only when configured"),
            };
            let hello = ClientHello {
                tcp,
                accepted,
                sni,
                direct,
            };
            match timeout_at(deadline, Box::pin(tls_handshake(hello, tls))).await {
                Ok(result) => result,
                Err(_) => return tracing::info!("login timeout during the TLS handshake"),
            }
        }
    };
    let (mut stream, startup, sni) = match negotiated {
        Err((stream, err)) => {
            return Box::pin(refuse(&proxy, stream, &err, admission.tenant.as_ref())).await
        }
        Ok(Negotiated::Cancel { key, stream }) => {
            return Box::pin(handle_cancel(&proxy, key, client, stream)).await
        }
        Ok(Negotiated::Tls(_)) => unreachable!("the handshake is done"),
        Ok(Negotiated::Startup {
            stream,
            startup,
            sni,
        }) => (stream, startup, sni),
    };
    if console::wanted(&proxy, &startup, sni.as_deref()) {
        return Box::pin(run_console(
            &proxy, stream, &startup, client, admission, deadline,
        ))
        .await;
    }
    // The handshake and login futures are boxed (here and above), and so are the
    // relays below: each phase's state is allocated while it runs and freed after, so
    // an idle client's task holds only what its relay needs (see docs/transaction-mode.md
    // on memory per idle client).
    let queue_wait = admission.queue_wait.clone();
    let login = Box::pin(establish(
        &proxy,
        &mut stream,
        &startup,
        sni.as_deref(),
        host.as_deref(),
        client.ip(),
        &mut admission,
    ));
    let tenant = |a: &Admission| a.tenant.clone();
    let session = match login_within(deadline, &queue_wait, login).await {
        Ok(Ok(session)) => session,
        Ok(Err(err)) => {
            return Box::pin(refuse(
                &proxy,
                Some(stream),
                &err,
                tenant(&admission).as_ref(),
            ))
            .await
        }
        Err(_) => {
            let err = ClientError::LoginTimeout;
            return Box::pin(refuse(
                &proxy,
                Some(stream),
                &err,
                tenant(&admission).as_ref(),
            ))
            .await;
        }
    };
    drop(admission.login_slots);
    drop(startup);
    let mode = session.pool.settings().mode;
    let registered = proxy.pools.registry.client(ClientInfo {
        id,
        key: session.pool.key.clone(),
        addr: client,
        tls: stream.is_tls(),
        mode,
    });
    match &session.server {
        Some(server) => server.lend_to(&registered.entry),
        None => registered.entry.detached(),
    }
    let tally = &registered.entry.tally;
    let outcome = match mode {
        PoolMode::Session => Box::pin(run_session(&proxy, stream, session, tally)).await,
        PoolMode::Transaction => {
            Box::pin(transaction::run(
                &proxy,
                stream,
                session,
                id,
                &registered.entry,
                Vec::new(),
            ))
            .await
        }
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

/// A client of the admin console (console.rs): its login under the login deadline,
/// then its commands until it leaves.
async fn run_console(
    proxy: &Proxy,
    mut stream: ClientStream,
    startup: &wire::startup::StartupMessage,
    client: SocketAddr,
    mut admission: Admission,
    deadline: Instant,
) {
    let caller = match timeout_at(deadline, console::login(proxy, &mut stream, startup)).await {
        Ok(Ok(caller)) => caller,
        Ok(Err(err)) => return refuse(proxy, Some(stream), &err, None).await,
        Err(_) => return refuse(proxy, Some(stream), &ClientError::LoginTimeout, None).await,
    };
    // Logged in: out of the pre-login phase; the process slot stays while it is here.
    admission.pending = None;
    admission.login_slots.clear();
    tracing::info!(key = %caller.key_id, "admin console session started");
    let outcome = console::serve(proxy, stream, caller, client).await;
    tracing::info!(outcome, "admin console session closed");
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
    // Only SNI counts here: options and the user name are not read yet, and may name
    // another tenant than the default.
    let host = sni.and_then(|name| proxy.hostnames.get(name));
    let client = router::IdentifyClient {
        sni,
        host_tenant: host.as_ref().map(|h| h.tenant.as_str()),
        ..Default::default()
    };
    let identified = match router::identify(&proxy.config.identify, client, |_| false) {
        Ok(identified)
            if matches!(
                identified.source,
                router::TenantSource::Sni | router::TenantSource::Hostname
            ) =>
        {
            identified
        }
        _ => return,
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
    if !err.can_close_cleanly() {
        return;
    }
    let mut out = BytesMut::new();
    if err.can_tell_client() {
        err.to_response(&mut out);
    }
    // A client that stopped reading must not hold this task (or shutdown) forever.
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Carries out a CancelRequest (or drops it: cancel.rs), then closes its connection in
/// order, as Postgres does: after the cancel was sent on (libpq takes the close as
/// "processed"), and inside TLS with close_notify, so the client does not see a
/// truncated stream.
async fn handle_cancel(
    proxy: &Proxy,
    key: Option<wire::startup::ClientCancelKey>,
    client: SocketAddr,
    mut stream: ClientStream,
) {
    let fleet = proxy.fleet.as_deref();
    crate::fleet::carry_out(fleet, &proxy.cancels, &proxy.rejections, key, client.ip()).await;
    // Inside TLS the end is announced (close_notify). A plaintext connection is just
    // closed: the client has sent all it may, so the kernel ends it with a FIN, and a
    // shutdown first would only cost a storm of cancels one more system call each.
    if stream.is_tls() {
        let _ = tokio::time::timeout(REJECT_TIMEOUT, stream.shutdown()).await;
    }
}

/// Runs `login` until `deadline`; a login that has proved the password and queues for a
/// server connection by then (`queue_wait` set: the pool's `max_wait`) may run on up to
/// `max_wait` past it, so a full pool answers with its own 53300 after `max_wait_ms`, as
/// PgBouncer's `query_wait_timeout`, rather than the login timeout's 57014.
async fn login_within<F: std::future::Future + Unpin>(
    deadline: Instant,
    queue_wait: &std::sync::OnceLock<std::time::Duration>,
    mut login: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match timeout_at(deadline, &mut login).await {
        Err(elapsed) => match queue_wait.get() {
            Some(max_wait) => timeout_at(deadline + *max_wait, login).await,
            None => Err(elapsed),
        },
        done => done,
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
        mut settings_applied,
        settings,
        limits,
        gate,
        counted: _counted,
        ..
    } = session;
    let mut server = server.expect("a session-mode client always holds a server connection");
    let pool = server.pool().clone();
    // The session runs read-only while its tenant is over its disk quota: the relay
    // stops at rest whenever the watermark changes, and the setting follows (quota.rs).
    let mut read_only = false;
    let mut unread = bytes::BytesMut::new();
    let mut cancel_was_sent = false;
    let end = loop {
        let conn = server.conn();
        let watch = Watch {
            limits: &limits,
            gate: &gate,
            cancel: conn.cancel_key.map(|key| (conn.addr.clone(), key)),
            client_key: &cancel,
            read_only,
        };
        let end = relay(
            &mut stream,
            server.conn().stream_mut(),
            &gate.session_token(),
            &pool,
            tally,
            watch,
            std::mem::take(&mut unread),
        )
        .await;
        let RelayEnd::Quota {
            unread: rest,
            cancel_sent,
        } = end
        else {
            break end;
        };
        cancel_was_sent |= cancel_sent;
        let sql = if read_only {
            crate::quota::restore(&settings)
        } else {
            crate::quota::FORCE.to_owned()
        };
        match server.conn().simple_query(&sql).await {
            Ok(outcome) if outcome.error.is_none() => {}
            Ok(outcome) => {
                let detail = outcome.error.map(|e| e.message).unwrap_or_default();
                break RelayEnd::ServerGone(format!("{sql} failed: {detail}"));
            }
            Err(e) => break RelayEnd::ServerGone(e.to_string()),
        }
        read_only = !read_only;
        // The connection needs its DISCARD ALL when the client leaves.
        settings_applied = true;
        tracing::info!(read_only, "session follows its tenant's disk watermark");
        unread = rest;
    };
    // Forget the key before the server connection can go to another client, so a late
    // cancel from this one can never hit that client's query; a connection a cancel was
    // sent to is closed rather than reused (the signal may still land; see cancel.rs).
    let cancelled = cancel.set_target(None) || cancel_was_sent;
    drop(cancel);
    let reusable = |release: Release| match release {
        Release::AtReadyForQuery { .. } if cancelled => Release::Close,
        other => other,
    };
    match end {
        RelayEnd::ClientLeft(release) => {
            let release = match reusable(release) {
                Release::AtReadyForQuery { status, discard } => Release::AtReadyForQuery {
                    status,
                    discard: discard || settings_applied,
                },
                other => other,
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
        RelayEnd::ServerEnded(said) => {
            tracing::warn!(said, "the server ended the session");
            drop(server);
            // Its own FATAL was the client's last message, as from Postgres.
            let _ = tokio::time::timeout(REJECT_TIMEOUT, stream.shutdown()).await;
            format!("the server ended the session: {said}")
        }
        RelayEnd::IdleInTransaction(release) => {
            server.release(reusable(release)).await;
            let err = ClientError::IdleInTransactionTimeout;
            reject(Some(stream), &err).await;
            err.to_string()
        }
        RelayEnd::IdleSession(release) => {
            server.release(reusable(release)).await;
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
        RelayEnd::Quota { .. } => unreachable!("handled in the loop above"),
        RelayEnd::Terminated => {
            // The server may be mid-query: cancel it and close the connection.
            server.release(Release::Dirty).await;
            let err = terminated(proxy, &gate);
            reject(Some(stream), &err).await;
            err.to_string()
        }
    }
}
