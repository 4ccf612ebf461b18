//! `sluice tenants hostnames add|list|remove ID`: a tenant's own host names with their
//! certificates, through `/v1/tenants/{id}/hostnames`. The certificate chain and key are
//! read from files here and sent in the request; the server checks them (the name, that
//! the key is the certificate's, that the certificate covers the name and has not
//! expired) and never shows the key again.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

use crate::api_args::{print_json, print_lines, Output};
use crate::api_client::{encode_component, ApiClient};
use crate::table::{self, text, time, Align, Column};

#[derive(Debug, clap::Subcommand)]
pub(super) enum HostnamesCommand {
    /// Add a host name with its certificate, or replace the certificate of one the
    /// tenant has (clients whose TLS server name is exactly HOSTNAME reach the tenant).
    Add {
        id: String,
        hostname: String,
        /// The certificate chain (PEM), the certificate for HOSTNAME first.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// List a tenant's host names: certificate subject, names, expiry, fingerprint.
    List { id: String },
    /// Stop serving a host name (refused from the next connection on).
    Remove { id: String, hostname: String },
}

pub(super) async fn run(
    client: &ApiClient,
    output: Output,
    command: HostnamesCommand,
) -> anyhow::Result<()> {
    match command {
        HostnamesCommand::Add {
            id,
            hostname,
            cert,
            key,
        } => {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the {what} from {}", path.display()))
            };
            let body = json!({
                "hostname": hostname,
                "cert": read(&cert, "certificate chain")?,
                "key": read(&key, "private key")?,
            });
            let answer = client.post_json(&hostnames_path(&id), Some(&body)).await?;
            match output {
                Output::Json => print_json(&answer),
                Output::Table => print_lines(&hostnames_table(&[answer])),
            }
        }
        HostnamesCommand::List { id } => {
            let answer = client.get_json(&hostnames_path(&id)).await?;
            match output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    let items = answer["hostnames"]
                        .as_array()
                        .map_or(&[][..], Vec::as_slice);
                    print_lines(&hostnames_table(items))
                }
            }
        }
        HostnamesCommand::Remove { id, hostname } => {
            let path = format!("{}/{}", hostnames_path(&id), encode_component(&hostname));
            let answer = client.delete(&path).await?;
            match output {
                Output::Json => print_json(&answer),
                Output::Table => print_lines(&[format!(
                    "host name {} removed from tenant {}",
                    table::printable(&hostname),
                    table::printable(&id)
                )]),
            }
        }
    }
}

fn hostnames_path(id: &str) -> String {
    format!("/v1/tenants/{}/hostnames", encode_component(id))
}

const COLUMNS: &[Column] = &[
    ("HOSTNAME", Align::Left, |h| text(h, "/hostname")),
    ("NOT AFTER", Align::Left, |h| time(h, "/not_after")),
    ("SANS", Align::Left, |h| {
        let sans = h["sans"].as_array().map_or(&[][..], Vec::as_slice);
        let names: Vec<String> = sans
            .iter()
            .map(|s| table::printable(s.as_str().unwrap_or("?")))
            .collect();
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(",")
        }
    }),
    ("FINGERPRINT", Align::Left, |h| {
        // The first 16 hex digits tell certificates apart; --output json has all.
        text(h, "/fingerprint").chars().take(16).collect()
    }),
];

fn hostnames_table(items: &[Value]) -> Vec<String> {
    let mut lines = table::render(COLUMNS, items);
    if items.is_empty() {
        lines.push("(no host names)".to_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_names_expiry_and_a_short_fingerprint() {
        let item = json!({
            "hostname": "db.customer.test", "tenant": "acme", "subject": "CN=db.customer.test",
            "sans": ["db.customer.test", "pg.customer.test"],
            "not_after": "2027-01-01T00:00:00Z", "fingerprint": "0123456789abcdef0123",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        });
        assert_eq!(
            hostnames_table(&[item]),
            [
                "HOSTNAME          NOT AFTER             SANS                               FINGERPRINT",
                "db.customer.test  2027-01-01T00:00:00Z  db.customer.test,pg.customer.test  0123456789abcdef",
            ]
        );
        assert_eq!(hostnames_table(&[])[1], "(no host names)");
        assert_eq!(hostnames_path("acme"), "/v1/tenants/acme/hostnames");
    }
}
