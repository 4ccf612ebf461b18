//! Listening: binding the addresses, the accept loops, and graceful shutdown. Each
//! accepted connection is handed to the session pipeline (session.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::arrival::serve_arrival;
use crate::config::PeerKind;
use crate::error::ClientError;
use crate::prelogin::turn_away;
use crate::session::serve_connection;
use crate::state::Proxy;
use crate::successor::MovingClient;
use tokio::sync::mpsc::UnboundedReceiver;

/// Serves `listeners` until `shutdown` fires; then stops accepting, lets clients finish
/// for `shutdown_grace`, tells the rest 57P01, and returns once every task is done.
///
/// Accepting, and each connection until it is admitted, runs on a front runtime of its
/// own (one thread); admitted connections move to the runtime this is called on. A
/// connection storm is then refused on the front thread without queueing ahead of the
/// established sessions' relays (see `session::serve_connection`). A connection over
/// the pre-login caps (`max_pending_logins`, per process and per address) is refused
/// by the accept loop itself (prelogin.rs).
///
/// `arrivals` are clients moved here from the process this one replaced
/// (`arrival.rs`), served beside the accepted ones until shutdown.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<TcpListener>,
    arrivals: Option<UnboundedReceiver<MovingClient>>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let main = tokio::runtime::Handle::current();
    if let Some(mut arrivals) = arrivals {
        let (proxy, tracker, stop) = (proxy.clone(), tracker.clone(), shutdown.clone());
        tracker.clone().spawn(async move {
            loop {
                let moving = tokio::select! {
                    _ = stop.cancelled() => return,
                    moving = arrivals.recv() => match moving {
                        Some(moving) => moving,
                        None => return,
                    },
                };
                let id = proxy.next_connection_id();
                tracker.spawn(serve_arrival(proxy.clone(), moving, id));
            }
        });
    }
    let front = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-front")
        .enable_all()
        .build()
        .expect("starting the front runtime");
    for listener in listeners {
        let listener = match listener.into_std() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot move a listener to the front runtime");
                continue;
            }
        };
        tracker.spawn_on(
            accept_loop(
                proxy.clone(),
                listener,
                (tracker.clone(), main.clone()),
                shutdown.clone(),
            ),
            front.handle(),
        );
    }
    shutdown.cancelled().await;
    tracker.close();
    let grace = proxy.config.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "grace period over; terminating remaining clients"
        );
        proxy.terminate.cancel();
        // Every task answers `terminate` promptly; this bound only guards against a
        // bug keeping the process alive forever.
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish after termination; exiting anyway");
        }
    }
    front.shutdown_background();
    proxy.pools.close_all_idle().await;
    for (pool, totals) in proxy.pools.counts() {
        tracing::info!(%pool, ?totals, "pool totals");
    }
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: std::net::TcpListener,
    (tracker, main): (TaskTracker, tokio::runtime::Handle),
    shutdown: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(error = %e, "cannot listen on the front runtime"),
    };
    // Logged as text: `127.0.0.1:6432`, or what went wrong reading it.
    let local = listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    tracing::info!(addr = %local, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Behind a load balancer (`proxy_protocol`), a connection from anyone
                // else is refused here; a balancer's connections are counted under
                // their clients' addresses once their headers are read (prelogin.rs).
                let entered = match proxy.config.proxy_protocol.at_accept(peer.ip()) {
                    PeerKind::Direct => proxy.pending.enter(peer.ip()),
                    PeerKind::Balancer => proxy.pending.enter_unkeyed(),
                    PeerKind::Refused => Err(ClientError::UntrustedProxy { sent_header: false }),
                };
                // Over the pre-login caps: told and closed here, without a task.
                let pending = match entered {
                    Ok(pending) => pending,
                    Err(refused) => {
                        if let Some(reason) = refused.reason() {
                            proxy.rejections.record(router::Who::Nobody, reason);
                        }
                        tracing::debug!(peer_addr = %peer, error = %refused, "client rejected at accept");
                        turn_away(tcp, &refused);
                        continue;
                    }
                };
                let id = proxy.next_connection_id();
                tracker.spawn(serve_connection(
                    proxy.clone(),
                    (tcp, pending),
                    peer,
                    id,
                    main.clone(),
                    tracker.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(addr = %local, "stopped accepting");
}

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so
/// that a new Sluice can bind the address while the old one still listens on it (for a
/// restart without a gap; the kernel only lets processes of the same user share a
/// port). Alone on the address it behaves like any listener. Backlog 1024, as tokio's.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}
