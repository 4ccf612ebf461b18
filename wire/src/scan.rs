//! A streaming walker over message headers, for the relay.
//!
//! The relay forwards bytes verbatim and only needs to know where messages
//! end and what they are (ReadyForQuery's status byte tells it when a server
//! is idle). Bodies can be up to 1 GiB, so the scanner keeps nothing but the
//! few bytes of a header split across reads and a count of body bytes left to
//! skip.

use crate::frame::{self, FrameError, HEADER_LEN};

/// Where the scanner is within the current message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting the 5-byte header; `have` bytes of it are in `bytes`.
    Header {
        bytes: [u8; HEADER_LEN],
        have: usize,
    },
    /// Skipping `remaining` body bytes of a message tagged `tag`; `first` is
    /// the first body byte once it has been seen.
    Body {
        tag: u8,
        remaining: usize,
        first: Option<u8>,
    },
    /// A bad length was seen; the stream cannot be resynchronised.
    Failed(FrameError),
}

impl State {
    const BOUNDARY: State = State::Header {
        bytes: [0; HEADER_LEN],
        have: 0,
    };
}

/// Tracks message boundaries in a byte stream fed in arbitrary chunks.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Largest length field accepted, as for [`frame::split_frame`].
    max_len: usize,
    state: State,
}

impl Scanner {
    /// A scanner positioned at a message boundary.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            state: State::BOUNDARY,
        }
    }

    /// Walks `chunk` (the next bytes of the stream).
    ///
    /// Calls `on_message(tag, first_body_byte)` once per message whose last
    /// byte is in this chunk, in order. `first_body_byte` is `Some(b)` when
    /// the body is non-empty (this is how the relay reads ReadyForQuery's
    /// status byte), `None` for an empty body. Headers and the first body
    /// byte may be split across chunks in any way.
    ///
    /// An invalid length is an error; the stream is then unrecoverable and
    /// every later call returns the same error.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(u8, Option<u8>),
    ) -> Result<(), FrameError> {
        self.feed_ends(chunk, |tag, first, _| on_message(tag, first))
    }

    /// Like [`feed`](Self::feed), also telling where in `chunk` each message
    /// ends: `on_message(tag, first_body_byte, end)`, the message's last byte
    /// being `chunk[end - 1]`. A message that ends at `end` began at the end of
    /// the one reported before it in the same chunk, else at 0 if the scanner
    /// was at a boundary before this chunk, else in an earlier chunk.
    pub fn feed_ends(
        &mut self,
        mut chunk: &[u8],
        mut on_message: impl FnMut(u8, Option<u8>, usize),
    ) -> Result<(), FrameError> {
        let total = chunk.len();
        loop {
            match &mut self.state {
                State::Failed(err) => return Err(err.clone()),
                _ if chunk.is_empty() => return Ok(()),
                State::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(chunk.len());
                    let (head, rest) = chunk.split_at(take);
                    bytes[*have..*have + take].copy_from_slice(head);
                    *have += take;
                    chunk = rest;
                    let Some((tag, len)) = frame::header(&bytes[..*have]) else {
                        continue;
                    };
                    match frame::body_len(len, self.max_len) {
                        Err(err) => self.state = State::Failed(err),
                        Ok(0) => {
                            on_message(tag, None, total - chunk.len());
                            self.state = State::BOUNDARY;
                        }
                        Ok(remaining) => {
                            self.state = State::Body {
                                tag,
                                remaining,
                                first: None,
                            }
                        }
                    }
                }
                State::Body {
                    tag,
                    remaining,
                    first,
                } => {
                    // Entering Body leaves `first` empty, so the first byte
                    // consumed here is the first byte of the body.
                    if first.is_none() {
                        *first = chunk.first().copied();
                    }
                    let take = (*remaining).min(chunk.len());
                    *remaining -= take;
                    chunk = &chunk[take..];
                    if *remaining == 0 {
                        on_message(*tag, *first, total - chunk.len());
                        self.state = State::BOUNDARY;
                    }
                }
            }
        }
    }

    /// True when the stream is exactly at a message boundary (no partial
    /// header or body pending).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }
}

#[cfg(test)]
mod tests;
