//! `sluice roles list|create|rotate|delete --tenant ID`: login roles on a tenant's
//! backend, through `/v1/tenants/{id}/roles`. A created or rotated password is in the
//! answer once and nowhere else, so the table output shows it plainly and says so.

use std::io::Read;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::api_client::encode_component;
use crate::table::{self, text, time, Align, Column};

#[derive(Debug, clap::Args)]
pub struct RolesArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: RolesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RolesCommand {
    /// List a tenant's login roles.
    List {
        #[arg(long, value_name = "ID")]
        tenant: String,
    },
    /// Create a login role; prints its password (generated unless --password-stdin).
    Create(SetPassword),
    /// Give a role a new password; prints it (generated unless --password-stdin).
    Rotate(SetPassword),
    /// Drop a login role from the tenant's backend.
    Delete {
        #[arg(long, value_name = "ID")]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, clap::Args)]
struct SetPassword {
    #[arg(long, value_name = "ID")]
    tenant: String,
    /// The role's name.
    name: String,
    /// Read the password from standard input (one line) instead of letting the server
    /// generate one.
    #[arg(long)]
    password_stdin: bool,
}

pub fn run(args: RolesArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    crate::serve::tokio_runtime()?.block_on(async {
        match args.command {
            RolesCommand::List { tenant } => {
                let roles = client.get_json(&roles_path(&tenant)).await?;
                match output {
                    Output::Json => print_json(&roles),
                    Output::Table => print_lines(&roles_table(&roles)),
                }
            }
            RolesCommand::Create(set) => {
                let mut body = json!({ "name": set.name });
                if set.password_stdin {
                    body["password"] = read_stdin_password()?.into();
                }
                let answer = client
                    .post_json(&roles_path(&set.tenant), Some(&body))
                    .await?;
                show_password(output, &set, &answer)
            }
            RolesCommand::Rotate(set) => {
                let body = if set.password_stdin {
                    json!({ "password": read_stdin_password()? })
                } else {
                    json!({})
                };
                let path = format!("{}/rotate", role_path(&set.tenant, &set.name));
                let answer = client.post_json(&path, Some(&body)).await?;
                show_password(output, &set, &answer)
            }
            RolesCommand::Delete { tenant, name } => {
                let answer = client.delete(&role_path(&tenant, &name)).await?;
                match output {
                    Output::Json => print_json(&answer),
                    Output::Table => print_lines(&[format!(
                        "role {} deleted from tenant {}",
                        table::printable(&name),
                        table::printable(&tenant)
                    )]),
                }
            }
        }
    })
}

fn roles_path(tenant: &str) -> String {
    format!("/v1/tenants/{}/roles", encode_component(tenant))
}

fn role_path(tenant: &str, name: &str) -> String {
    format!("{}/{}", roles_path(tenant), encode_component(name))
}

/// One line of standard input, without its line end.
fn read_stdin_password() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from standard input")?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("--password-stdin: standard input holds no password");
    }
    Ok(password.to_owned())
}

/// The answer of a create or rotate. A generated password is printed plainly with a
/// warning on stderr; one the user chose is not echoed back.
fn show_password(output: Output, set: &SetPassword, answer: &Value) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(answer);
    }
    let lines = password_lines(&set.tenant, answer, set.password_stdin);
    if !set.password_stdin {
        eprintln!("warning: the password is shown only this once; store it now (it can be rotated, never read back)");
    }
    print_lines(&lines)
}

fn password_lines(tenant: &str, answer: &Value, chosen: bool) -> Vec<String> {
    let password = if chosen {
        "(the one read from standard input)".to_owned()
    } else {
        // Not made printable: a password with odd characters must come out exactly.
        answer["password"].as_str().unwrap_or("-").to_owned()
    };
    table::key_values(&[
        ("tenant".to_owned(), table::printable(tenant)),
        ("role".to_owned(), text(answer, "/name")),
        ("password".to_owned(), password),
    ])
}

const COLUMNS: &[Column] = &[
    ("NAME", Align::Left, |r| text(r, "/name")),
    ("CREATED", Align::Left, |r| time(r, "/created_at")),
    ("ROTATED", Align::Left, |r| time(r, "/rotated_at")),
];

fn roles_table(answer: &Value) -> Vec<String> {
    let roles = answer["roles"].as_array().map_or(&[][..], Vec::as_slice);
    let mut lines = table::render(COLUMNS, roles);
    if roles.is_empty() {
        lines.push("(no roles)".to_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        roles: RolesArgs,
    }

    fn parse(args: &[&str]) -> Result<RolesArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("roles").chain(args.iter().copied())).map(|c| c.roles)
    }

    #[test]
    fn paths_encode_tenant_and_role() {
        assert_eq!(roles_path("acme"), "/v1/tenants/acme/roles");
        assert_eq!(role_path("acme", "app"), "/v1/tenants/acme/roles/app");
        assert_eq!(
            role_path("acme", "we/ird name"),
            "/v1/tenants/acme/roles/we%2Fird%20name"
        );
    }

    #[test]
    fn commands_need_a_tenant() {
        assert!(parse(&["create", "app"]).is_err());
        assert!(parse(&["list"]).is_err());
        let args = parse(&["rotate", "--tenant", "acme", "app", "--password-stdin"]).unwrap();
        let RolesCommand::Rotate(set) = args.command else {
            panic!("not rotate")
        };
        assert_eq!(
            (set.tenant.as_str(), set.name.as_str(), set.password_stdin),
            ("acme", "app", true)
        );
    }

    #[test]
    fn passwords_show_once_and_chosen_ones_are_not_echoed() {
        let answer = json!({"name": "app", "password": "Xy7-secret"});
        assert_eq!(
            password_lines("acme", &answer, false),
            ["tenant    acme", "role      app", "password  Xy7-secret"]
        );
        assert_eq!(
            password_lines("acme", &answer, true)[2],
            "password  (the one read from standard input)"
        );
    }

    #[test]
    fn the_roles_table_shows_when_a_role_was_rotated() {
        let answer = json!({"roles": [
            {"name": "app", "created_at": "2026-01-01T00:00:00.123456Z", "rotated_at": null},
            {"name": "reporting", "created_at": "2026-01-02T00:00:00Z", "rotated_at": "2026-02-01T00:00:00Z"},
        ]});
        assert_eq!(
            roles_table(&answer),
            [
                "NAME       CREATED               ROTATED",
                "app        2026-01-01T00:00:00Z  -",
                "reporting  2026-01-02T00:00:00Z  2026-02-01T00:00:00Z",
            ]
        );
        assert_eq!(roles_table(&json!({"roles": []}))[1], "(no roles)");
    }
}
