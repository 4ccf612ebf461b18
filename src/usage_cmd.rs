//! `sluice usage TENANT [--from TIME] [--to TIME] [--granularity hour|day] [--csv]`:
//! what a tenant used, per hour or day, through `/v1/tenants/{id}/usage` (a table, the
//! API's JSON with `--output json`, or the API's CSV with `--csv`).

use serde_json::Value;

use crate::api_args::{print, print_json, print_lines, ApiArgs, Output};
use crate::api_client::encode_component;
use crate::table::{self, count, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The tenant's id.
    tenant: String,
    /// From this time on (RFC 3339 UTC: 2026-11-22T00:00:00Z), rounded down to its
    /// hour or day. Default: 24 hours (by day: 30 days) before --to.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Up to this time, exclusive (RFC 3339 UTC). Default: now.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// One line per hour or per UTC day.
    #[arg(long, value_enum, default_value_t = Granularity::Hour)]
    granularity: Granularity,
    /// Print the API's CSV (a header line, then one line per hour or day).
    #[arg(long, conflicts_with = "output")]
    csv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Granularity {
    Hour,
    Day,
}

impl UsageArgs {
    /// The API path with the query the flags make.
    fn path(&self) -> String {
        let mut query = vec![format!(
            "granularity={}",
            match self.granularity {
                Granularity::Hour => "hour",
                Granularity::Day => "day",
            }
        )];
        for (key, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(v) = value {
                query.push(format!("{key}={}", encode_component(v)));
            }
        }
        if self.csv {
            query.push("format=csv".into());
        }
        format!(
            "/v1/tenants/{}/usage?{}",
            encode_component(&self.tenant),
            query.join("&")
        )
    }
}

pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    let path = args.path();
    crate::serve::tokio_runtime()?.block_on(async {
        if args.csv {
            return print(&client.get_text(&path).await?);
        }
        let answer = client.get_json(&path).await?;
        match output {
            Output::Json => print_json(&answer),
            Output::Table => print_lines(&lines(&answer)),
        }
    })
}

const COLUMNS: &[Column] = &[
    ("START", Align::Left, |u| time(u, "/start")),
    ("CONN_S", Align::Right, |u| {
        seconds(u, "/connection_seconds")
    }),
    ("LOGINS", Align::Right, |u| count(u, "/client_connections")),
    ("QUERIES", Align::Right, |u| count(u, "/queries")),
    ("XACTS", Align::Right, |u| count(u, "/transactions")),
    ("BYTES_IN", Align::Right, |u| {
        count(u, "/bytes_from_clients")
    }),
    ("BYTES_OUT", Align::Right, |u| count(u, "/bytes_to_clients")),
    ("PEAK_SERVERS", Align::Right, |u| {
        count(u, "/peak_server_connections")
    }),
    ("DISK_BYTES", Align::Right, |u| count(u, "/disk_bytes")),
];

/// Seconds with one decimal (`-` when absent).
fn seconds(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_f64) {
        Some(s) => format!("{s:.1}"),
        None => "-".into(),
    }
}

/// A line per bucket, then the totals.
fn lines(answer: &Value) -> Vec<String> {
    let usage = answer["usage"].as_array().map_or(&[][..], Vec::as_slice);
    if usage.is_empty() {
        return vec![format!(
            "no usage recorded for {} from {} to {}",
            table::text(answer, "/tenant"),
            time(answer, "/from"),
            time(answer, "/to")
        )];
    }
    let mut items = usage.to_vec();
    let mut totals = answer["totals"].clone();
    if let Some(t) = totals.as_object_mut() {
        t.insert("start".into(), Value::String("total".into()));
    }
    items.push(totals);
    table::render(COLUMNS, &items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        usage: UsageArgs,
    }

    fn args(argv: &[&str]) -> Result<UsageArgs, clap::Error> {
        Cli::try_parse_from(["usage"].into_iter().chain(argv.iter().copied())).map(|c| c.usage)
    }

    #[test]
    fn flags_become_the_apis_query() {
        assert_eq!(
            args(&["acme"]).unwrap().path(),
            "/v1/tenants/acme/usage?granularity=hour"
        );
        assert_eq!(
            args(&[
                "acme",
                "--from",
                "2026-11-22T00:00:00Z",
                "--to",
                "2026-11-23T00:00:00Z",
                "--granularity",
                "day",
                "--csv"
            ])
            .unwrap()
            .path(),
            "/v1/tenants/acme/usage?granularity=day&from=2026-11-22T00%3A00%3A00Z\
             &to=2026-11-23T00%3A00%3A00Z&format=csv"
        );
        assert!(args(&["acme", "--granularity", "week"]).is_err());
        assert!(args(&["acme", "--csv", "--output", "json"]).is_err());
        assert!(args(&[]).is_err());
    }

    #[test]
    fn a_line_per_bucket_and_the_totals() {
        let bucket = json!({"start": "2026-11-22T10:00:00.000000Z", "connection_seconds": 12.34,
            "client_connections": 3, "queries": 40, "transactions": 20, "bytes_from_clients": 1000,
            "bytes_to_clients": 5000, "peak_server_connections": 2, "disk_bytes": null});
        let mut totals = bucket.clone();
        totals.as_object_mut().unwrap().remove("start");
        let out = lines(&json!({"tenant": "acme", "usage": [bucket], "totals": totals}));
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].starts_with("START"), "{out:?}");
        assert!(
            out[1].starts_with("2026-11-22T10:00:00Z") && out[1].contains("12.3"),
            "{out:?}"
        );
        assert!(out[2].starts_with("total"), "{out:?}");
        let none = lines(&json!({"tenant": "acme", "usage": [], "totals": {},
            "from": "2026-11-22T00:00:00.000000Z", "to": "2026-11-23T00:00:00.000000Z"}));
        assert_eq!(
            none,
            ["no usage recorded for acme from 2026-11-22T00:00:00Z to 2026-11-23T00:00:00Z"]
        );
    }
}
