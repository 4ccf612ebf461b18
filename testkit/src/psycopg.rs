//! Python's psycopg, with the libpq 18 its binary wheel bundles, as a client: a query
//! cancelled with `conn.cancel_safe()` (tests/scripts/psycopg_cancel.py; psycopg comes
//! from tests/scripts/requirements.txt, which scripts/test installs).

use std::process::Command;

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::clients::PgTarget;

/// One cancelled query: its SQLSTATE (`None`: it was not cancelled), the seconds from
/// the first cancel to its error, and the cancels sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancelled {
    pub sqlstate: Option<String>,
    pub seconds: f64,
    pub cancels: u64,
}

/// What a run of the script saw.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelRun {
    /// libpq's version (180006 for 18.6).
    pub libpq: u64,
    /// The protocol the connections agreed (30000 for 3.0, 30002 for 3.2).
    pub protocol: u64,
    pub rounds: Vec<Cancelled>,
}

/// Runs `rounds` queries through `target` with `max_protocol_version=version` ("3.0",
/// "3.2"), each cancelled once it runs.
pub fn cancel_rounds(target: &PgTarget, version: &str, rounds: usize) -> anyhow::Result<CancelRun> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scripts/psycopg_cancel.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(target.conninfo())
        .arg(version)
        .arg(rounds.to_string())
        .env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .context("running python3")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "psycopg_cancel.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_str(stdout.trim()).context("its output")?;
    let rounds = run["rounds"]
        .as_array()
        .context("rounds")?
        .iter()
        .map(|r| Cancelled {
            sqlstate: r["sqlstate"].as_str().map(str::to_owned),
            seconds: r["seconds"].as_f64().unwrap_or(f64::NAN),
            cancels: r["cancels"].as_u64().unwrap_or(0),
        })
        .collect();
    Ok(CancelRun {
        libpq: run["libpq"].as_u64().context("libpq")?,
        protocol: run["protocol"].as_u64().context("protocol")?,
        rounds,
    })
}
