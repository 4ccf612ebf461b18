//! Probes of a tenant's backend at its address, without logging in: whether it takes
//! a connection ([`listens`], the supervisor's check of backends it does not run) and
//! whether it is past its startup ([`takes_logins`], a woken backend's readiness).

use std::time::Duration;

/// How long a probe may take before the backend counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the backend at `addr` takes a connection (closed at once, before any
/// startup packet: Postgres logs nothing for that).
pub(crate) async fn listens(addr: &router::BackendAddr) -> Result<(), String> {
    within_probe_timeout(addr, async { connect(addr).await.map(drop) }).await
}

/// Whether the backend at `addr` gets past its startup (its socket listens before it
/// takes logins): a startup packet for a role that need not exist is answered with
/// anything but 57P03 "the database system is starting up". The answer is read into
/// a fixed buffer and the connection closed.
pub(crate) async fn takes_logins(addr: &router::BackendAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within_probe_timeout(addr, async {
        let mut stream = connect(addr).await?;
        let params = b"user\0sluice_probe\0database\0postgres\0\0";
        let mut packet = Vec::with_capacity(8 + params.len());
        packet.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
        packet.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        packet.extend_from_slice(params);
        stream.write_all(&packet).await?;
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).await?;
        let starting =
            answer[..n].first() == Some(&b'E') && answer[..n].windows(7).any(|w| w == b"C57P03\0");
        if starting {
            Err(std::io::Error::other("the database system is starting up"))
        } else {
            Ok(())
        }
    })
    .await
}

/// A stream both ways, TCP or unix socket.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connection to the backend at `addr`.
async fn connect(addr: &router::BackendAddr) -> std::io::Result<Box<dyn Io>> {
    Ok(match addr {
        router::BackendAddr::Tcp { host, port } => {
            Box::new(tokio::net::TcpStream::connect((host.as_str(), *port)).await?)
        }
        router::BackendAddr::Unix { dir, port } => {
            Box::new(tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)
        }
    })
}

/// `attempt` against the backend at `addr`, within [`PROBE_TIMEOUT`].
async fn within_probe_timeout(
    addr: &router::BackendAddr,
    attempt: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!(
            "connecting to {addr}: no answer within {PROBE_TIMEOUT:?}"
        )),
    }
}
