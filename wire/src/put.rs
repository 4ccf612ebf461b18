//! Low-level helpers shared by the message builders.
//!
//! Every builder writes a placeholder length, appends the body, then patches
//! the length in place, so no builder has to compute sizes up front and the
//! length can never disagree with the bytes written.

use bytes::{BufMut, BytesMut};

/// Appends a typed message: `tag`, a length, then whatever `body` writes.
pub(crate) fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    untagged(out, body);
}

/// Appends an untyped (startup-phase) message: a length, then the body.
///
/// # Panics
///
/// If the body exceeds `i32::MAX` bytes, which no message Sluice builds
/// (all bodies come from Sluice's own data, bounded far below that) can reach.
pub(crate) fn untagged(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    let len = out.len() - start;
    let len = i32::try_from(len).expect("a message Sluice builds never exceeds 2 GiB");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `s` as a NUL-terminated string.
///
/// The protocol cannot carry a NUL inside a string, so `s` is cut at its first
/// NUL: that is what the peer would read anyway, and it keeps the message
/// well-formed instead of shifting every later field.
pub(crate) fn cstr(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.put_slice(&bytes[..end]);
    out.put_u8(0);
}

/// Converts a count Sluice controls into the protocol's `Int16`.
///
/// # Panics
///
/// If `n` exceeds `i16::MAX`; callers pass short, Sluice-built lists.
pub(crate) fn count16(n: usize) -> i16 {
    i16::try_from(n).expect("a list Sluice builds has fewer than 32768 entries")
}

/// Converts a length Sluice controls into the protocol's `Int32`.
///
/// # Panics
///
/// If `n` exceeds `i32::MAX` (see [`untagged`]).
pub(crate) fn len32(n: usize) -> i32 {
    i32::try_from(n).expect("a field Sluice builds never exceeds 2 GiB")
}

/// A count as the protocol's 16-bit field (columns of a row).
pub(crate) fn len16(n: usize) -> i16 {
    i16::try_from(n).expect("a row Sluice builds never has 32768 columns")
}

/// Appends raw bytes as a NUL-terminated string, cut at a NUL like [`cstr`].
pub(crate) fn cbytes(out: &mut BytesMut, bytes: &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.put_slice(&bytes[..end]);
    out.put_u8(0);
}
