//! The server's last word: an ErrorResponse of severity FATAL or PANIC, which Postgres
//! sends before it ends a session (`pg_terminate_backend`, `idle_session_timeout`, a
//! shutdown, a crash). Both relays forward it to the client, so the client has been
//! told why its session ends and Sluice adds no error of its own ([`session_ended`]
//! for whole messages, [`LastWord`] for a stream relayed in chunks).

use wire::frame::HEADER_LEN;
use wire::messages::{parse_error_fields, tag};

/// Longest ErrorResponse [`LastWord`] collects across chunks; a longer one is relayed
/// but not recognised. Postgres' FATAL messages take a few hundred bytes.
const MAX_ERROR: usize = 8 * 1024;

/// If an ErrorResponse body ends the session (FATAL or PANIC), its SQLSTATE and
/// message, for the log.
pub(crate) fn session_ended(body: &[u8]) -> Option<String> {
    let fields = parse_error_fields(body).ok()?;
    matches!(fields.severity.as_str(), "FATAL" | "PANIC")
        .then(|| format!("{} {}", fields.code, fields.message))
}

/// Watches a server stream relayed verbatim in chunks for an ErrorResponse that ends
/// the session, told where each message ends by `Scanner::feed_ends`. Only
/// ErrorResponses are copied, and only one split across chunks.
#[derive(Debug, Default)]
pub(crate) struct LastWord {
    /// The part of an ErrorResponse that began in an earlier chunk; empty when the
    /// message in progress is not one being collected.
    partial: Vec<u8>,
    /// Where the message in progress began in the current chunk; `None` if it began
    /// in an earlier one.
    start: Option<usize>,
    /// What an ErrorResponse that ends the session said ([`session_ended`]).
    pub(crate) said: Option<String>,
}

impl LastWord {
    /// Before the scanner reads the next chunk; `at_boundary` as the scanner is.
    pub(crate) fn chunk_begins(&mut self, at_boundary: bool) {
        self.start = at_boundary.then_some(0);
    }

    /// The scanner found a message of type `msg` that ends at `end` in `chunk`.
    pub(crate) fn message_ends(&mut self, chunk: &[u8], msg: u8, end: usize) {
        if msg == tag::ERROR_RESPONSE {
            let whole = match self.start {
                Some(start) => Some(&chunk[start..end]),
                None if !self.partial.is_empty() && self.partial.len() + end <= MAX_ERROR => {
                    self.partial.extend_from_slice(&chunk[..end]);
                    Some(&self.partial[..])
                }
                None => None,
            };
            let said = whole
                .and_then(|message| message.get(HEADER_LEN..))
                .and_then(session_ended);
            if said.is_some() {
                self.said = said;
            }
        }
        self.partial.clear();
        self.start = Some(end);
    }

    /// After the chunk: keeps the start of an ErrorResponse that goes on in the next.
    pub(crate) fn chunk_ends(&mut self, chunk: &[u8]) {
        match self.start {
            Some(start) if start < chunk.len() => {
                let rest = &chunk[start..];
                self.partial.clear();
                if rest[0] == tag::ERROR_RESPONSE && rest.len() <= MAX_ERROR {
                    self.partial.extend_from_slice(rest);
                }
            }
            None if !self.partial.is_empty() => {
                if self.partial.len() + chunk.len() <= MAX_ERROR {
                    self.partial.extend_from_slice(chunk);
                } else {
                    self.partial.clear();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::frame::DEFAULT_MAX_FRAME_LEN;
    use wire::scan::Scanner;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let body = format!("S{severity}\0V{severity}\0C{code}\0Mbye\0\0");
        message(b'E', body.as_bytes())
    }

    /// What `LastWord` finds in `stream` fed in chunks cut at `cuts`.
    fn said(stream: &[u8], cuts: &[usize]) -> Option<String> {
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        let mut last = LastWord::default();
        let mut from = 0;
        for to in cuts.iter().copied().chain([stream.len()]) {
            let chunk = &stream[from..to];
            last.chunk_begins(scanner.at_boundary());
            scanner
                .feed_ends(chunk, |msg, _, end| last.message_ends(chunk, msg, end))
                .unwrap();
            last.chunk_ends(chunk);
            from = to;
        }
        last.said
    }

    #[test]
    fn a_fatal_error_is_found_however_the_stream_is_cut() {
        let rows = message(b'D', &[7; 100]);
        let stream = [rows.clone(), rows, error("FATAL", "57P01")].concat();
        for cut in 0..=stream.len() {
            assert_eq!(
                said(&stream, &[cut]).as_deref(),
                Some("57P01 bye"),
                "cut at {cut}"
            );
        }
        let bytewise: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(said(&stream, &bytewise).as_deref(), Some("57P01 bye"));
        assert_eq!(
            said(&error("PANIC", "XX000"), &[]).as_deref(),
            Some("XX000 bye")
        );
    }

    #[test]
    fn other_errors_and_other_messages_are_not_a_last_word() {
        let stream = [
            error("ERROR", "22012"),
            message(b'N', b"SFATAL\0VFATAL\0C00000\0Mnot an error\0\0"),
            message(b'Z', b"I"),
        ]
        .concat();
        for cut in 0..=stream.len() {
            assert_eq!(said(&stream, &[cut]), None, "cut at {cut}");
        }
        // An ErrorResponse too long to collect is relayed unrecognised.
        let long = format!("SFATAL\0VFATAL\0C57P01\0M{}\0\0", "x".repeat(MAX_ERROR));
        let stream = message(b'E', long.as_bytes());
        assert_eq!(said(&stream, &[10]), None);
        assert!(
            said(&stream, &[]).is_some(),
            "whole in one chunk, it is read"
        );
    }
}
