//! What every endpoint works with: the request read whole ([`Req`]: its head, path
//! segments, JSON body and query parameters), the caller behind its bearer token
//! ([`authorize`]), and the shape of an endpoint ([`Handler`]). Imports no endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use control::keys::{Caller, Role};
use hyper::header::AUTHORIZATION;
use hyper::{Response, StatusCode};

use crate::error::ApiError;
use crate::response::Body;
use crate::state::State;

/// Most items a list returns at once.
pub(crate) const MAX_PAGE: usize = 1000;

/// What an endpoint answers.
pub(crate) type Answer = Result<Response<Body>, ApiError>;
/// The future of an endpoint that waits (for the control store).
pub(crate) type Pending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// An endpoint: the state and the request (head, path segments, whole body). Endpoints
/// that only read memory answer `Now`; those that wait for the control store `Later`.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    Now(fn(&State, &Req) -> Answer),
    Later(for<'a> fn(&'a State, &'a Req) -> Pending<'a>),
}

/// A request, read whole.
pub(crate) struct Req {
    pub head: hyper::http::request::Parts,
    pub body: Bytes,
    /// The client's address (the audit log's `source_ip`).
    pub peer: SocketAddr,
}

impl Req {
    /// The path split at '/', without the leading one.
    pub fn segments(&self) -> Vec<&str> {
        self.head.uri.path().trim_matches('/').split('/').collect()
    }

    /// The body as a JSON object of type `T`: 400 when it is not JSON, 422 when it
    /// does not fit `T` (unknown fields, wrong types, not an object: serde would also
    /// take a struct's fields as an array, which openapi.json does not describe).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("expected a JSON body"));
        }
        let value: serde_json::Value = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("expected a JSON object"));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let what = plain_words(&e.into_inner().to_string());
            ApiError::invalid(if path == "." {
                what
            } else {
                format!("{path}: {what}")
            })
        })
    }
}

/// serde's message with Rust's type names put in plain words: `invalid type: string
/// "3", expected usize` becomes `invalid type: string "3", expected a whole number`.
fn plain_words(message: &str) -> String {
    const NAMES: [(&str, &str); 10] = [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object"),
    ];
    let mut out = message.to_owned();
    for (rust, plain) in NAMES {
        if let Some(at) = out.find(rust) {
            // Only a whole word: `expected u8` must not match `expected u8x`.
            let end = at + rust.len();
            if !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, plain);
            }
        }
    }
    out
}

/// The caller behind the request's bearer token, if it may act as `needed`.
pub(crate) fn authorize(state: &State, req: &Req, needed: Role) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let header = req
        .head
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <key>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("expected Authorization: Bearer <key>"))?;
    let caller = state
        .keys
        .verify(token.trim())
        .ok_or_else(|| unauthorized("unknown API key"))?;
    if caller.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs a key with role {needed:?} or higher").to_lowercase(),
        ));
    }
    Ok(caller)
}

/// Query parameters of a list request: `tenant`, `limit`, `cursor`.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub tenant: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub ip: Option<String>,
}

/// The query string's `key=value` pairs, values percent-decoded (400 if they cannot
/// be).
pub(crate) fn query_pairs(req: &Req) -> Result<Vec<(&str, String)>, ApiError> {
    req.head
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| ApiError::bad_request(format!("bad percent-encoding in {key}")))?;
            Ok((key, value))
        })
        .collect()
}

pub(crate) fn list_query(req: &Req) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    for (key, value) in query_pairs(req)? {
        match key {
            "tenant" => q.tenant = Some(value),
            "cursor" => q.cursor = Some(value),
            "ip" => q.ip = Some(value),
            "limit" => {
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1..={MAX_PAGE}"))
                    })?;
                q.limit = Some(n);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok(q)
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What a time parameter must look like, for error messages.
pub(crate) const TIME: &str = "an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.ffffff]Z)";

/// `YYYY-MM-DDTHH:MM:SS[.f…]Z` (UTC only, as the API writes times).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || !text.is_ascii() || *b.last()? != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b[i] != c)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let fraction = &text[19..text.len() - 1];
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits = fraction.strip_prefix('.')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse::<u32>().ok()?
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let seconds = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{parse_time, percent_decode, plain_words};
    use control::store::rfc3339::format_micros;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_parse_back_from_what_the_api_writes() {
        for micros in [0u64, 1_700_000_000_123_456, 951_782_400_000_001] {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            assert_eq!(parse_time(&format_micros(t)), Some(t), "{micros}");
        }
        assert_eq!(
            parse_time("2024-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T00:00:00+01:00",
            "2024-13-01T00:00:00Z",
            "2024-02-29T00:00:00.Z",
            "2024-02-29 00:00:00Z",
            "１９７０-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn rust_type_names_become_plain_words() {
        assert_eq!(
            plain_words("invalid type: string \"3\", expected usize"),
            "invalid type: string \"3\", expected a whole number"
        );
        assert_eq!(
            plain_words("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a whole number"
        );
        assert_eq!(
            plain_words("unknown field `colour`"),
            "unknown field `colour`"
        );
    }

    #[test]
    fn percent_decoding_rejects_what_is_not_utf8_or_hex() {
        assert_eq!(percent_decode("acme").as_deref(), Some("acme"));
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
