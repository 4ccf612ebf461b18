//! The signals `serve` and `demo` answer, and what SIGHUP does: SIGINT/SIGTERM drain
//! (a second one hurries), SIGHUP reloads the config file (`reload`), and the systemd
//! notifications around them (`$NOTIFY_SOCKET`). See docs/operations.md.

use std::path::PathBuf;

use anyhow::Context;
use control::Plane;
use proxy::tls::ServerTls;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{changed_keys, is_live, Config};

/// What the process's signals ask for. Installed before anything starts, so that no
/// signal meets its default action (SIGHUP would end the process and leave the
/// Postgres clusters it runs behind).
pub struct Signals {
    /// The first SIGINT or SIGTERM: stop accepting and let clients finish for
    /// `[proxy] shutdown_grace_s`.
    pub shutdown: CancellationToken,
    /// The second: end the remaining clients now (57P01), then stop as usual.
    pub hurry: CancellationToken,
    /// One message per SIGHUP not yet acted on (several while a reload runs count once).
    pub reload: tokio::sync::mpsc::Receiver<()>,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        let (reload, reloads) = tokio::sync::mpsc::channel(1);
        let (first, second) = (shutdown.clone(), hurry.clone());
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => {
                        let _ = reload.try_send(());
                        continue;
                    }
                };
                if !first.is_cancelled() {
                    tracing::info!("{name}: shutting down");
                    first.cancel();
                } else if !second.is_cancelled() {
                    tracing::warn!("{name} again: ending the remaining clients now");
                    second.cancel();
                } else {
                    tracing::info!("{name}: already stopping");
                }
            }
        });
        Ok(Signals {
            shutdown,
            hurry,
            reload: reloads,
        })
    }
}

/// The config file `serve` runs with, as it was read at start: what SIGHUP reads again.
pub struct ConfigFile {
    pub path: PathBuf,
    pub table: toml::Table,
}

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) how the service is; nothing when
/// Sluice does not run under it.
pub fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// The `id`s of a config file's `[[tenants]]`.
fn tenant_ids(table: &toml::Table) -> Vec<String> {
    let Some(tenants) = table.get("tenants").and_then(toml::Value::as_array) else {
        return Vec::new();
    };
    tenants
        .iter()
        .filter_map(|t| t.get("id")?.as_str().map(str::to_owned))
        .collect()
}

/// SIGHUP: reads the config file again and validates it whole. A file with problems
/// changes nothing (each problem is logged). Otherwise the pool settings and limits of
/// `[defaults.*]` and `[plans.*]` and the `[[tenants]]` entries are applied live (see
/// `config::is_live`); every other key that differs from the file Sluice started with is
/// logged as needing a restart.
/// `last` is the file of the last reload that succeeded (or the first).
pub async fn reload(file: &ConfigFile, last: &mut toml::Table, plane: &Plane) {
    let path = file.path.display();
    tracing::info!(%path, "SIGHUP: reading the config file again");
    let (config, table) = match Config::read(&file.path) {
        Ok(read) => read,
        Err(errors) => {
            for problem in &errors.errors {
                tracing::error!(%path, "config reload: {problem}");
            }
            tracing::error!(
                %path,
                problems = errors.errors.len(),
                "config reload refused: the running config stays in force"
            );
            return;
        }
    };
    // What `config check` reads besides the file: password files, the TLS files.
    let runtime = config
        .runtime()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            if let Some(tls) = &runtime.proxy.tls {
                ServerTls::load(tls)?;
            }
            Ok(runtime)
        });
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(problem) => {
            tracing::error!(%path, "config reload: {problem:#}");
            tracing::error!(
                %path,
                problems = 1,
                "config reload refused: the running config stays in force"
            );
            return;
        }
    };
    for key in changed_keys(&file.table, &table) {
        if !is_live(&key) {
            tracing::warn!(%path, "needs a restart: {key} (its value at start stays in force)");
        }
    }
    let now: std::collections::BTreeSet<&str> = runtime
        .tenants
        .iter()
        .map(|t| t.record.id.as_str())
        .collect();
    for gone in tenant_ids(last)
        .iter()
        .filter(|id| !now.contains(id.as_str()))
    {
        tracing::warn!(
            %path,
            tenant = %gone,
            "tenant {gone} is no longer in the config file: it stays in the control store \
             (delete it with DELETE /v1/tenants/{gone} or `sluice tenants delete {gone}`)"
        );
    }
    let live: Vec<String> = changed_keys(last, &table)
        .into_iter()
        .filter(|key| is_live(key))
        .collect();
    // Plans and config tenants are put in force even when none changed since the last
    // reload: it costs one catalog rebuild and leaves no doubt about what runs.
    match plane
        .sync
        .reconfigure(&plane.control, runtime.plans, runtime.tenants)
        .await
    {
        Ok(()) => {
            *last = table;
            if live.is_empty() {
                tracing::info!(%path, "config reloaded: no live setting changed");
            } else {
                tracing::info!(%path, changed = %live.join(", "), "config reloaded: applied live");
            }
        }
        Err(e) => {
            tracing::error!(%path, error = %format!("{e:#}"), "config reload: applying the defaults, plans and tenants failed")
        }
    }
}
