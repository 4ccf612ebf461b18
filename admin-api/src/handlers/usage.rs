//! `GET /v1/tenants/{id}/usage?from=&to=&granularity=hour|day&format=json|csv`: what a
//! tenant used, per hour or UTC day, summed over every Sluice process that served it,
//! from the control store (docs/usage.md). JSON by default; CSV with `format=csv` or
//! `Accept: text/csv`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use control::keys::Role;
use control::store::rfc3339::format_micros;
use control::store::{Granularity, UsageBucket, UsageTotals};
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{not_found, tenant_id};
use crate::error::{store_error, ApiError};
use crate::request::{authorize, parse_time, query_pairs, Pending, Req, TIME};
use crate::response::json;
use crate::state::State;

/// The longest range one request may ask for.
const MAX_RANGE: Duration = Duration::from_secs(366 * 86_400);

/// The CSV answer's content type.
pub const CSV: &str = "text/csv; charset=utf-8";

/// One bucket (or the totals) as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageView {
    /// The bucket's first instant (absent in `totals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Logged-in client time.
    pub connection_seconds: f64,
    /// Logins accepted.
    pub client_connections: u64,
    pub queries: u64,
    pub transactions: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    /// The most server connections open at once (replicas of a fleet added up).
    pub peak_server_connections: u64,
    /// The latest sample of the backend's database sizes in the bucket, if any.
    pub disk_bytes: Option<u64>,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct UsageAnswer {
    pub tenant: String,
    pub granularity: &'static str,
    /// The range read: `from` rounded down to its bucket, `to` exclusive.
    pub from: String,
    pub to: String,
    /// Buckets with usage, oldest first.
    pub usage: Vec<UsageView>,
    /// The sum of the buckets (peak: the largest; disk: the latest sample).
    pub totals: UsageView,
}

fn view(start: Option<SystemTime>, t: &UsageTotals) -> UsageView {
    UsageView {
        start: start.map(format_micros),
        connection_seconds: t.connection_us as f64 / 1e6,
        client_connections: t.client_connections,
        queries: t.queries,
        transactions: t.transactions,
        bytes_from_clients: t.bytes_from_clients,
        bytes_to_clients: t.bytes_to_clients,
        peak_server_connections: t.peak_server_connections,
        disk_bytes: t.disk_bytes,
    }
}

/// The buckets summed: counters added, the largest peak, the latest disk sample.
fn totals(buckets: &[UsageBucket]) -> UsageTotals {
    let mut sum = UsageTotals::default();
    for b in buckets {
        sum.add(&b.totals);
        sum.peak_server_connections = sum
            .peak_server_connections
            .max(b.totals.peak_server_connections);
        if b.totals.disk_sampled_at.is_some() && b.totals.disk_sampled_at >= sum.disk_sampled_at {
            sum.disk_bytes = b.totals.disk_bytes;
            sum.disk_sampled_at = b.totals.disk_sampled_at;
        }
    }
    sum
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
struct UsageQuery {
    from: SystemTime,
    to: SystemTime,
    granularity: Granularity,
    csv: bool,
}

/// The query string: `from` and `to` (RFC 3339 UTC; default the last 24 hours, or
/// the last 30 days by day), `granularity` (`hour`, `day`), `format` (`json`, `csv`;
/// default from `Accept`). Each refusal names its parameter.
fn usage_query(req: &Req, now: SystemTime) -> Result<UsageQuery, ApiError> {
    let (mut from, mut to, mut granularity, mut format) = (None, None, Granularity::Hour, None);
    for (key, value) in query_pairs(req)? {
        let bad = |what: &str| ApiError::bad_request(format!("{key}: {value:?} is not {what}"));
        match key {
            "from" => from = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "to" => to = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "granularity" => {
                granularity = Granularity::parse(&value).ok_or_else(|| bad("hour or day"))?
            }
            "format" => {
                format = Some(match value.as_str() {
                    "json" => false,
                    "csv" => true,
                    _ => return Err(bad("json or csv")),
                })
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    let to = to.unwrap_or(now);
    let span = match granularity {
        Granularity::Hour => Duration::from_secs(86_400),
        Granularity::Day => Duration::from_secs(30 * 86_400),
    };
    let from = granularity.floor(from.unwrap_or(to - span));
    if from >= to {
        return Err(ApiError::bad_request(format!(
            "from: {} is not before to ({})",
            format_micros(from),
            format_micros(to)
        )));
    }
    if to.duration_since(from).unwrap_or_default() > MAX_RANGE {
        return Err(ApiError::bad_request(format!(
            "from: more than {} days before to",
            MAX_RANGE.as_secs() / 86_400
        )));
    }
    let csv = format.unwrap_or_else(|| {
        req.head
            .headers
            .get(ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/csv"))
    });
    Ok(UsageQuery {
        from,
        to,
        granularity,
        csv,
    })
}

/// `GET /v1/tenants/{id}/usage`.
pub(crate) fn usage<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let id = tenant_id(req);
        let q = usage_query(req, SystemTime::now())?;
        let store = state.plane.control.store()?;
        let buckets = store
            .read_usage(&id, q.from, q.to, q.granularity)
            .await
            .map_err(store_error("reading usage"))?;
        if buckets.is_empty()
            && !store
                .usage_known(&id)
                .await
                .map_err(store_error("reading usage"))?
        {
            return Err(not_found(&id));
        }
        if q.csv {
            return Ok(csv(&id, &buckets));
        }
        let answer = UsageAnswer {
            tenant: id,
            granularity: q.granularity.as_str(),
            from: format_micros(q.from),
            to: format_micros(q.to),
            usage: buckets
                .iter()
                .map(|b| view(Some(b.start), &b.totals))
                .collect(),
            totals: view(None, &totals(&buckets)),
        };
        Ok(json(StatusCode::OK, &answer))
    })
}

/// The CSV header line.
pub const CSV_HEADER: &str = "tenant,start,connection_seconds,client_connections,queries,\
    transactions,bytes_from_clients,bytes_to_clients,peak_server_connections,disk_bytes";

/// The buckets as CSV: a header line, then one line per bucket (a missing disk sample
/// is an empty field). Tenant ids are DNS labels, so nothing needs quoting.
fn csv(tenant: &str, buckets: &[UsageBucket]) -> hyper::Response<crate::response::Body> {
    let mut out = String::with_capacity(64 + buckets.len() * 96);
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for b in buckets {
        let v = view(Some(b.start), &b.totals);
        let _ = write!(
            out,
            "{tenant},{},{},{},{},{},{},{},{},{}\r\n",
            v.start.unwrap_or_default(),
            v.connection_seconds,
            v.client_connections,
            v.queries,
            v.transactions,
            v.bytes_from_clients,
            v.bytes_to_clients,
            v.peak_server_connections,
            v.disk_bytes.map(|d| d.to_string()).unwrap_or_default()
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CSV));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn req(query: &str, accept: Option<&str>) -> Req {
        let mut builder = hyper::Request::builder().uri(format!("/v1/tenants/acme/usage?{query}"));
        if let Some(accept) = accept {
            builder = builder.header(ACCEPT, accept);
        }
        let (head, ()) = builder.body(()).unwrap().into_parts();
        Req {
            head,
            body: Bytes::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parameters_default_and_round_down() {
        let now = at(1_700_000_000);
        let q = usage_query(&req("", None), now).unwrap();
        assert_eq!(q.to, now);
        assert_eq!(
            q.from,
            Granularity::Hour.floor(now - Duration::from_secs(86_400))
        );
        assert!(!q.csv);
        let q = usage_query(
            &req("from=2023-11-14T10:30:00Z&granularity=day&format=csv", None),
            now,
        )
        .unwrap();
        assert_eq!(q.from, at(1_699_920_000), "2023-11-14T00:00:00Z");
        assert_eq!(q.granularity, Granularity::Day);
        assert!(q.csv);
        assert!(usage_query(&req("", Some("text/csv")), now).unwrap().csv);
        assert!(
            !usage_query(&req("format=json", Some("text/csv")), now)
                .unwrap()
                .csv
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let now = at(1_700_000_000);
        for (query, field) in [
            ("from=yesterday", "from: "),
            ("to=2023-11-14", "to: "),
            ("granularity=week", "granularity: "),
            ("format=xml", "format: "),
            (
                "from=2023-11-15T00:00:00Z&to=2023-11-14T00:00:00Z",
                "from: ",
            ),
            ("from=2020-01-01T00:00:00Z", "from: "),
            ("colour=blue", "unknown parameter \"colour\""),
        ] {
            let e = usage_query(&req(query, None), now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{query}");
            assert!(e.message.starts_with(field), "{query}: {}", e.message);
        }
    }

    #[test]
    fn totals_add_counters_and_keep_the_largest_peak_and_the_latest_disk() {
        let bucket = |q, peak, disk: Option<(u64, i64)>| UsageBucket {
            start: at(0),
            totals: UsageTotals {
                queries: q,
                peak_server_connections: peak,
                disk_bytes: disk.map(|d| d.0),
                disk_sampled_at: disk.map(|d| d.1),
                ..UsageTotals::default()
            },
        };
        let sum = totals(&[
            bucket(1, 4, Some((100, 10))),
            bucket(2, 7, Some((300, 30))),
            bucket(3, 5, None),
        ]);
        assert_eq!(
            (sum.queries, sum.peak_server_connections, sum.disk_bytes),
            (6, 7, Some(300))
        );
    }
}
