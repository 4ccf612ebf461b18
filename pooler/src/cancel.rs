//! Sending a CancelRequest to a backend.

use std::time::Duration;

use bytes::BytesMut;
use router::BackendAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wire::startup::CancelKey;

/// A cancel that takes longer than this is abandoned.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the backend at `addr` to cancel what the session with `key` is running.
/// Postgres answers by closing the connection; a cancel request is authenticated by
/// its key alone and bypasses pg_hba, so plaintext is what libpq sends too.
pub async fn send_cancel(addr: &BackendAddr, key: CancelKey) -> std::io::Result<()> {
    let mut packet = BytesMut::new();
    wire::startup::encode_cancel(key, &mut packet);
    let work = async {
        match addr {
            BackendAddr::Tcp { host, port } => {
                let mut s = TcpStream::connect((host.as_str(), *port)).await?;
                s.write_all(&packet).await?;
                let _ = s.read(&mut [0u8; 1]).await;
            }
            BackendAddr::Unix { dir, port } => {
                let mut s = UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
                s.write_all(&packet).await?;
                let _ = s.read(&mut [0u8; 1]).await;
            }
        }
        Ok(())
    };
    tokio::time::timeout(CANCEL_TIMEOUT, work)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel request timed out")
        })?
}
