//! `sluice keys create|list|revoke`: the admin API's own keys, through
//! `/v1/api-keys` (an admin key is needed). A created key is in the answer once and
//! nowhere else, so the table output shows it plainly and says so.

use serde_json::{json, Value};

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::api_client::encode_component;
use crate::table::{self, text, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// List the API keys (revoked ones too, with when).
    List,
    /// Create a key; prints it (shown only this once).
    Create {
        /// What the key may do: viewer (read), operator (change tenants), admin (also
        /// manage keys).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// A name to tell it by (at most 200 bytes), e.g. the dashboard that uses it.
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a key by its id (the 8 hex digits after `sk_`); it stops working at once.
    Revoke { id: String },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    crate::serve::tokio_runtime()?.block_on(async {
        match args.command {
            KeysCommand::List => {
                let keys = client.get_json("/v1/api-keys").await?;
                match output {
                    Output::Json => print_json(&keys),
                    Output::Table => print_lines(&keys_table(&keys)),
                }
            }
            KeysCommand::Create { role, name } => {
                let mut body = json!({ "role": role });
                if let Some(name) = name {
                    body["name"] = name.into();
                }
                let answer = client.post_json("/v1/api-keys", Some(&body)).await?;
                if output == Output::Json {
                    return print_json(&answer);
                }
                eprintln!("warning: the key is shown only this once; store it now (it can be revoked, never read back)");
                print_lines(&created_lines(&answer))
            }
            KeysCommand::Revoke { id } => {
                let path = format!("/v1/api-keys/{}", encode_component(&id));
                let answer = client.delete(&path).await?;
                match output {
                    Output::Json => print_json(&answer),
                    Output::Table => {
                        print_lines(&[format!("API key {} revoked", table::printable(&id))])
                    }
                }
            }
        }
    })
}

fn created_lines(answer: &Value) -> Vec<String> {
    table::key_values(&[
        ("id".to_owned(), text(answer, "/id")),
        ("role".to_owned(), text(answer, "/role")),
        ("name".to_owned(), text(answer, "/name")),
        // Not made printable: the key must come out exactly.
        (
            "key".to_owned(),
            answer["key"].as_str().unwrap_or("-").to_owned(),
        ),
    ])
}

const COLUMNS: &[Column] = &[
    ("ID", Align::Left, |r| text(r, "/id")),
    ("ROLE", Align::Left, |r| text(r, "/role")),
    ("NAME", Align::Left, |r| text(r, "/name")),
    ("CREATED", Align::Left, |r| time(r, "/created_at")),
    ("REVOKED", Align::Left, |r| time(r, "/revoked_at")),
];

fn keys_table(answer: &Value) -> Vec<String> {
    let keys = answer["api_keys"].as_array().map_or(&[][..], Vec::as_slice);
    table::render(COLUMNS, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        keys: KeysArgs,
    }

    fn parse(args: &[&str]) -> Result<KeysArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("keys").chain(args.iter().copied())).map(|c| c.keys)
    }

    #[test]
    fn create_needs_a_known_role() {
        assert!(parse(&["create"]).is_err());
        assert!(parse(&["create", "--role", "root"]).is_err());
        let args = parse(&["create", "--role", "viewer", "--name", "grafana"]).unwrap();
        let KeysCommand::Create { role, name } = args.command else {
            panic!("not create")
        };
        assert_eq!(
            (role.as_str(), name.as_deref()),
            ("viewer", Some("grafana"))
        );
    }

    #[test]
    fn a_created_key_is_printed_exactly() {
        let answer =
            json!({"id": "3f9c01ab", "key": "sk_3f9c01ab_0123", "role": "viewer", "name": null});
        let lines = created_lines(&answer);
        assert!(
            lines.iter().any(|l| l.ends_with("sk_3f9c01ab_0123")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("3f9c01ab")), "{lines:?}");
    }
}
