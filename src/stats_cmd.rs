//! `sluice stats`: PgBouncer's SHOW POOLS and SHOW STATS in one table, read from a
//! running Sluice's admin API (`/v1/pools`, `/v1/tenants/{id}/stats`).
//!
//! The command only fetches and formats; every number is computed by the server, so
//! the CLI and the API can never disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::api_args::{json_text, print, ApiArgs, Output};
use crate::api_client::pages::Listing;
use crate::api_client::{encode_component, ApiClient, ApiError};
use crate::table::{self, count, number, text, Align, Column};

/// ANSI: clear the screen and move the cursor home, as `watch(1)` does.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Show one tenant: a summary line, its refused logins by reason, and its pools.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Redraw every SECS seconds (2 when SECS is left out) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    watch: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    crate::serve::tokio_runtime()?.block_on(async {
        match args.watch {
            None => {
                let text = render(&client, &args).await?;
                print(&text)
            }
            Some(secs) => watch(&client, &args, Duration::from_secs(secs)).await,
        }
    })
}

/// Redraws until Ctrl-C (which exits 0). A failed fetch ends the command like any
/// other failure, so a wrong key or a stopped server is not hidden behind a redraw.
async fn watch(client: &ApiClient, args: &StatsArgs, every: Duration) -> anyhow::Result<()> {
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let frame = async {
            let text = render(client, args).await?;
            let header = watch_header(client.base_url(), every, SystemTime::now());
            print(&format!("{CLEAR_SCREEN}{header}\n\n{text}"))?;
            tokio::time::sleep(every).await;
            anyhow::Ok(())
        };
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            result = frame => result?,
        }
    }
}

fn watch_header(api: &str, every: Duration, now: SystemTime) -> String {
    format!(
        "sluice stats  {}  {api}  (every {}s, Ctrl-C to quit)",
        utc_timestamp(now),
        every.as_secs()
    )
}

/// Fetches what `args` asks for and formats it.
async fn render(client: &ApiClient, args: &StatsArgs) -> Result<String, ApiError> {
    let value = match &args.tenant {
        Some(tenant) => {
            let path = format!("/v1/tenants/{}/stats", encode_component(tenant));
            client.get_json(&path).await?
        }
        None => all_pools(client).await?,
    };
    let lines = match (args.api.output, &args.tenant) {
        (Output::Json, _) => return Ok(json_text(&value)),
        (Output::Table, Some(_)) => tenant_lines(&value),
        (Output::Table, None) => pools_table(as_array(value.get("pools"))),
    };
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// `GET /v1/pools`, following `next_cursor` to the last page.
async fn all_pools(client: &ApiClient) -> Result<Value, ApiError> {
    let listing = Listing {
        path: "/v1/pools",
        query: Vec::new(),
        field: "pools",
        max_items: None,
    };
    client.get_all(&listing).await
}

fn as_array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

const COLUMNS: &[Column] = &[
    ("TENANT", Align::Left, |p| text(p, "/tenant")),
    ("DATABASE", Align::Left, |p| text(p, "/database")),
    ("ROLE", Align::Left, |p| text(p, "/role")),
    ("MODE", Align::Left, |p| text(p, "/mode")),
    ("CL_ACTIVE", Align::Right, |p| count(p, "/clients/active")),
    ("CL_WAITING", Align::Right, |p| count(p, "/clients/waiting")),
    ("CL_IDLE", Align::Right, |p| count(p, "/clients/idle")),
    ("CL_PINNED", Align::Right, |p| count(p, "/clients/pinned")),
    ("SV_ACTIVE", Align::Right, |p| count(p, "/servers/active")),
    ("SV_IDLE", Align::Right, |p| count(p, "/servers/idle")),
    ("SV_CONNECTING", Align::Right, |p| {
        count(p, "/servers/connecting")
    }),
    ("QPS", Align::Right, |p| decimal(p, "/rates/queries_per_s")),
    ("TPS", Align::Right, |p| {
        decimal(p, "/rates/transactions_per_s")
    }),
    ("IN/s", Align::Right, |p| {
        bytes(p, "/rates/bytes_from_clients_per_s")
    }),
    ("OUT/s", Align::Right, |p| {
        bytes(p, "/rates/bytes_to_clients_per_s")
    }),
    ("AVG_WAIT_MS", Align::Right, |p| decimal(p, "/wait/avg_ms")),
    ("MAX_WAIT_MS", Align::Right, |p| decimal(p, "/wait/max_ms")),
    ("UP", Align::Left, |p| up(p, "/backend_up")),
];

/// The pools table, one line per pool under a header line; fields missing from the
/// JSON show as `-`.
pub fn pools_table(pools: &[Value]) -> Vec<String> {
    let mut lines = table::render(COLUMNS, pools);
    if pools.is_empty() {
        lines.push("(no pools: a pool opens at its first client login)".to_owned());
    }
    lines
}

/// The `--tenant` view: a summary line, refused logins by reason, its disk against its
/// limit, then the pools.
pub fn tenant_lines(stats: &Value) -> Vec<String> {
    let mut lines = vec![
        tenant_summary(stats),
        rejected_line(stats),
        disk_line(stats),
        String::new(),
    ];
    lines.extend(pools_table(as_array(stats.get("pools"))));
    lines
}

fn tenant_summary(s: &Value) -> String {
    format!(
        "tenant {}: clients {} active ({} pinned), {} waiting, {} idle; servers {} active, {} idle, \
         {} connecting; {} q/s, {} tx/s, in {}/s, out {}/s; wait avg {} ms, max {} ms; \
         backend {}",
        text(s, "/tenant"),
        count(s, "/clients/active"),
        count(s, "/clients/pinned"),
        count(s, "/clients/waiting"),
        count(s, "/clients/idle"),
        count(s, "/servers/active"),
        count(s, "/servers/idle"),
        count(s, "/servers/connecting"),
        decimal(s, "/rates/queries_per_s"),
        decimal(s, "/rates/transactions_per_s"),
        bytes(s, "/rates/bytes_from_clients_per_s"),
        bytes(s, "/rates/bytes_to_clients_per_s"),
        decimal(s, "/wait/avg_ms"),
        decimal(s, "/wait/max_ms"),
        match s.pointer("/backend_up").and_then(Value::as_bool) {
            Some(true) => "up",
            Some(false) => "DOWN",
            None => "-",
        },
    )
}

/// `disk: 12.4M of 16.0M (warning)`: the latest sample against the storage watermark
/// limit (`-` before the first sample), or `no limit`.
fn disk_line(s: &Value) -> String {
    let used = bytes(s, "/disk/bytes");
    match s.pointer("/disk/limit_bytes").and_then(Value::as_f64) {
        Some(limit) => format!(
            "disk: {used} of {} ({})",
            human_bytes(limit),
            text(s, "/disk/state")
        ),
        None => format!("disk: {used}, no limit"),
    }
}

/// `rejected: reason n, ...` in the API's (sorted) order, or `rejected: none`.
fn rejected_line(s: &Value) -> String {
    let reasons: Vec<String> = s
        .get("rejected")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(r, n)| format!("{r} {}", number(n)))
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        "rejected: none".to_owned()
    } else {
        format!("rejected: {}", reasons.join(", "))
    }
}

/// A rate or a duration, with one decimal.
fn decimal(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_f64) {
        Some(f) => format!("{f:.1}"),
        None => "-".to_owned(),
    }
}

fn bytes(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), human_bytes)
}

fn up(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_bool) {
        Some(true) => "yes".to_owned(),
        Some(false) => "NO".to_owned(),
        None => "-".to_owned(),
    }
}

/// Bytes in powers of 1024, as `ls -h` does: `512`, `1.2K`, `3.4M`.
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024.0 {
        return format!("{n:.0}");
    }
    let mut value = n / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        // Round first, so 1023.96K shows as 1.0M and not as 1024.0K.
        if (value * 10.0).round() / 10.0 < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1}{unit}")
}

/// `YYYY-MM-DD HH:MM:SS UTC`. UTC because the local zone needs a tz database, and the
/// API's own timestamps (and Sluice's logs) are UTC too.
fn utc_timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm,
/// restricted to dates from 1970 on).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(tenant: &str, database: &str, role: &str, mode: &str, up: bool) -> Value {
        json!({
            "tenant": tenant, "database": database, "role": role, "mode": mode, "size": 10,
            "clients": {"active": 3, "waiting": 12, "idle": 0, "pinned": 1},
            "servers": {"active": 3, "idle": 1, "connecting": 0},
            "totals": {"queries": 100, "transactions": 50, "bytes_from_clients": 1,
                       "bytes_to_clients": 2, "waits": 4},
            "rates": {"queries_per_s": 1234.56, "transactions_per_s": 0.04,
                      "bytes_from_clients_per_s": 1300.0, "bytes_to_clients_per_s": 3565158.4},
            "wait": {"avg_ms": 1.25, "max_ms": 17.0},
            "backend_up": up,
        })
    }

    #[test]
    fn pools_table_aligns_names_left_and_numbers_right() {
        let mut globex = pool("globex-long", "db", "r", "session", false);
        globex["clients"]["waiting"] = json!(0);
        globex["rates"]["queries_per_s"] = json!(0);
        globex["rates"]["bytes_from_clients_per_s"] = json!(12.0);
        let pools = json!({
            "pools": [pool("acme", "app", "web", "transaction", true), globex],
            "next_cursor": null,
        });
        let lines = pools_table(as_array(pools.get("pools")));
        let expected = [
            "TENANT       DATABASE  ROLE  MODE         CL_ACTIVE  CL_WAITING  CL_IDLE  CL_PINNED  SV_ACTIVE  SV_IDLE  SV_CONNECTING     QPS  TPS  IN/s  OUT/s  AVG_WAIT_MS  MAX_WAIT_MS  UP",
            "acme         app       web   transaction          3          12        0          1          3        1              0  1234.6  0.0  1.3K   3.4M          1.2         17.0  yes",
            "globex-long  db        r     session              3           0        0          1          3        1              0     0.0  0.0    12   3.4M          1.2         17.0  NO",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn an_empty_or_odd_answer_still_renders() {
        let lines = pools_table(&[]);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("TENANT  DATABASE  ROLE  MODE  CL_ACTIVE"));
        let lines = pools_table(&[json!({"tenant": "a\u{1b}[2Jb"})]);
        assert!(lines[1].starts_with("a?[2Jb  -         -     -             -"));
    }

    #[test]
    fn tenant_view_has_summary_rejections_and_pools() {
        let stats = json!({
            "tenant": "acme",
            "clients": {"active": 1, "waiting": 0, "idle": 2, "pinned": 0},
            "servers": {"active": 1, "idle": 0, "connecting": 1},
            "totals": {"queries": 9, "transactions": 9, "bytes_from_clients": 0,
                       "bytes_to_clients": 0, "waits": 0},
            "rates": {"queries_per_s": 2.0, "transactions_per_s": 1.0,
                      "bytes_from_clients_per_s": 100.0, "bytes_to_clients_per_s": 2048.0},
            "wait": {"avg_ms": 0.0, "max_ms": 0.0},
            "backend_up": true,
            "rejected": {"auth_failed": 3, "too_many_connections": 1},
            "disk": {"bytes": 13002342, "limit_bytes": 16777216, "state": "warning",
                     "sampled_at": "2026-11-22T10:00:00.000000Z"},
            "pools": [pool("acme", "app", "web", "session", true)],
        });
        let lines = tenant_lines(&stats);
        assert_eq!(
            lines[0],
            "tenant acme: clients 1 active (0 pinned), 0 waiting, 2 idle; servers 1 active, 0 idle, \
             1 connecting; 2.0 q/s, 1.0 tx/s, in 100/s, out 2.0K/s; wait avg 0.0 ms, \
             max 0.0 ms; backend up"
        );
        assert_eq!(lines[1], "rejected: auth_failed 3, too_many_connections 1");
        assert_eq!(lines[2], "disk: 12.4M of 16.0M (warning)");
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("TENANT"));
        assert!(lines[5].starts_with("acme"));
        assert_eq!(lines.len(), 6);
        assert_eq!(
            disk_line(&json!({"disk": {"bytes": null, "limit_bytes": null, "state": "ok"}})),
            "disk: -, no limit"
        );
        assert_eq!(rejected_line(&json!({"rejected": {}})), "rejected: none");
    }

    #[test]
    fn bytes_are_humanized_in_powers_of_1024() {
        assert_eq!(human_bytes(0.0), "0");
        assert_eq!(human_bytes(1023.4), "1023");
        assert_eq!(human_bytes(1024.0), "1.0K");
        assert_eq!(human_bytes(1258.0), "1.2K");
        assert_eq!(human_bytes(3.4 * 1024.0 * 1024.0), "3.4M");
        assert_eq!(human_bytes(1024.0 * 1024.0 - 1.0), "1.0M");
        assert_eq!(human_bytes(5.0 * 1024f64.powi(3)), "5.0G");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_767_225_599), "2025-12-31 23:59:59 UTC");
        assert_eq!(at(1_772_323_200), "2026-03-01 00:00:00 UTC");
    }
}
