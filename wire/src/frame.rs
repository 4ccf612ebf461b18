//! Bounds-checked, zero-copy splitting of regular (typed) messages.
//!
//! A regular message is a one-byte tag, a big-endian `u32` length that counts
//! itself but not the tag, then the body. The length comes from the peer, so
//! it is checked before anything trusts it and it is never used to reserve
//! memory: a hostile peer announcing 1 GiB must not make us allocate 1 GiB.

use bytes::{Buf, Bytes, BytesMut};

/// Size of a regular message header: tag plus length.
pub const HEADER_LEN: usize = 5;

/// Largest length field accepted by default.
///
/// Postgres' own cap (`PQ_LARGE_MESSAGE_LIMIT` is ~1 GiB), so any message a
/// real server or client would exchange fits.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 30;

/// One complete regular message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte, e.g. `b'Q'`.
    pub tag: u8,
    /// The body, excluding the 5-byte header.
    pub body: Bytes,
}

/// A length field that cannot belong to a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum FrameError {
    /// The length field is below 4, the size of the field itself.
    #[error("message length {0} is shorter than its own header")]
    TooShort(u32),
    /// The length field is above the configured limit.
    #[error("message length {len} exceeds the limit of {max}")]
    TooLong {
        /// The announced length (counting the length field itself).
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

/// Validates a length field and returns the body length it announces.
///
/// `max_len` bounds the length field itself (which counts its own 4 bytes),
/// the same quantity Postgres compares with its limit.
pub(crate) fn body_len(len: u32, max_len: usize) -> Result<usize, FrameError> {
    if len < 4 {
        return Err(FrameError::TooShort(len));
    }
    // A u32 always fits in usize on the 32- and 64-bit targets Sluice runs on;
    // saturate rather than panic anywhere else.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    Ok(len - 4)
}

/// Reads the header at the front of `header`, if all five bytes are there.
pub(crate) fn header(header: &[u8]) -> Option<(u8, u32)> {
    match header.get(..HEADER_LEN) {
        Some(&[tag, a, b, c, d]) => Some((tag, u32::from_be_bytes([a, b, c, d]))),
        _ => None,
    }
}

/// Splits one complete frame off the front of `buf` if it is all there.
///
/// Returns `Ok(None)` (leaving `buf` untouched) while the frame is incomplete.
/// Never reserves memory based on the length field: the caller's read loop
/// grows `buf` only as bytes actually arrive. The body shares `buf`'s
/// allocation (`split_to` + `freeze`), so nothing is copied.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some((tag, len)) = header(buf) else {
        return Ok(None);
    };
    let body = body_len(len, max_len)?;
    let total = match HEADER_LEN.checked_add(body) {
        Some(total) => total,
        None => {
            return Err(FrameError::TooLong {
                len: body,
                max: max_len,
            })
        }
    };
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

#[cfg(test)]
pub(crate) mod tests;
