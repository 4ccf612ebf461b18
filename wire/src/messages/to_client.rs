//! Builders for messages Sluice sends to clients (in the server's role).

use bytes::{BufMut, BytesMut};

use super::tag;
use crate::put;
use crate::startup::{CancelKey, ClientCancelKey, LongKey};

/// Severity of an ErrorResponse Sluice generates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    /// The non-localized name Postgres uses (`ERROR`, `FATAL`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity (`S` and `V`), SQLSTATE (`C`) and
/// message (`M`).
pub fn error_response(out: &mut BytesMut, severity: Severity, sqlstate: &str, message: &str) {
    fields(
        out,
        tag::ERROR_RESPONSE,
        severity.as_str(),
        sqlstate,
        message,
    );
}

/// Appends a NoticeResponse with severity `NOTICE`.
pub fn notice_response(out: &mut BytesMut, sqlstate: &str, message: &str) {
    fields(out, tag::NOTICE_RESPONSE, "NOTICE", sqlstate, message);
}

/// The shared layout of ErrorResponse and NoticeResponse.
fn fields(out: &mut BytesMut, tag: u8, severity: &str, sqlstate: &str, message: &str) {
    put::message(out, tag, |out| {
        for (code, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            out.put_u8(code);
            put::cstr(out, value);
        }
        out.put_u8(0);
    });
}

/// Authentication request codes.
pub(crate) mod auth_code {
    pub(crate) const OK: i32 = 0;
    pub(crate) const CLEARTEXT: i32 = 3;
    pub(crate) const MD5: i32 = 5;
    pub(crate) const SASL: i32 = 10;
    pub(crate) const SASL_CONTINUE: i32 = 11;
    pub(crate) const SASL_FINAL: i32 = 12;
}

fn auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    put::message(out, tag::AUTHENTICATION, |out| {
        out.put_i32(code);
        out.put_slice(data);
    });
}

/// Appends AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    auth(out, auth_code::OK, &[]);
}

/// Appends AuthenticationSASL listing `mechanisms` in order of preference.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put::message(out, tag::AUTHENTICATION, |out| {
        out.put_i32(auth_code::SASL);
        for mechanism in mechanisms {
            put::cstr(out, mechanism);
        }
        out.put_u8(0);
    });
}

/// Appends AuthenticationSASLContinue carrying `data`.
pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    auth(out, auth_code::SASL_CONTINUE, data);
}

/// Appends AuthenticationSASLFinal carrying `data`.
pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    auth(out, auth_code::SASL_FINAL, data);
}

/// Appends AuthenticationMD5Password with `salt`.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    auth(out, auth_code::MD5, &salt);
}

/// Appends AuthenticationCleartextPassword.
pub fn auth_cleartext(out: &mut BytesMut) {
    auth(out, auth_code::CLEARTEXT, &[]);
}

/// Appends ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put::message(out, tag::PARAMETER_STATUS, |out| {
        put::cstr(out, name);
        put::cstr(out, value);
    });
}

/// Appends BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, key: CancelKey) {
    put::message(out, tag::BACKEND_KEY_DATA, |out| {
        out.put_i32(key.pid);
        out.put_i32(key.secret);
    });
}

/// Appends BackendKeyData with a protocol 3.2 client's long key.
pub fn backend_key_data_long(out: &mut BytesMut, key: &LongKey) {
    put::message(out, tag::BACKEND_KEY_DATA, |out| {
        out.put_i32(key.pid);
        out.put_slice(&key.secret);
    });
}

/// Appends BackendKeyData with a client's key, long or short.
pub fn client_key_data(out: &mut BytesMut, key: &ClientCancelKey) {
    match key {
        ClientCancelKey::Short(key) => backend_key_data(out, *key),
        ClientCancelKey::Long(key) => backend_key_data_long(out, key),
    }
}

/// Appends ReadyForQuery with transaction `status` (`b'I'`, `b'T'`, `b'E'`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put::message(out, tag::READY_FOR_QUERY, |out| out.put_u8(status));
}

/// Appends NegotiateProtocolVersion: protocol 3.`minor` is the newest Sluice
/// supports, and the `_pq_.` options in `unrecognized` are not understood.
///
/// The version field carries the full version code (`3 << 16 | minor`), which
/// is what Postgres sends and libpq compares against.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: u32, unrecognized: &[&str]) {
    put::message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |out| {
        out.put_u32((3 << 16) | (minor & 0xffff));
        out.put_i32(put::len32(unrecognized.len()));
        for name in unrecognized {
            put::cstr(out, name);
        }
    });
}

/// Appends ParseComplete.
pub fn parse_complete(out: &mut BytesMut) {
    put::message(out, tag::PARSE_COMPLETE, |_| {});
}

/// Appends CloseComplete.
pub fn close_complete(out: &mut BytesMut) {
    put::message(out, tag::CLOSE_COMPLETE, |_| {});
}

/// The type OID of `text`: every column Sluice describes itself is text.
pub const TEXT_OID: u32 = 25;

/// Appends RowDescription for columns of type `text` in text format, named `names`.
pub fn row_description(out: &mut BytesMut, names: &[&str]) {
    put::message(out, tag::ROW_DESCRIPTION, |out| {
        out.put_i16(put::len16(names.len()));
        for name in names {
            put::cstr(out, name);
            out.put_u32(0); // no table
            out.put_i16(0); // no column number
            out.put_u32(TEXT_OID);
            out.put_i16(-1); // variable length
            out.put_i32(-1); // no type modifier
            out.put_i16(0); // text format
        }
    });
}

/// Appends DataRow with `values` in text format; `None` is SQL NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    put::message(out, tag::DATA_ROW, |out| {
        out.put_i16(put::len16(values.len()));
        for value in values {
            match value {
                Some(v) => {
                    out.put_i32(put::len32(v.len()));
                    out.put_slice(v.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
    });
}

/// Appends CommandComplete with its command `tag` (`SHOW`, `PAUSE`, `SELECT 3`).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put::message(out, tag::COMMAND_COMPLETE, |out| put::cstr(out, tag));
}

/// Appends EmptyQueryResponse (the answer to a query string with no statement).
pub fn empty_query_response(out: &mut BytesMut) {
    put::message(out, tag::EMPTY_QUERY_RESPONSE, |_| {});
}
