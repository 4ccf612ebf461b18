//! `sluice clients` and `sluice servers`: PgBouncer's SHOW CLIENTS and SHOW SERVERS,
//! read from a running Sluice's admin API (`/v1/clients`, `/v1/servers`). The
//! console's `SHOW CLIENTS` / `SHOW SERVERS` list the same entries.

use serde_json::Value;

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::api_client::encode_component;
use crate::table::{self, count, text, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct ConnectionsArgs {
    /// Only this tenant's connections.
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Which list.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Clients,
    Servers,
}

pub fn run(kind: Kind, args: ConnectionsArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let (path, field) = match kind {
        Kind::Clients => ("/v1/clients", "clients"),
        Kind::Servers => ("/v1/servers", "servers"),
    };
    let path = match &args.tenant {
        Some(tenant) => format!("{path}?tenant={}", encode_component(tenant)),
        None => path.to_owned(),
    };
    let value = crate::serve::tokio_runtime()?.block_on(client.get_json(&path))?;
    if args.api.output == Output::Json {
        return print_json(&value);
    }
    let items = value
        .get(field)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let lines = match kind {
        Kind::Clients => clients_table(items),
        Kind::Servers => servers_table(items),
    };
    print_lines(&lines)
}

/// A nullable number field, `-` when null.
fn maybe(v: &Value, pointer: &str) -> String {
    count(v, pointer)
}

const CLIENT_COLUMNS: &[Column] = &[
    ("ID", Align::Right, |c| count(c, "/id")),
    ("TENANT", Align::Left, |c| text(c, "/tenant")),
    ("DATABASE", Align::Left, |c| text(c, "/database")),
    ("USER", Align::Left, |c| text(c, "/user")),
    ("STATE", Align::Left, |c| text(c, "/state")),
    ("ADDR", Align::Left, |c| {
        format!("{}:{}", text(c, "/addr"), count(c, "/port"))
    }),
    ("TLS", Align::Left, |c| yes_no(c, "/tls")),
    ("MODE", Align::Left, |c| text(c, "/pool_mode")),
    ("CONNECTED_AT", Align::Left, |c| time(c, "/connected_at")),
    ("STATE_SINCE", Align::Left, |c| time(c, "/state_since")),
    ("SERVER", Align::Right, |c| maybe(c, "/server_id")),
    ("BACKEND_PID", Align::Right, |c| maybe(c, "/backend_pid")),
    ("IN", Align::Right, |c| count(c, "/bytes_received")),
    ("OUT", Align::Right, |c| count(c, "/bytes_sent")),
];

const SERVER_COLUMNS: &[Column] = &[
    ("ID", Align::Right, |s| count(s, "/id")),
    ("TENANT", Align::Left, |s| text(s, "/tenant")),
    ("DATABASE", Align::Left, |s| text(s, "/database")),
    ("USER", Align::Left, |s| text(s, "/user")),
    ("STATE", Align::Left, |s| text(s, "/state")),
    ("ADDR", Align::Left, |s| text(s, "/addr")),
    ("BACKEND_PID", Align::Right, |s| maybe(s, "/backend_pid")),
    ("CONNECTED_AT", Align::Left, |s| time(s, "/connected_at")),
    ("STATE_SINCE", Align::Left, |s| time(s, "/state_since")),
    ("CLIENT", Align::Right, |s| maybe(s, "/client_id")),
];

fn yes_no(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_bool) {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

pub fn clients_table(clients: &[Value]) -> Vec<String> {
    let mut lines = table::render(CLIENT_COLUMNS, clients);
    if clients.is_empty() {
        lines.push("(no clients logged in)".to_owned());
    }
    lines
}

pub fn servers_table(servers: &[Value]) -> Vec<String> {
    let mut lines = table::render(SERVER_COLUMNS, servers);
    if servers.is_empty() {
        lines.push("(no server connections open)".to_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_client_line_reads_like_show_clients() {
        let lines = clients_table(&[json!({
            "id": 7, "tenant": "acme", "database": "app", "user": "app", "state": "idle",
            "addr": "10.0.0.9", "port": 50432, "tls": true, "pool_mode": "transaction",
            "connected_at": "2026-12-07T17:44:11.123Z", "state_since": "2026-12-07T17:45:00.000Z",
            "server_id": null, "backend_pid": null, "bytes_received": 120, "bytes_sent": 900
        })]);
        assert!(lines[0].starts_with("ID  TENANT"), "{lines:?}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "7",
                "acme",
                "app",
                "app",
                "idle",
                "10.0.0.9:50432",
                "yes",
                "transaction",
                "2026-12-07T17:44:11Z",
                "2026-12-07T17:45:00Z",
                "-",
                "-",
                "120",
                "900"
            ]
        );
        assert_eq!(servers_table(&[])[1], "(no server connections open)");
    }
}
