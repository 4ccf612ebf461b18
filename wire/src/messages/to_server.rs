//! Builders for messages Sluice sends to servers (in the client's role).

use bytes::{BufMut, BytesMut};

use super::tag;
use crate::put;

/// Appends a simple Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    put::message(out, tag::QUERY, |out| put::cstr(out, sql));
}

/// Appends Terminate.
pub fn terminate(out: &mut BytesMut) {
    put::message(out, tag::TERMINATE, |_| ());
}

/// Appends a `'p'` message with a raw body: SASLResponse data, or an md5 or
/// cleartext password, for which the caller supplies the trailing NUL.
pub fn password_message(out: &mut BytesMut, data: &[u8]) {
    put::message(out, tag::PASSWORD_MESSAGE, |out| out.put_slice(data));
}

/// Appends SASLInitialResponse: the chosen mechanism and its first message.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put::message(out, tag::PASSWORD_MESSAGE, |out| {
        put::cstr(out, mechanism);
        out.put_i32(put::len32(data.len()));
        out.put_slice(data);
    });
}

/// Appends Parse for statement `name` (empty: unnamed) with parameter type
/// OIDs `param_types` (0: let the server infer).
pub fn parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    put::message(out, tag::PARSE, |out| {
        put::cstr(out, name);
        put::cstr(out, sql);
        out.put_i16(put::count16(param_types.len()));
        for oid in param_types {
            out.put_u32(*oid);
        }
    });
}

/// Appends Bind with every parameter and result in text format; `None` is
/// SQL NULL.
pub fn bind_text(out: &mut BytesMut, portal: &str, stmt: &str, params: &[Option<&[u8]>]) {
    put::message(out, tag::BIND, |out| {
        put::cstr(out, portal);
        put::cstr(out, stmt);
        // Zero format codes: all parameters are text.
        out.put_i16(0);
        out.put_i16(put::count16(params.len()));
        for param in params {
            match param {
                Some(value) => {
                    out.put_i32(put::len32(value.len()));
                    out.put_slice(value);
                }
                None => out.put_i32(-1),
            }
        }
        // Zero result format codes: all results are text.
        out.put_i16(0);
    });
}

/// Appends Execute for `portal`; `max_rows` 0 means no limit.
pub fn execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    put::message(out, tag::EXECUTE, |out| {
        put::cstr(out, portal);
        out.put_i32(max_rows);
    });
}

/// Appends Describe of a portal.
pub fn describe_portal(out: &mut BytesMut, portal: &str) {
    put::message(out, tag::DESCRIBE, |out| {
        out.put_u8(b'P');
        put::cstr(out, portal);
    });
}

/// Appends Sync.
pub fn sync(out: &mut BytesMut) {
    put::message(out, tag::SYNC, |_| ());
}

/// Appends Parse from raw parts (as read by [`super::parse_parse`]).
pub fn parse_raw(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    put::message(out, tag::PARSE, |out| {
        put::cbytes(out, name);
        put::cbytes(out, query);
        out.put_slice(param_types);
    });
}

/// Appends Bind from raw parts (as read by [`super::parse_bind`]).
pub fn bind_raw(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    put::message(out, tag::BIND, |out| {
        put::cbytes(out, portal);
        put::cbytes(out, statement);
        out.put_slice(rest);
    });
}

/// Appends Describe (`kind` `b'S'` or `b'P'`).
pub fn describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    put::message(out, tag::DESCRIBE, |out| {
        out.put_u8(kind);
        put::cbytes(out, name);
    });
}

/// Appends Close (`kind` `b'S'` or `b'P'`).
pub fn close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    put::message(out, tag::CLOSE, |out| {
        out.put_u8(kind);
        put::cbytes(out, name);
    });
}
