//! The clients of a restart: after the listener handover, the old process sends its idle
//! transaction-mode clients over the same connection (`proxy::successor`), one message
//! each: the client's socket attached (`SCM_RIGHTS`) to a 4-byte length, then its
//! encoded session.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use proxy::successor::MovingClient;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// A moved client's encoded session is never larger (its statement text, and the rest).
const MAX_SESSION: usize = proxy::successor::MAX_MOVED_STATEMENTS + (1 << 20);
/// How long sending one client may block before the old process gives up on it.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the new process still holds its end of the handover connection (it sends
/// nothing on it, so anything but "no data yet" means it is gone).
pub(super) fn successor_alive(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        rustix::net::recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT),
        Err(rustix::io::Errno::AGAIN)
    )
}

/// The old process's side after the handover (a thread of its own): each moving client
/// as one message, its socket attached (`SCM_RIGHTS`) to a 4-byte length, then its
/// session; `done` tells the client's task whether it went.
pub(super) fn send_clients(
    stream: UnixStream,
    mut clients: tokio::sync::mpsc::UnboundedReceiver<MovingClient>,
) {
    let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
    while let Some(mut client) = clients.blocking_recv() {
        let sent = send_client(&stream, &client);
        if let Err(e) = &sent {
            tracing::warn!(error = %e, "handover: a client could not be sent");
        }
        if let Some(done) = client.done.take() {
            let _ = done.send(sent);
        }
    }
}

fn send_client(stream: &UnixStream, client: &MovingClient) -> std::io::Result<()> {
    let mut message = (client.state.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&client.state);
    let fds = [client.tcp.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&message)],
        &mut control,
        SendFlags::empty(),
    )?;
    // A blocking send is whole unless a signal cut it short: the rest follows plainly.
    let mut out = stream;
    out.write_all(&message[sent..])
}

/// The new process's side: each client the old one sends, to the proxy (`arrivals`).
/// Ends when the old process closes the connection (it exited).
pub fn receive_clients(
    stream: UnixStream,
    arrivals: tokio::sync::mpsc::UnboundedSender<MovingClient>,
) {
    loop {
        match receive_client(&stream) {
            Ok(Some(client)) => {
                if arrivals.send(client).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                return tracing::warn!(error = %e, "handover: receiving clients failed");
            }
        }
    }
}

fn receive_client(stream: &UnixStream) -> std::io::Result<Option<MovingClient>> {
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let mut input = stream;
    input.read_exact(&mut header[received.bytes..])?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_SESSION {
        return Err(invalid("a moved client's session is too large"));
    }
    let mut state = vec![0u8; len];
    input.read_exact(&mut state)?;
    let mut fds = fds.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err(invalid("a moved client came without exactly one socket"));
    };
    Ok(Some(MovingClient {
        tcp: std::net::TcpStream::from(fd),
        state,
        done: None,
    }))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}
