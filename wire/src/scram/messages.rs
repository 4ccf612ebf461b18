//! Parsing and formatting of the four SCRAM messages.
//!
//! Every parser takes bytes from the peer and returns a [`ScramError`] for
//! anything unexpected; none of them indexes blindly or panics.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

use super::error::ScramError;

/// Raw nonce length, as Postgres (`SCRAM_RAW_NONCE_LEN`).
const RAW_NONCE_LEN: usize = 18;

/// A fresh random nonce, base64-encoded (all printable, no commas).
pub(crate) fn nonce() -> String {
    let mut raw = [0; RAW_NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    BASE64.encode(raw)
}

/// The client's channel-binding flag (the gs2-cbind-flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CbindFlag<'a> {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=<type>`: the client uses channel binding of this type.
    Required(&'a str),
}

/// A parsed client-first-message.
#[derive(Debug)]
pub(crate) struct ClientFirst<'a> {
    pub(crate) cbind: CbindFlag<'a>,
    /// The gs2 header, e.g. `n,,`, echoed (base64) in the client-final `c=`.
    pub(crate) gs2_header: &'a str,
    /// The message without the gs2 header, part of the AuthMessage.
    pub(crate) bare: &'a str,
    pub(crate) nonce: &'a str,
}

/// A parsed client-final-message.
#[derive(Debug)]
pub(crate) struct ClientFinal<'a> {
    /// Base64 of the gs2 header plus channel-binding data.
    pub(crate) channel_binding: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) proof: [u8; 32],
    /// The message up to `,p=`, part of the AuthMessage.
    pub(crate) without_proof: &'a str,
}

/// A parsed server-first-message.
#[derive(Debug)]
pub(crate) struct ServerFirst<'a> {
    pub(crate) nonce: &'a str,
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| ScramError::protocol("message is not valid UTF-8"))
}

/// The value of attribute `name` in `part` (`name=value`).
fn attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or_else(|| ScramError::protocol(format!("expected attribute \"{name}\"")))
}

/// Refuses a mandatory extension (`m=`), which no implementation defines.
fn refuse_mandatory_extension(part: Option<&str>) -> Result<(), ScramError> {
    match part {
        Some(p) if p.starts_with("m=") => Err(ScramError::protocol(
            "client requires an unsupported SCRAM extension",
        )),
        _ => Ok(()),
    }
}

/// Checks a nonce is non-empty printable ASCII without commas (RFC 5802).
fn check_nonce(nonce: &str) -> Result<&str, ScramError> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) && b != b',';
    if nonce.is_empty() || !nonce.bytes().all(printable) {
        return Err(ScramError::protocol("nonce is empty or not printable"));
    }
    Ok(nonce)
}

/// Decodes base64 that must yield exactly 32 bytes (a proof or signature).
fn decode_32(b64: &str, what: &str) -> Result<[u8; 32], ScramError> {
    // 32 bytes are 44 base64 characters; refuse anything longer before
    // decoding so an oversized message costs nothing.
    if b64.len() > 44 {
        return Err(ScramError::protocol(format!("{what} is too long")));
    }
    BASE64
        .decode(b64)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| ScramError::protocol(format!("{what} is not 32 bytes of base64")))
}

/// Parses a client-first-message (`gs2-header client-first-message-bare`).
pub(crate) fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let msg = utf8(msg)?;
    let mut gs2 = msg.splitn(3, ',');
    let flag = gs2.next().unwrap_or_default();
    let cbind = match flag {
        "n" => CbindFlag::NotSupported,
        "y" => CbindFlag::ClientOnly,
        _ => match flag.strip_prefix("p=") {
            Some(name) => CbindFlag::Required(name),
            None => return Err(ScramError::protocol("unexpected channel-binding flag")),
        },
    };
    let authzid = gs2
        .next()
        .ok_or_else(|| ScramError::protocol("gs2 header is incomplete"))?;
    if !authzid.is_empty() {
        return Err(ScramError::protocol(
            "client uses an authorization identity, which is not supported",
        ));
    }
    let bare = gs2
        .next()
        .ok_or_else(|| ScramError::protocol("gs2 header is incomplete"))?;
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut attrs = bare.split(',');
    let first = attrs.next();
    refuse_mandatory_extension(first)?;
    // The username is ignored, as in Postgres: the role is the one named in
    // the startup packet, and libpq sends it empty.
    attr(first, 'n')?;
    let nonce = check_nonce(attr(attrs.next(), 'r')?)?;
    // Any further attributes are extensions, which are ignored.
    Ok(ClientFirst {
        cbind,
        gs2_header,
        bare,
        nonce,
    })
}

/// Parses a client-final-message (`c=...,r=...[,ext...],p=...`).
pub(crate) fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let msg = utf8(msg)?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or_else(|| ScramError::protocol("client-final-message has no proof"))?;
    let proof = decode_32(proof, "client proof")?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attr(attrs.next(), 'c')?;
    let nonce = attr(attrs.next(), 'r')?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// Parses a server-first-message (`r=...,s=...,i=...`).
pub(crate) fn parse_server_first(msg: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    let msg = utf8(msg)?;
    let mut attrs = msg.split(',');
    let first = attrs.next();
    refuse_mandatory_extension(first)?;
    let nonce = check_nonce(attr(first, 'r')?)?;
    let salt = BASE64
        .decode(attr(attrs.next(), 's')?)
        .map_err(|_| ScramError::protocol("salt is not base64"))?;
    if salt.is_empty() {
        return Err(ScramError::protocol("salt is empty"));
    }
    let iterations = attr(attrs.next(), 'i')?
        .parse()
        .map_err(|_| ScramError::protocol("iteration count is not a number"))?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// Parses a server-final-message into the server signature, or the server's
/// error (`e=...`).
pub(crate) fn parse_server_final(msg: &[u8]) -> Result<[u8; 32], ScramError> {
    let msg = utf8(msg)?;
    let first = msg.split(',').next();
    if let Ok(error) = attr(first, 'e') {
        return Err(ScramError::ServerError(error.to_owned()));
    }
    decode_32(attr(first, 'v')?, "server signature")
}

/// Base64 of `parts` concatenated (the client-final `c=` value).
pub(crate) fn base64_concat(parts: &[&[u8]]) -> String {
    BASE64.encode(parts.concat())
}

/// Base64 encoding of `data`.
pub(crate) fn base64(data: &[u8]) -> String {
    BASE64.encode(data)
}
