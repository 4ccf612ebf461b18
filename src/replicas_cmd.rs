//! `sluice replicas`: the live replicas of the fleet, through `/v1/replicas` (any
//! replica answers with the same list: it reads the control store).

use serde_json::Value;

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::table::{self, count, text, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct ReplicasArgs {
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: ReplicasArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    crate::serve::tokio_runtime()?.block_on(async {
        let answer = client.get_json("/v1/replicas").await?;
        match output {
            Output::Json => print_json(&answer),
            Output::Table => print_lines(&lines(&answer)),
        }
    })
}

const COLUMNS: &[Column] = &[
    ("ID", Align::Left, |r| text(r, "/id")),
    ("SLOT", Align::Right, |r| count(r, "/slot")),
    ("STATE", Align::Left, |r| text(r, "/state")),
    ("PROXY", Align::Left, |r| list(r, "/proxy_addrs")),
    ("ADMIN", Align::Left, |r| text(r, "/admin_addr")),
    ("INTERNAL", Align::Left, |r| text(r, "/internal_addr")),
    ("VERSION", Align::Left, |r| text(r, "/version")),
    ("STARTED", Align::Left, |r| time(r, "/started_at")),
    ("HEARTBEAT_MS", Align::Right, |r| {
        count(r, "/heartbeat_age_ms")
    }),
];

fn list(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_array) {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| table::printable(i.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn lines(answer: &Value) -> Vec<String> {
    if answer["fleet"] == Value::Bool(false) {
        return vec!["not in a fleet (this Sluice has no [fleet] section)".into()];
    }
    let replicas = answer["replicas"].as_array().map_or(&[][..], Vec::as_slice);
    table::render(COLUMNS, replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_of_replicas_or_a_word_when_alone() {
        let answer = json!({"fleet": true, "replicas": [
            {"id": "r0", "slot": 0, "state": "serving", "proxy_addrs": ["10.0.0.1:6432"],
             "admin_addr": "10.0.0.1:8080", "internal_addr": "10.0.0.1:7000",
             "version": "0.1.0", "started_at": "2026-12-07T18:00:00.000000Z",
             "heartbeat_age_ms": 120},
        ]});
        let out = lines(&answer);
        assert!(out[0].starts_with("ID"), "{out:?}");
        assert!(
            out[1].contains("r0") && out[1].contains("10.0.0.1:6432") && out[1].contains("serving"),
            "{out:?}"
        );
        assert_eq!(
            lines(&json!({"fleet": false, "replicas": []})),
            vec!["not in a fleet (this Sluice has no [fleet] section)"]
        );
    }
}
