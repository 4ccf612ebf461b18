//! `sluice audit list|verify`: the audit log through `/v1/audit-events` (newest
//! first) and `/v1/audit-events/verify` (the hash chain recomputed by the server).

use anyhow::bail;
use serde_json::Value;

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::api_client::pages::Listing;
use crate::table::{self, count, text, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// List events, newest first.
    List(ListArgs),
    /// Recompute the hash chain; exit 1 if an event was changed or removed.
    Verify,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Events about this tenant (its target is the tenant or starts with TENANT/).
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Events of one action, as in tenant.update or api_key.create.
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Events at or after TIME (RFC 3339 UTC: 2026-11-22T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Events before TIME (RFC 3339 UTC).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Show at most N events.
    #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "all",
          value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Show every matching event.
    #[arg(long)]
    all: bool,
}

impl ListArgs {
    fn listing(&self) -> Listing<'static> {
        let filters = [
            ("tenant", &self.tenant),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
        ];
        Listing {
            path: "/v1/audit-events",
            query: filters
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
                .collect(),
            field: "events",
            max_items: (!self.all).then(|| usize::try_from(self.limit).unwrap_or(usize::MAX)),
        }
    }
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    crate::serve::tokio_runtime()?.block_on(async {
        match args.command {
            AuditCommand::List(list) => {
                let events = client.get_all(&list.listing()).await?;
                match output {
                    Output::Json => print_json(&events)?,
                    Output::Table => {
                        print_lines(&events_table(events["events"].as_array().map_or(&[], Vec::as_slice)))?;
                        if !events["next_cursor"].is_null() {
                            eprintln!("(more events: use --limit N or --all)");
                        }
                    }
                }
                Ok(())
            }
            AuditCommand::Verify => {
                let verdict = client.get_json("/v1/audit-events/verify").await?;
                match output {
                    Output::Json => print_json(&verdict)?,
                    Output::Table => print_lines(&[verdict_line(&verdict)])?,
                }
                if verdict["ok"].as_bool() != Some(true) {
                    bail!(
                        "the audit chain does not verify: it breaks at event {} (an event was changed or removed there)",
                        count(&verdict, "/broken_at")
                    );
                }
                Ok(())
            }
        }
    })
}

const COLUMNS: &[Column] = &[
    ("ID", Align::Right, |e| count(e, "/id")),
    ("AT", Align::Left, |e| time(e, "/at")),
    ("ACTOR", Align::Left, |e| text(e, "/actor")),
    ("ACTION", Align::Left, |e| text(e, "/action")),
    ("TARGET", Align::Left, |e| text(e, "/target")),
];

fn events_table(events: &[Value]) -> Vec<String> {
    let mut lines = table::render(COLUMNS, events);
    if events.is_empty() {
        lines.push("(no events)".to_owned());
    }
    lines
}

fn verdict_line(v: &Value) -> String {
    match v["ok"].as_bool() {
        Some(true) => format!(
            "audit log OK: {} events, the hash chain is intact",
            count(v, "/events")
        ),
        _ => format!(
            "audit log BROKEN at event {} ({} events)",
            count(v, "/broken_at"),
            count(v, "/events")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditArgs,
    }

    fn list_args(args: &[&str]) -> Result<ListArgs, clap::Error> {
        let cli = Cli::try_parse_from(["audit", "list"].into_iter().chain(args.iter().copied()))?;
        match cli.audit.command {
            AuditCommand::List(list) => Ok(list),
            AuditCommand::Verify => panic!("not list"),
        }
    }

    #[test]
    fn filters_become_the_apis_query_parameters() {
        let listing = list_args(&[
            "--tenant",
            "acme",
            "--action",
            "tenant.suspend",
            "--since",
            "2026-01-01T00:00:00Z",
        ])
        .unwrap()
        .listing();
        assert_eq!(
            listing.query,
            [
                ("tenant", "acme".to_owned()),
                ("action", "tenant.suspend".to_owned()),
                ("since", "2026-01-01T00:00:00Z".to_owned())
            ]
        );
        assert_eq!(listing.max_items, Some(100));
        assert_eq!(list_args(&["--all"]).unwrap().listing().max_items, None);
        assert_eq!(
            list_args(&["--limit", "5"]).unwrap().listing().max_items,
            Some(5)
        );
        assert!(list_args(&["--limit", "5", "--all"]).is_err());
        assert!(list_args(&["--limit", "0"]).is_err());
    }

    #[test]
    fn the_events_table_is_compact() {
        let events = [
            json!({"id": 12, "at": "2026-11-22T23:40:01.123456Z", "actor": "3f9c01ab",
                   "source_ip": "10.0.0.9", "action": "tenant.suspend", "target": "acme",
                   "details": {"reason": "unpaid"}}),
            json!({"id": 9, "at": "2026-11-22T23:00:00Z", "actor": null,
                   "action": "tenant.create", "target": "acme"}),
        ];
        assert_eq!(
            events_table(&events),
            [
                "ID  AT                    ACTOR     ACTION          TARGET",
                "12  2026-11-22T23:40:01Z  3f9c01ab  tenant.suspend  acme",
                " 9  2026-11-22T23:00:00Z  -         tenant.create   acme",
            ]
        );
        assert_eq!(events_table(&[])[1], "(no events)");
    }

    #[test]
    fn verdicts_read_plainly() {
        assert_eq!(
            verdict_line(&json!({"ok": true, "events": 42})),
            "audit log OK: 42 events, the hash chain is intact"
        );
        assert_eq!(
            verdict_line(&json!({"ok": false, "events": 42, "broken_at": 17})),
            "audit log BROKEN at event 17 (42 events)"
        );
    }
}
