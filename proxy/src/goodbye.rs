//! Ending a client's session from outside, as both pipelines do it (session mode in
//! session.rs, transaction mode in transaction.rs): the error the client is told, and
//! how long Sluice tries to tell it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admit::TenantGate;
use crate::error::ClientError;
use crate::state::Proxy;
use crate::stream::ClientStream;

/// How long Sluice tries to tell a departing client why.
pub(crate) const REJECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most a departing client's unread input is drained before its socket is closed.
const MAX_LINGER: usize = 4 << 20;

/// Tells a client why its session ends (`last`, an ErrorResponse) and closes its side
/// in order. Then reads and drops what the client is still sending, until its EOF
/// (within [`REJECT_TIMEOUT`] and [`MAX_LINGER`] bytes in all): a socket closed with
/// unread input is reset, and a reset can destroy the error before the client reads
/// it (a client refused in the middle of a large message is still writing it).
pub(crate) async fn tell_and_close(stream: &mut ClientStream, last: &[u8]) {
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(last).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        let mut scratch = [0u8; 8192];
        let mut drained = 0;
        while drained < MAX_LINGER {
            match stream.read(&mut scratch).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Why a session was ended from outside: Sluice's shutdown, or its tenant's
/// suspension.
pub(crate) fn terminated(proxy: &Proxy, gate: &TenantGate) -> ClientError {
    if proxy.terminate.is_cancelled() {
        ClientError::Terminating("Sluice is shutting down")
    } else if gate.was_killed() {
        ClientError::Killed
    } else {
        ClientError::TenantTerminated(gate.id.to_string())
    }
}
