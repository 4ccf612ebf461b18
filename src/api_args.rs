//! What every admin API command takes (`--api`, `--token`, `--output`) and how it
//! prints: the plumbing `stats`, `tenants`, `roles` and `audit` share.

use std::io::Write;

use serde_json::Value;

use crate::api_client::ApiClient;

/// Where the admin API is, how to authenticate, and how to print its answers. The
/// flags are global, so they go before or after the subcommand
/// (`sluice tenants --output json list` or `sluice tenants list --output json`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the admin API ([admin] listen): http://HOST:PORT[/PREFIX].
    #[arg(
        long,
        value_name = "URL",
        env = "SLUICE_API",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Admin API"
    )]
    pub api: String,
    /// Admin API key. Prefer the environment variable: a command line is visible to
    /// every user of the machine.
    #[arg(
        long,
        value_name = "KEY",
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Admin API"
    )]
    pub token: Option<String>,
    /// table for people; json prints the API's own JSON, pretty-printed.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = Output::Table, global = true, help_heading = "Admin API")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl ApiArgs {
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(&self.api, self.token.clone())
    }
}

/// Writes `text` to stdout. A closed pipe (`sluice stats | head`) is a normal end,
/// not an error worth a message.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// One line each.
pub fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    print(&lines.iter().map(|l| format!("{l}\n")).collect::<String>())
}

/// The API's answer, pretty-printed; an empty answer (204) prints nothing.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    if value.is_null() {
        return Ok(());
    }
    print(&json_text(value))
}

pub fn json_text(value: &Value) -> String {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
    format!("{pretty}\n")
}
