//! The control store as `sluice serve` opens it: an external PostgreSQL
//! (`[control] database_url`) or the embedded cluster under `data_dir/control`, connected
//! and migrated at start.
//!
//! A store that cannot be reached at start does not stop Sluice: the data plane serves
//! the config file's tenants, `/readyz` says `"control_store": "unreachable: <why>"`, and
//! the endpoints that need the store (changes, which must be audited; API keys; the audit
//! log) answer 503 `unavailable`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::store::{EmbeddedControl, Store};

/// `[control]` of the config file, and where the embedded store lives.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// An external store; None: the embedded cluster under `data_dir/control`.
    pub database_url: Option<String>,
    /// A separate database for the audit log; None: the control store keeps it.
    pub audit_database_url: Option<String>,
    pub data_dir: PathBuf,
    /// How often refused connections are summed into the audit log (`[admin]
    /// refusal_audit_interval_s`).
    pub refusal_audit_interval: Duration,
    /// `[fleet] id`: this replica's tenants with host-bound backends, and the jobs it
    /// may run (`Store::with_home`).
    pub home: Option<String>,
}

/// The control store as this process opened it.
#[derive(Debug, Clone)]
pub enum Control {
    /// Connected and migrated; `kind` is `embedded` or `external`.
    Ok {
        store: Arc<Store>,
        kind: &'static str,
    },
    /// Not reachable at start, and why.
    Unreachable(String),
}

impl Control {
    /// The store, or why there is none (the admin API answers it as 503 `unavailable`).
    pub fn store(&self) -> Result<&Store, StoreUnavailable> {
        match self {
            Control::Ok { store, .. } => Ok(store),
            Control::Unreachable(why) => Err(StoreUnavailable(why.clone())),
        }
    }

    /// What `/readyz` says about the store.
    pub async fn status(&self) -> String {
        match self {
            Control::Ok { store, kind } => {
                // A call may hold the store for a while; do not hang readiness on it.
                match tokio::time::timeout(Duration::from_millis(2500), store.ping()).await {
                    Ok(Ok(())) => format!("ok ({kind})"),
                    Ok(Err(e)) => format!("unreachable: {e:#}"),
                    Err(_) => format!("ok ({kind}, busy)"),
                }
            }
            Control::Unreachable(why) => format!("unreachable: {why}"),
        }
    }
}

/// The control store could not be reached at start, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the control store is unreachable ({0}); the data plane still serves")]
pub struct StoreUnavailable(pub String);

/// An opened control store; keep it for the process lifetime and call
/// [`OpenedControl::stop`] after the proxy drained.
#[derive(Debug)]
pub struct OpenedControl {
    pub control: Control,
    /// The embedded cluster, when Sluice runs it.
    pub embedded: Option<EmbeddedControl>,
}

impl OpenedControl {
    /// Stops the embedded cluster (fast shutdown), if any.
    pub async fn stop(self) {
        drop(self.control);
        if let Some(embedded) = self.embedded {
            match tokio::task::spawn_blocking(move || embedded.stop()).await {
                Ok(Ok(())) => tracing::info!("embedded control store stopped"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "stopping the embedded control store")
                }
                Err(e) => tracing::warn!(error = %e, "stopping the embedded control store"),
            }
        }
    }
}

/// A `postgres://` URL or a libpq key=value string, as tokio-postgres reads it. The
/// error never repeats the URL (it may hold a password).
pub fn parse_database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())
}

/// Connects to the configured store (starting the embedded one first) and migrates it.
/// Never fails: an unreachable store is logged and reported as [`Control::Unreachable`].
pub async fn open(config: &ControlConfig) -> OpenedControl {
    let audit = match config.audit_database_url.as_deref().map(audit_store) {
        Some(Ok(store)) => Some(store),
        Some(Err(e)) => {
            let why = format!("{e:#}");
            tracing::error!(error = %why, "the audit database is misconfigured");
            return OpenedControl {
                control: Control::Unreachable(why),
                embedded: None,
            };
        }
        None => None,
    };
    let (result, embedded) = match &config.database_url {
        Some(url) => (
            connect_external(url, audit, config.home.clone()).await,
            None,
        ),
        None => {
            let data_dir = config.data_dir.clone();
            let started = tokio::task::spawn_blocking(move || EmbeddedControl::start(&data_dir))
                .await
                .context("starting the embedded control store")
                .and_then(|r| r);
            match started {
                Ok(embedded) => {
                    let result =
                        connect(embedded.config(), "embedded", audit, config.home.clone()).await;
                    (result, Some(embedded))
                }
                Err(e) => (Err(e), None),
            }
        }
    };
    let control = match result {
        Ok(control) => control,
        Err(e) => {
            let why = format!("{e:#}");
            tracing::error!(
                error = %why,
                "control store unreachable: serving the config file's tenants; \
                 admin changes, API keys and the audit log answer 503"
            );
            Control::Unreachable(why)
        }
    };
    OpenedControl { control, embedded }
}

/// The audit database, connected (and migrated) on first use: an audit database that is
/// down refuses changes (503) until it is back, like the control store.
fn audit_store(url: &str) -> anyhow::Result<Store> {
    let mut config =
        parse_database_url(url).map_err(|e| anyhow::anyhow!("control.audit_database_url: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(Store::lazy(config))
}

fn attach(store: Store, audit: Option<Store>, home: Option<String>) -> Store {
    let store = store.with_home(home);
    match audit {
        Some(audit) => store.with_audit(audit),
        None => store,
    }
}

async fn connect_external(
    url: &str,
    audit: Option<Store>,
    home: Option<String>,
) -> anyhow::Result<Control> {
    let mut config =
        parse_database_url(url).map_err(|e| anyhow::anyhow!("control.database_url: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // An external store that is down now is connected (and migrated) when it returns.
    let store = attach(Store::lazy(config), audit, home);
    match store.ping().await {
        Ok(()) => tracing::info!(kind = "external", "control store ready"),
        Err(e) => tracing::error!(
            error = %format!("{e:#}"),
            "control store unreachable: serving the catalog snapshot and the config file's \
             tenants; the API answers 503 until the store is back"
        ),
    }
    Ok(Control::Ok {
        store: Arc::new(store),
        kind: "external",
    })
}

async fn connect(
    config: tokio_postgres::Config,
    kind: &'static str,
    audit: Option<Store>,
    home: Option<String>,
) -> anyhow::Result<Control> {
    let store = attach(Store::connect(config).await?, audit, home);
    let applied = store
        .migrate()
        .await
        .context("migrating the control store")?;
    tracing::info!(kind, ?applied, "control store ready");
    Ok(Control::Ok {
        store: Arc::new(store),
        kind,
    })
}
