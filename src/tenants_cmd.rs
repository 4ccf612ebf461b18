//! `sluice tenants create|list|get|update|suspend|resume|delete|hostnames`: thin
//! clients of the admin API's `/v1/tenants`. The server validates everything; the CLI builds the
//! request, prints the answer, and (with `--wait`) follows a provisioning job.

mod backend;
mod hostnames;
mod job;
mod settings;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{json, Map, Value};

use crate::api_args::{print_json, print_lines, ApiArgs, Output};
use crate::api_client::pages::Listing;
use crate::api_client::{encode_component, ApiClient, IdempotencyKey};
use crate::table::{self, scalar, text, Align, Column};
use backend::StaticBackendArgs;
use settings::Setting;

#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TenantsCommand {
    /// Create a tenant: the server provisions its backend in a job (202).
    Create(Box<CreateArgs>),
    /// List every tenant.
    List,
    /// Show one tenant: status, backend, pool settings, limits.
    Get { id: String },
    /// Change pool settings and limits live (only the keys given change).
    Update(UpdateArgs),
    /// Refuse new connections to a tenant (28000); --terminate also ends running ones.
    Suspend {
        id: String,
        /// Why; kept with the tenant and in the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// Also end the sessions already running.
        #[arg(long)]
        terminate: bool,
    },
    /// Accept connections to a suspended tenant again.
    Resume { id: String },
    /// The console's PAUSE, on the Sluice process the API belongs to: the tenant's
    /// clients wait for server connections until `unpause` (answers at once; `in_use`
    /// is how many are still lent out).
    Pause { id: String },
    /// The console's RESUME: the paused tenant's waiting clients go on.
    Unpause { id: String },
    /// Delete a tenant: the server drains and deprovisions it in a job (202).
    Delete {
        id: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// A tenant's own host names, each with its certificate (chosen by TLS SNI).
    #[command(subcommand)]
    Hostnames(hostnames::HostnamesCommand),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The tenant's id, a DNS label: clients reach it as ID.<sni_suffix>.
    id: String,
    /// A plan from the config's [plans.NAME]: pool, limits and backend size.
    #[arg(long, value_name = "NAME")]
    plan: Option<String>,
    /// A pool setting or limit, as in pool.size=20 or limits.allow_cidrs=10.0.0.0/8,::1/128
    /// (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<Setting>,
    /// The request body as JSON (`-`: standard input); ID, --plan, --set and the
    /// backend flags go over it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Sent as Idempotency-Key (a random one otherwise): to retry a create whose answer
    /// was lost without creating twice.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<IdempotencyKey>,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    backend: StaticBackendArgs,
}

#[derive(Debug, clap::Args)]
struct UpdateArgs {
    id: String,
    /// A pool setting or limit, as in pool.size=20 or limits.query_rate=100; integers,
    /// true/false and strings as typed; limits.allow_cidrs takes a comma-separated list
    /// (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<Setting>,
    /// The PATCH body as JSON (`-`: standard input); --set goes over it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::Args)]
struct WaitArg {
    /// Wait until the job ends (at most SECS seconds, 300 when left out), then show
    /// the tenant and job as they are; exit 1 if the job failed or is still running.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    wait: Option<u64>,
}

pub fn run(args: TenantsArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let output = args.api.output;
    crate::serve::tokio_runtime()?.block_on(async {
        match args.command {
            TenantsCommand::Create(create_args) => create(&client, output, *create_args).await,
            TenantsCommand::List => list(&client, output).await,
            TenantsCommand::Get { id } => {
                let tenant = client.get_json(&tenant_path(&id)).await?;
                show_tenant(output, &tenant)
            }
            TenantsCommand::Update(update) => {
                let body = patch_body(&update)?;
                let tenant = client.patch_json(&tenant_path(&update.id), &body).await?;
                show_tenant(output, &tenant)
            }
            TenantsCommand::Suspend {
                id,
                reason,
                terminate,
            } => {
                let mut body = json!({ "terminate": terminate });
                if let Some(reason) = reason {
                    body["reason"] = reason.into();
                }
                let path = format!("{}/suspend", tenant_path(&id));
                let tenant = client.post_json(&path, Some(&body)).await?;
                show_tenant(output, &tenant)
            }
            TenantsCommand::Resume { id } => {
                let path = format!("{}/resume", tenant_path(&id));
                let tenant = client.post_json(&path, None).await?;
                show_tenant(output, &tenant)
            }
            TenantsCommand::Pause { id } => {
                let path = format!("{}/pause", tenant_path(&id));
                show_pause(output, &client.post_json(&path, None).await?)
            }
            TenantsCommand::Unpause { id } => {
                let path = format!("{}/pause", tenant_path(&id));
                show_pause(output, &client.delete(&path).await?)
            }
            TenantsCommand::Delete { id, wait } => delete(&client, output, &id, wait).await,
            TenantsCommand::Hostnames(command) => hostnames::run(&client, output, command).await,
        }
    })
}

/// The answer of `pause` / `unpause`.
fn show_pause(output: Output, state: &serde_json::Value) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(state),
        Output::Table => print_lines(&[format!(
            "tenant {}: paused {}, {} server connection(s) in use",
            crate::table::text(state, "/tenant"),
            state["paused"],
            crate::table::count(state, "/in_use")
        )]),
    }
}

/// `/v1/tenants/{id}`, the id percent-encoded.
fn tenant_path(id: &str) -> String {
    format!("/v1/tenants/{}", encode_component(id))
}

async fn list(client: &ApiClient, output: Output) -> anyhow::Result<()> {
    let listing = Listing {
        path: "/v1/tenants",
        query: Vec::new(),
        field: "tenants",
        max_items: None,
    };
    let all = client.get_all(&listing).await?;
    match output {
        Output::Json => print_json(&all),
        Output::Table => print_lines(&tenants_table(as_array(&all["tenants"]))),
    }
}

fn as_array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

const COLUMNS: &[Column] = &[
    ("ID", Align::Left, |t| text(t, "/id")),
    ("STATUS", Align::Left, |t| text(t, "/status")),
    ("PLAN", Align::Left, |t| text(t, "/plan")),
    ("ADDRESS", Align::Left, |t| text(t, "/backend/address")),
    ("POOL", Align::Left, |t| {
        format!(
            "{}/{}",
            text(t, "/pool/mode"),
            t.pointer("/pool/size")
                .map_or_else(|| "-".to_owned(), scalar)
        )
    }),
];

/// `ID STATUS PLAN ADDRESS POOL`, POOL as mode/size.
fn tenants_table(tenants: &[Value]) -> Vec<String> {
    let mut lines = table::render(COLUMNS, tenants);
    if tenants.is_empty() {
        lines.push("(no tenants)".to_owned());
    }
    lines
}

fn show_tenant(output: Output, tenant: &Value) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(tenant),
        Output::Table => print_lines(&object_lines(tenant, "", TENANT_FIRST)),
    }
}

/// Top-level keys shown first, in this order; the rest follow in the API's order.
const TENANT_FIRST: &[&str] = &[
    "id",
    "status",
    "suspended_reason",
    "failed_reason",
    "plan",
    "backend",
    "connection_string",
    "pool",
    "limits",
];
const JOB_FIRST: &[&str] = &[
    "id",
    "kind",
    "tenant",
    "state",
    "steps_done",
    "attempts",
    "error",
];

/// An object as `key  value` lines, nested objects flattened to `pool.size`, so
/// fields the server adds show up without a new CLI.
fn object_lines(v: &Value, prefix: &str, first: &[&str]) -> Vec<String> {
    let Some(map) = v.as_object() else {
        return vec![scalar(v)];
    };
    let ordered = first
        .iter()
        .filter_map(|k| map.get_key_value(*k))
        .chain(map.iter().filter(|(k, _)| !first.contains(&k.as_str())));
    let mut pairs = Vec::new();
    for (k, v) in ordered {
        flatten(&format!("{prefix}{k}"), v, &mut pairs);
    }
    table::key_values(&pairs)
}

fn flatten(key: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        _ => out.push((table::printable(key), scalar(v))),
    }
}

/// The body of `POST /v1/tenants`: the `--file` object, then ID, --plan, the backend
/// flags and --set over it.
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    if args.backend.reads_stdin() && args.file.as_deref() == Some(std::path::Path::new("-")) {
        bail!("--file - and --admin-password-file - cannot both read standard input");
    }
    let mut body = match &args.file {
        Some(file) => settings::read_object(file)?,
        None => Map::new(),
    };
    if let Some(other) = body.get("id").filter(|v| v.as_str() != Some(&args.id)) {
        bail!("the body's id {other} is not {:?}", args.id);
    }
    body.insert("id".into(), args.id.clone().into());
    if let Some(plan) = &args.plan {
        body.insert("plan".into(), plan.clone().into());
    }
    if let Some(backend) = args.backend.to_json()? {
        body.insert("backend".into(), backend);
    }
    settings::apply(&mut body, &args.settings)?;
    Ok(Value::Object(body))
}

/// The body of `PATCH /v1/tenants/{id}`.
fn patch_body(args: &UpdateArgs) -> anyhow::Result<Value> {
    if args.settings.is_empty() && args.file.is_none() {
        bail!(
            "nothing to change: give --set SECTION.KEY=VALUE (e.g. --set pool.size=20) or --file"
        );
    }
    let mut body = match &args.file {
        Some(file) => settings::read_object(file)?,
        None => Map::new(),
    };
    settings::apply(&mut body, &args.settings)?;
    Ok(Value::Object(body))
}

async fn create(client: &ApiClient, output: Output, args: CreateArgs) -> anyhow::Result<()> {
    let body = create_body(&args)?;
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(IdempotencyKey::random);
    let answer = client
        .post_json_idempotent("/v1/tenants", &body, &key)
        .await
        .map_err(|e| {
            if e.may_have_been_applied() {
                anyhow!(
                    "{e}\nThe tenant may have been created. Run the same command with \
                     --idempotency-key {key} to retry without creating it twice."
                )
            } else {
                e.into()
            }
        })?;
    let Some(secs) = args.wait.wait else {
        return show_answer(output, &answer);
    };
    let timeout = Duration::from_secs(secs);
    let outcome = job::wait(client, answer["job"].clone(), timeout).await?;
    // The answer's view is from before provisioning: show the tenant as it is now
    // (active, or failed), or as it was if the API cannot say.
    let tenant = match client.get_json(&tenant_path(&args.id)).await {
        Ok(now) => now,
        Err(_) => answer["tenant"].clone(),
    };
    show_answer(output, &json!({"tenant": tenant, "job": outcome.job()}))?;
    match job::failure(&outcome, timeout) {
        Some(message) => Err(anyhow!(message)),
        None => Ok(()),
    }
}

async fn delete(client: &ApiClient, output: Output, id: &str, wait: WaitArg) -> anyhow::Result<()> {
    let answer = client.delete(&tenant_path(id)).await?;
    let Some(secs) = wait.wait else {
        return show_answer(output, &answer);
    };
    let timeout = Duration::from_secs(secs);
    let outcome = job::wait(client, answer["job"].clone(), timeout).await?;
    show_answer(output, &json!({"job": outcome.job()}))?;
    match job::failure(&outcome, timeout) {
        Some(message) => Err(anyhow!(message)),
        None => Ok(()),
    }
}

/// `{"tenant"?, "job"}` of a create or delete: the tenant's lines, then the job's
/// (prefixed `job.`).
fn show_answer(output: Output, answer: &Value) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(answer);
    }
    let mut lines = Vec::new();
    if let Some(tenant) = answer.get("tenant") {
        lines.extend(object_lines(tenant, "", TENANT_FIRST));
        lines.push(String::new());
    }
    if let Some(job) = answer.get("job") {
        lines.extend(object_lines(job, "job.", JOB_FIRST));
    }
    print_lines(&lines)
}

#[cfg(test)]
mod tests;
