//! Restarting without a gap: a new `sluice serve` takes over the listening sockets of
//! the process already serving the same proxy address, so no connection waiting in a
//! listen queue is lost when the old process stops (docs/fleet.md, "Upgrading without
//! dropping clients").
//!
//! The process that holds the listeners serves them on an abstract unix socket named
//! after its first proxy address (`@sluice/handover/127.0.0.1:6432`; abstract, so no file
//! in a data_dir is needed and the name vanishes with the process). A new process asks
//! there first: the old one checks that the asker runs as its own user
//! (`SO_PEERCRED`), sends the addresses and, with `SCM_RIGHTS`, the listening sockets
//! themselves (the proxy's, the admin and the fleet listener), then stops serving the
//! name, which the new process takes for the next restart. Both processes now accept from the same
//! sockets (the same queues), until the old one is told to stop (SIGTERM): it stops
//! accepting and closes its copies, and the sockets stay open in the new process, their
//! queues untouched. When nobody answers, the new process binds as usual, with
//! `SO_REUSEPORT` (`proxy::listen`), so it can also start beside an old process that does
//! not hand over.
//!
//! The connection stays open after the exchange: once the old process drains, its idle
//! transaction-mode clients go through it to the new one ([`clients`]).

mod clients;

pub use clients::receive_clients;
use clients::{send_clients, successor_alive};

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio_util::sync::CancellationToken;

/// At most this many listening sockets go over in one handover.
const MAX_LISTENERS: usize = 32;
/// The first line of the message, so a stranger's answer is not taken for one.
const MAGIC: &str = "sluice-handover 1";
/// How long a side waits for the other during the exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The handover name of the process serving `key`, the first proxy address with a
/// fixed port: none for an OS-assigned port, which no other process can share.
pub fn name_for(listen: &[SocketAddr]) -> Option<SocketAddr> {
    listen.first().copied().filter(|addr| addr.port() != 0)
}

fn endpoint(key: SocketAddr) -> std::io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("sluice/handover/{key}"))
}

/// The listening sockets taken over from the process serving `key`, by local address.
#[derive(Default)]
pub struct TakenOver {
    listeners: Vec<(SocketAddr, TcpListener)>,
    /// The handover connection, kept: the old process's idle transaction-mode clients
    /// come through it once it drains.
    pub clients: Option<UnixStream>,
}

impl TakenOver {
    /// Asks the process serving `key` (if any) for its listening sockets, keeping those
    /// on the `wanted` addresses (and telling the old process which). Nobody there is no
    /// error: nothing is taken over. A failed exchange is logged and treated the same
    /// way (the new process then binds beside the old with `SO_REUSEPORT`).
    pub async fn ask(key: Option<SocketAddr>, wanted: Vec<SocketAddr>) -> TakenOver {
        let Some(key) = key else {
            return TakenOver::default();
        };
        match tokio::task::spawn_blocking(move || ask(key, &wanted)).await {
            Ok(Ok((listeners, clients))) => {
                if !listeners.is_empty() {
                    let addrs: Vec<String> =
                        listeners.iter().map(|(addr, _)| addr.to_string()).collect();
                    tracing::info!(
                        listeners = %addrs.join(", "),
                        "took over the listening sockets of the running Sluice"
                    );
                }
                TakenOver { listeners, clients }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "handover from the running Sluice failed; binding anew");
                TakenOver::default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover from the running Sluice failed; binding anew");
                TakenOver::default()
            }
        }
    }

    /// Whether any socket was taken over.
    pub fn any(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// The socket taken over for `addr`, else a new one bound there ([`proxy::listen`]).
    pub fn listener(&mut self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        if let Some(i) = self.listeners.iter().position(|(a, _)| *a == addr) {
            let (_, listener) = self.listeners.swap_remove(i);
            listener.set_nonblocking(true)?;
            return Ok(listener);
        }
        proxy::listen(addr)
    }
}

/// The new process's side of the exchange (blocking): receives the sockets, keeps those
/// on `wanted` addresses (never a port 0 one, which no two processes share) and says
/// which, one address per line.
type Asked = (Vec<(SocketAddr, TcpListener)>, Option<UnixStream>);

fn ask(key: SocketAddr, wanted: &[SocketAddr]) -> std::io::Result<Asked> {
    let stream = match UnixStream::connect_addr(&endpoint(key)?) {
        Ok(stream) => stream,
        // Nobody serves the name: the first process on this address.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok((Vec::new(), None))
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    same_user(&stream)?;
    let mut text = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let text = std::str::from_utf8(&text[..received.bytes])
        .map_err(|_| invalid("the handover message is not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(invalid(
            "the handover message does not start with its magic line",
        ));
    }
    let addrs: Vec<SocketAddr> = lines
        .map(|l| {
            l.parse()
                .map_err(|_| invalid("a bad address in the handover"))
        })
        .collect::<std::io::Result<_>>()?;
    if addrs.len() != fds.len() {
        return Err(invalid("the handover's addresses and sockets do not match"));
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for (addr, fd) in addrs.into_iter().zip(fds) {
        if !rustix::net::sockopt::socket_acceptconn(&fd)? {
            return Err(invalid("a handed-over socket is not listening"));
        }
        let listener = TcpListener::from(fd);
        if listener.local_addr()? != addr {
            return Err(invalid("a handed-over socket is not on its address"));
        }
        if addr.port() != 0 && wanted.contains(&addr) {
            listeners.push((addr, listener));
        }
    }
    let kept: String = listeners
        .iter()
        .map(|(addr, _)| format!("{addr}\n"))
        .collect();
    (&stream).write_all(format!("{MAGIC}\n{kept}.\n").as_bytes())?;
    // The old process says (one byte) once it no longer serves the name, so that this
    // one can take it.
    let mut released = [0u8; 1];
    (&stream).read_exact(&mut released)?;
    stream.set_read_timeout(None)?;
    Ok((listeners, Some(stream)))
}

/// The process holding the listeners: serves them to the next process on its
/// handover name, once, until shutdown.
pub struct Offer {
    key: SocketAddr,
    unix: UnixListener,
    /// Copies of the listening sockets (the same sockets the accept loops use).
    listeners: Vec<TcpListener>,
}

impl Offer {
    /// Takes the handover name for `key` (waiting up to 5 s for the process that had
    /// it to let it go) with copies of `listeners`. `None` (logged) when the name stays
    /// taken: restarts then go without a handover.
    pub async fn new(key: Option<SocketAddr>, listeners: &[&TcpListener]) -> Option<Offer> {
        let key = key?;
        let copies = match listeners
            .iter()
            .take(MAX_LISTENERS)
            .map(|l| l.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(copies) => copies,
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the listeners for a handover");
                return None;
            }
        };
        let addr = endpoint(key).ok()?;
        let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(unix) => {
                    return Some(Offer {
                        key,
                        unix,
                        listeners: copies,
                    })
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %key, "cannot serve the handover name; a restart beside this process binds anew");
                    return None;
                }
            }
        }
    }

    /// Serves the one handover, or stops at `shutdown`: then the copies are closed, so
    /// that the listeners close with the accept loops (and a process started later binds
    /// anew). `shared` is told the addresses the new process kept.
    ///
    /// After the handover the connection stays open: once this process drains
    /// (`shutdown`), its idle transaction-mode clients go through it
    /// (`proxy::successor`).
    pub async fn serve(
        self,
        shutdown: CancellationToken,
        shared: tokio::sync::oneshot::Sender<Vec<SocketAddr>>,
        proxy: std::sync::Arc<proxy::Proxy>,
    ) {
        let Offer {
            key,
            unix,
            listeners,
        } = self;
        let unix = match unix
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(unix))
        {
            Ok(unix) => unix,
            Err(e) => return tracing::warn!(error = %e, "cannot serve the handover name"),
        };
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = unix.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "handover: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "handover: cannot use the connection");
                    continue;
                }
            };
            let copies: std::io::Result<Vec<TcpListener>> =
                listeners.iter().map(TcpListener::try_clone).collect();
            let sent = tokio::task::spawn_blocking(move || {
                copies
                    .and_then(|c| offer(&stream, &c))
                    .map(|kept| (stream, kept))
            })
            .await;
            match sent {
                Ok(Ok((stream, kept))) => {
                    let _ = shared.send(kept);
                    // The name is let go before the new process is told it may take it.
                    drop(unix);
                    if let Err(e) = (&stream).write_all(b".") {
                        tracing::warn!(error = %e, "handover: the new process left");
                        return;
                    }
                    let probe = match stream.try_clone() {
                        Ok(probe) => probe,
                        Err(e) => return tracing::warn!(error = %e, "handover: no probe"),
                    };
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    proxy.successor.set(tx);
                    std::thread::Builder::new()
                        .name("sluice-handover".into())
                        .spawn(move || send_clients(stream, rx))
                        .expect("starting the handover thread");
                    tracing::info!(
                        %key,
                        "handed the listening sockets over to a new Sluice; both accept \
                         until this one is stopped"
                    );
                    // The copies stay open until shutdown: this process still accepts.
                    shutdown.cancelled().await;
                    if successor_alive(&probe) {
                        proxy.successor.start_moving();
                    } else {
                        tracing::warn!(
                            "the process that took the listeners over is gone: clients \
                             stay here until they leave or the grace period ends"
                        );
                    }
                    drop(listeners);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "handover refused or failed"),
                Err(e) => tracing::warn!(error = %e, "handover failed"),
            }
        }
    }
}

/// The old process's side of the exchange (blocking): the addresses, one per line
/// after the magic line, and the sockets in the same order; then the addresses the new
/// process kept.
fn offer(mut stream: &UnixStream, listeners: &[TcpListener]) -> std::io::Result<Vec<SocketAddr>> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    same_user(stream)?;
    let mut text = String::from(MAGIC);
    for listener in listeners {
        text.push('\n');
        text.push_str(&listener.local_addr()?.to_string());
    }
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(invalid("too many listeners for one handover"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != text.len() {
        return Err(invalid("the handover message was cut short"));
    }
    // The reply ends with a line of one dot (the connection stays open).
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n.\n") {
        if reply.len() > 4096 {
            return Err(invalid("the reply is too long"));
        }
        stream.read_exact(&mut byte)?;
        reply.push(byte[0]);
    }
    let reply = String::from_utf8(reply).map_err(|_| invalid("the reply is not text"))?;
    let mut lines = reply.lines();
    if lines.next() != Some(MAGIC) {
        return Err(invalid("the new process did not say which sockets it kept"));
    }
    lines
        .take_while(|l| *l != ".")
        .map(|l| l.parse().map_err(|_| invalid("a bad address in the reply")))
        .collect()
}

/// Only a process of this user may take the sockets, or give them.
fn same_user(stream: &UnixStream) -> std::io::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(stream)?;
    if peer.uid != rustix::process::geteuid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the handover peer (pid {}) runs as another user",
                peer.pid.as_raw_nonzero()
            ),
        ));
    }
    Ok(())
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}
