//! Picking TCP ports for local clusters.

use std::net::{Ipv4Addr, TcpListener};

/// Asks the OS for a free TCP port on 127.0.0.1 (bind port 0, read it back, close).
///
/// Another process may take the port before the caller binds it; callers that cannot
/// tolerate that should retry on "address in use".
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
