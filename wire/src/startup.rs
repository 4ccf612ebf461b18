//! The untyped packets of the startup phase.
//!
//! Before authentication a client sends packets with no tag: a length that
//! counts itself, then a 32-bit code that is either a protocol version
//! (StartupMessage) or one of the special request codes. Limits and error
//! cases follow Postgres' `ProcessStartupPacket`.

use bytes::{BufMut, BytesMut};

use crate::put;

/// Largest startup packet Postgres accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Smallest startup packet: length plus code.
pub const MIN_STARTUP_LEN: usize = 8;
/// Code of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80877103;
/// Code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
/// Code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Protocol 3.0, the version Sluice speaks to servers.
pub const PROTOCOL_3_0: u32 = 3 << 16;
/// Protocol 3.2 (PostgreSQL 18): BackendKeyData and CancelRequest carry a secret of
/// [`MIN_SECRET_LEN`] to [`MAX_SECRET_LEN`] bytes; nothing else changed.
pub const PROTOCOL_3_2: u32 = (3 << 16) | 2;
/// Shortest cancel secret (protocol 3.0's, and the least 3.2 allows).
pub const MIN_SECRET_LEN: usize = 4;
/// Longest cancel secret protocol 3.2 allows.
pub const MAX_SECRET_LEN: usize = 256;
/// The secret Sluice gives protocol 3.2 clients (as long as PostgreSQL 18's).
pub const LONG_SECRET_LEN: usize = 32;
/// A CancelRequest without its secret: length, code, process id.
const CANCEL_HEAD_LEN: usize = 12;

/// One startup-phase packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption (Sluice declines it).
    GssEncRequest,
    /// The client asks to cancel the query of another session.
    Cancel(CancelRequest),
    /// The client opens a session.
    Startup(StartupMessage),
}

/// The key identifying a session for cancellation (BackendKeyData).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id as told to the client.
    pub pid: i32,
    /// Secret as told to the client.
    pub secret: i32,
}

/// The key of a protocol 3.2 client: Sluice's 32-byte secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LongKey {
    pub pid: i32,
    pub secret: [u8; LONG_SECRET_LEN],
}

/// A cancel key as Sluice hands them to clients: 4 bytes of secret for protocol 3.0,
/// 32 for 3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientCancelKey {
    Short(CancelKey),
    Long(LongKey),
}

impl ClientCancelKey {
    /// The process id the client was told.
    pub fn pid(&self) -> i32 {
        match self {
            ClientCancelKey::Short(key) => key.pid,
            ClientCancelKey::Long(key) => key.pid,
        }
    }

    /// The key of a process id and secret, if the secret has a length Sluice hands out.
    pub fn from_parts(pid: i32, secret: &[u8]) -> Option<ClientCancelKey> {
        if let Ok(short) = <[u8; 4]>::try_from(secret) {
            return Some(ClientCancelKey::Short(CancelKey {
                pid,
                secret: i32::from_be_bytes(short),
            }));
        }
        let secret = <[u8; LONG_SECRET_LEN]>::try_from(secret).ok()?;
        Some(ClientCancelKey::Long(LongKey { pid, secret }))
    }

    /// Appends a CancelRequest for this key.
    pub fn encode_cancel(&self, out: &mut BytesMut) {
        match self {
            ClientCancelKey::Short(key) => encode_cancel(*key, out),
            ClientCancelKey::Long(key) => encode_cancel_secret(key.pid, &key.secret, out),
        }
    }
}

/// A CancelRequest as read: a process id and a secret of [`MIN_SECRET_LEN`] to
/// [`MAX_SECRET_LEN`] bytes (4 from a protocol 3.0 client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    pub secret: Vec<u8>,
}

impl CancelRequest {
    /// The key it names, if its secret has a length Sluice hands out (4 or 32 bytes);
    /// `None`: no client of Sluice's has it.
    pub fn key(&self) -> Option<ClientCancelKey> {
        ClientCancelKey::from_parts(self.pid, &self.secret)
    }
}

/// A StartupMessage: protocol version and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Always 3.
    pub major: u16,
    /// Any minor version; the proxy negotiates down to what it supports.
    pub minor: u16,
    /// Parameters in the order sent, keys unique; `_pq_.` options included.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of parameter `key`, if sent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The role name (`user`), which [`parse`] guarantees is present.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database, defaulting to the user name as Postgres does when it is
    /// absent or empty.
    pub fn database(&self) -> Option<&str> {
        match self.get("database") {
            Some(db) if !db.is_empty() => Some(db),
            _ => self.user(),
        }
    }
}

/// Why a startup packet was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum StartupError {
    /// The length field is outside `MIN_STARTUP_LEN..=MAX_STARTUP_LEN`.
    #[error("invalid length of startup packet: {0}")]
    BadLength(usize),
    /// The bytes given do not match the length field.
    #[error("startup packet length {declared} does not match the {actual} bytes received")]
    LengthMismatch {
        /// Length announced by the packet.
        declared: usize,
        /// Bytes actually passed to [`parse`].
        actual: usize,
    },
    /// A special request with the wrong size.
    #[error("invalid length {len} for a {what}")]
    BadRequestLength {
        /// Which request.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A protocol version other than 3.x.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.x")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// A string ran past the end of the packet.
    #[error("invalid startup packet layout: missing NUL terminator")]
    MissingTerminator,
    /// A parameter name with no value after it.
    #[error("invalid startup packet layout: parameter {0:?} has no value")]
    OddParams(String),
    /// Bytes after the final terminator.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    TrailingBytes,
    /// A name or value that is not UTF-8.
    #[error("startup packet parameter is not valid UTF-8")]
    NonUtf8,
    /// A parameter sent twice.
    #[error("duplicate startup parameter {0:?}")]
    DuplicateKey(String),
    /// No (or an empty) `user` parameter.
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
}

/// Reads the 4-byte length of a startup packet.
///
/// Returns the length (which includes the 4 length bytes) once it is known to
/// be within `MIN_STARTUP_LEN..=MAX_STARTUP_LEN`, so the caller can read the
/// rest into a buffer of that size without trusting the peer further.
pub fn parse_len(header: [u8; 4]) -> Result<usize, StartupError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if (MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
        Ok(len)
    } else {
        Err(StartupError::BadLength(len))
    }
}

/// Parses a whole packet, including its 4-byte length prefix, as read.
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let (len, rest) = split_u32(packet).ok_or(StartupError::BadLength(packet.len()))?;
    let declared = parse_len(len.to_be_bytes())?;
    if declared != packet.len() {
        return Err(StartupError::LengthMismatch {
            declared,
            actual: packet.len(),
        });
    }
    let (code, body) = split_u32(rest).ok_or(StartupError::BadLength(packet.len()))?;
    let exact = |what, want: usize| {
        if packet.len() == want {
            Ok(())
        } else {
            Err(StartupError::BadRequestLength {
                what,
                len: packet.len(),
            })
        }
    };
    match code {
        SSL_REQUEST_CODE => {
            exact("SSLRequest", MIN_STARTUP_LEN).map(|()| StartupPacket::SslRequest)
        }
        GSSENC_REQUEST_CODE => {
            exact("GSSENCRequest", MIN_STARTUP_LEN).map(|()| StartupPacket::GssEncRequest)
        }
        CANCEL_REQUEST_CODE => {
            // Length, code, process id, then the secret: 4 bytes (3.0) up to 256 (3.2).
            let secret_len = packet.len().saturating_sub(CANCEL_HEAD_LEN);
            if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret_len) {
                return Err(StartupError::BadRequestLength {
                    what: "CancelRequest",
                    len: packet.len(),
                });
            }
            let (pid, secret) = split_u32(body).ok_or(StartupError::MissingTerminator)?;
            Ok(StartupPacket::Cancel(CancelRequest {
                pid: pid as i32,
                secret: secret.to_vec(),
            }))
        }
        version => parse_startup(version, body).map(StartupPacket::Startup),
    }
}

/// Parses the version and parameter list of a StartupMessage.
fn parse_startup(version: u32, mut body: &[u8]) -> Result<StartupMessage, StartupError> {
    let major = (version >> 16) as u16;
    let minor = (version & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let key = take_cstr(&mut body)?;
        if key.is_empty() {
            break;
        }
        if body.is_empty() {
            return Err(StartupError::OddParams(key.to_owned()));
        }
        let value = take_cstr(&mut body)?;
        if params.iter().any(|(k, _)| k == key) {
            return Err(StartupError::DuplicateKey(key.to_owned()));
        }
        params.push((key.to_owned(), value.to_owned()));
    }
    if !body.is_empty() {
        return Err(StartupError::TrailingBytes);
    }
    let message = StartupMessage {
        major,
        minor,
        params,
    };
    match message.user() {
        Some(user) if !user.is_empty() => Ok(message),
        _ => Err(StartupError::MissingUser),
    }
}

/// Splits a big-endian `u32` off the front of `bytes`.
fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// Takes a NUL-terminated UTF-8 string off the front of `body`.
fn take_cstr<'a>(body: &mut &'a [u8]) -> Result<&'a str, StartupError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::MissingTerminator)?;
    let (s, rest) = body.split_at(nul);
    *body = &rest[1..];
    std::str::from_utf8(s).map_err(|_| StartupError::NonUtf8)
}

/// Appends a protocol 3.0 StartupMessage with `params` (e.g. `user`,
/// `database`, `application_name`).
pub fn encode_startup(params: &[(&str, &str)], out: &mut BytesMut) {
    encode_startup_version(PROTOCOL_3_0, params, out);
}

/// Appends a StartupMessage asking for protocol `version` (`3 << 16 | minor`).
pub fn encode_startup_version(version: u32, params: &[(&str, &str)], out: &mut BytesMut) {
    put::untagged(out, |out| {
        out.put_u32(version);
        for (key, value) in params {
            put::cstr(out, key);
            put::cstr(out, value);
        }
        out.put_u8(0);
    });
}

/// Appends a CancelRequest for `key` (protocol 3.0).
pub fn encode_cancel(key: CancelKey, out: &mut BytesMut) {
    encode_cancel_secret(key.pid, &key.secret.to_be_bytes(), out);
}

/// Appends a CancelRequest for process `pid` with `secret` (protocol 3.2: any length
/// the client was given).
pub fn encode_cancel_secret(pid: i32, secret: &[u8], out: &mut BytesMut) {
    put::untagged(out, |out| {
        out.put_u32(CANCEL_REQUEST_CODE);
        out.put_i32(pid);
        out.put_slice(secret);
    });
}

#[cfg(test)]
mod tests;
