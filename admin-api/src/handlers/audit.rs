//! The audit log through the API: every change is recorded before it is applied
//! ([`super::record`]), `GET /v1/audit-events` lists events (newest first, filters, cursor) and
//! `GET /v1/audit-events/verify` recomputes the hash chain.
//!
//! Order of a change: authorize, validate the request (4xx leaves no trace), append the
//! event (durable once `append_audit` returns), then apply. If the append fails the
//! change is not made and the caller gets 503, so nothing changes unaudited. The price:
//! if applying fails after the append (a concurrent change made the request invalid), the
//! log holds an event for a change that did not happen; the answer is then 4xx and the
//! log line says so.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde_json::{json, Value};

use control::keys::Role;
use control::store::AuditFilter;

use crate::error::{unavailable, ApiError};
use crate::request::{authorize, query_pairs, Pending, Req};
use crate::response::json;
use crate::state::State;

/// `GET /v1/audit-events?tenant=&action=&since=&until=&cursor=&limit=`.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let (filter, cursor, limit) = audit_query(req)?;
        let store = state.plane.control.store()?;
        let (events, next) = store
            .list_audit(&filter, cursor, limit)
            .await
            .map_err(|e| unavailable(format!("listing audit events: {e:#}")))?;
        let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
        Ok(json(
            StatusCode::OK,
            &json!({"events": events, "next_cursor": next.map(|id| id.to_string())}),
        ))
    })
}

/// `GET /v1/audit-events/verify`.
pub(crate) fn verify<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let store = state.plane.control.store()?;
        let verdict = store
            .verify_audit()
            .await
            .map_err(|e| unavailable(format!("verifying the audit log: {e:#}")))?;
        if !verdict.ok {
            tracing::warn!(
                broken_at = verdict.broken_at,
                "the audit chain does not verify"
            );
        }
        Ok(json(StatusCode::OK, &verdict))
    })
}

fn audit_query(req: &Req) -> Result<(AuditFilter, Option<i64>, u32), ApiError> {
    let mut filter = AuditFilter::default();
    let (mut cursor, mut limit) = (None, 100);
    for (key, value) in query_pairs(req)? {
        let bad = |what: &str| ApiError::bad_request(format!("{key}: {value:?} is not {what}"));
        match key {
            "tenant" => filter.tenant = Some(value),
            "action" => filter.action = Some(value),
            "since" => filter.since = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "until" => filter.until = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "cursor" => {
                cursor = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad("a cursor from next_cursor"))?,
                )
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit must be 1..=1000"))?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok((filter, cursor, limit))
}

const TIME: &str = "an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.ffffff]Z)";

/// `YYYY-MM-DDTHH:MM:SS[.f…]Z` (UTC only, as the API writes times).
fn parse_time(text: &str) -> Option<SystemTime> {
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
    use super::*;
    use control::store::rfc3339::format_micros;

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
}
