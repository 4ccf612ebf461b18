//! Catalog sync: the control store's tenants, turned into the data plane's catalog in
//! every Sluice process.
//!
//! - At start, [`CatalogSync::start`] upserts the config file's `[[tenants]]` into the
//!   store, then loads every tenant (a full resync).
//! - Afterwards a dedicated connection `LISTEN`s on `sluice_catalog`: the tables' triggers
//!   notify at commit with the id of the tenant that changed, and the tenant is read again
//!   (its row, its secrets and its own host names with their certificates) and replaced
//!   in, or removed from, the catalog. A change to
//!   a role also tells the proxy to forget that role's cached secret. Two notifications
//!   are not tenant changes and are passed on as [`StoreEvent`]s: an API key made or
//!   revoked (`api_keys`, from a trigger), and a tenant suspended with `terminate`
//!   (`sessions`, sent by the process that took the request).
//! - A full resync runs after every (re)connection of the listener, so nothing notified
//!   while it was away is missed, and every [`RESYNC_PERIOD`] as a safety net.
//! - Every full resync writes `data_dir/catalog.snapshot` (secrets stay encrypted in it).
//!   When the store cannot be reached at start, the snapshot (plus the config file's
//!   tenants) is what the data plane serves until the store returns.
//!
//! Only tenants that are `active` or `suspended` are in the catalog: a tenant being
//! provisioned, failed or being deleted does not exist for clients (3D000).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use router::{
    Backend, BackendAddr, BackendTls, Catalog, CatalogHandle, Limits, PoolSettings, Tenant,
    TenantHostname, TenantId,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::hostnames::key_secret;
use crate::open::Control;
use crate::secrets::{tenant_secret, Sealed, SecretBox};
use crate::store::{HostnameRecord, Store, TenantRecord};

/// How often the whole catalog is read again even without notifications.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// The notification channel the store's triggers use.
const CHANNEL: &str = "sluice_catalog";

/// Pool settings and limits a tenant starts from: `[defaults.*]`, or a plan's.
#[derive(Debug, Clone, Default)]
pub struct Base {
    pub pool: PoolSettings,
    pub limits: Limits,
}

/// `[defaults.*]` and `[plans.*]`, resolved.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    pub defaults: Base,
    pub named: HashMap<String, Base>,
}

impl Plans {
    /// The base of `plan` (the defaults when None); an unknown plan is an error.
    pub fn base(&self, plan: Option<&str>) -> anyhow::Result<&Base> {
        match plan {
            None => Ok(&self.defaults),
            Some(name) => self
                .named
                .get(name)
                .ok_or_else(|| anyhow!("plan {name:?} is not defined ([plans.{name}])")),
        }
    }

    /// The pool settings and limits a record resolves to: its plan's, with its own keys
    /// on top.
    pub fn resolve(&self, record: &TenantRecord) -> anyhow::Result<(PoolSettings, Limits)> {
        let base = self.base(record.plan.as_deref())?;
        let pool = record
            .pool
            .apply(&base.pool)
            .map_err(|e| anyhow!("tenant {}: {e}", record.id))?;
        let limits = record
            .limits
            .apply(&base.limits)
            .map_err(|e| anyhow!("tenant {}: {e}", record.id))?;
        Ok((pool, limits))
    }
}

/// A tenant from the config file: its record and its auth password (from its file).
#[derive(Debug, Clone)]
pub struct ConfigTenant {
    pub record: TenantRecord,
    pub auth_password: String,
}

/// The data plane's view of a record, if clients may reach it.
pub fn materialize(
    plans: &Plans,
    record: &TenantRecord,
    auth_password: Option<&str>,
) -> anyhow::Result<Option<Tenant>> {
    let suspended = match record.status.as_str() {
        "active" => None,
        "suspended" => Some(
            record
                .suspended_reason
                .clone()
                .unwrap_or_else(|| "suspended".into()),
        ),
        _ => return Ok(None),
    };
    let b = &record.backend;
    let (Some(host), Some(port)) = (&b.host, b.port) else {
        return Ok(None);
    };
    let auth_password =
        auth_password.ok_or_else(|| anyhow!("tenant {}: its auth secret is missing", record.id))?;
    let (pool, limits) = plans.resolve(record)?;
    Ok(Some(Tenant {
        id: TenantId::parse(&record.id)?,
        backend: Arc::new(Backend {
            addr: BackendAddr::from_host(host, port),
            tls: match b.tls.as_str() {
                "disable" => BackendTls::Disable,
                "require" => BackendTls::Require,
                "verify-full" => BackendTls::VerifyFull,
                _ => BackendTls::Prefer,
            },
            tls_ca: b.tls_ca.clone(),
            auth_user: b.auth_user.clone(),
            allow_auth_user_login: b.allow_auth_user_login,
            auth_password: auth_password.to_owned(),
            auth_database: b.auth_database.clone(),
            auth_query: b
                .auth_query
                .clone()
                .unwrap_or_else(|| router::tenant::DEFAULT_AUTH_QUERY.to_owned()),
        }),
        pool,
        limits,
        suspended,
        hostnames: Vec::new(),
    }))
}

/// What `catalog.snapshot` holds: the records and their sealed auth secrets.
#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    version: u32,
    tenants: &'a [SnapshotTenant],
}

#[derive(Debug, Deserialize)]
struct SnapshotFile {
    version: u32,
    tenants: Vec<SnapshotTenant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotTenant {
    record: TenantRecord,
    auth: Option<Sealed>,
    /// Its own host names, keys sealed (absent from snapshots written before them).
    #[serde(default)]
    hostnames: Vec<HostnameRecord>,
}

/// Keeps one process's catalog in line with the store.
#[derive(Debug)]
pub struct CatalogSync {
    pub catalog: Arc<CatalogHandle>,
    /// `[defaults.*]` and `[plans.*]`: replaced whole when the config file is reloaded
    /// (SIGHUP), see [`CatalogSync::reconfigure`].
    plans: ArcSwap<Plans>,
    pub secrets: Arc<SecretBox>,
    snapshot_path: PathBuf,
    /// `[[tenants]]`, replaced the same way.
    config_tenants: ArcSwap<Vec<ConfigTenant>>,
    /// Where the catalog last came from: `control store`, `snapshot` or `config file`.
    source: std::sync::Mutex<&'static str>,
    /// The tenant records behind the catalog (from the store or the snapshot), with
    /// their sealed auth secrets: what the snapshot holds.
    records: std::sync::Mutex<Vec<SnapshotTenant>>,
    /// What the store's notifications say besides tenant changes.
    events: tokio::sync::broadcast::Sender<StoreEvent>,
}

/// A notification from the control store that is not a tenant's change, for whoever
/// follows it ([`CatalogSync::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// An API key was made or revoked (through any process): re-read the keys.
    ApiKeysChanged,
    /// A tenant was suspended with `terminate` (through any process): end its sessions
    /// here too.
    EndSessions(TenantId),
}

impl CatalogSync {
    /// The defaults and plans in force.
    pub fn plans(&self) -> Arc<Plans> {
        self.plans.load_full()
    }

    /// Puts a reloaded config file's defaults, plans and `[[tenants]]` in force: the
    /// config tenants are brought into the store as at start (inserted, or their plan,
    /// backend, pool and limits set to the file's), and the catalog is rebuilt, from the
    /// store when it answers, else from the records held (the snapshot's and the config
    /// file's tenants). The catalog's subscribers then apply the new pool settings and
    /// limits to running pools and admission gates, as for a `PATCH` (a tenant whose
    /// backend changed gets new pools). A tenant taken out of the file stays in the
    /// store, as across a restart.
    pub async fn reconfigure(
        &self,
        control: &Control,
        plans: Plans,
        config_tenants: Vec<ConfigTenant>,
    ) -> anyhow::Result<()> {
        self.plans.store(Arc::new(plans));
        self.config_tenants.store(Arc::new(config_tenants));
        if let Ok(store) = control.store() {
            let synced = match self.upsert_config_tenants(store).await {
                Ok(()) => self.resync(store).await,
                Err(e) => Err(e),
            };
            match synced {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading the control store; rebuilding the catalog from the records held")
                }
            }
        }
        let records = self.records.lock().expect("records lock poisoned").clone();
        let catalog = self.catalog_of(&records)?;
        self.catalog.replace(catalog);
        Ok(())
    }

    /// Where the catalog last came from, for `/readyz`.
    pub fn source(&self) -> &'static str {
        *self.source.lock().expect("source lock poisoned")
    }

    /// The records the catalog was last built from.
    pub fn records(&self) -> Vec<TenantRecord> {
        let records = self.records.lock().expect("records lock poisoned");
        records.iter().map(|t| t.record.clone()).collect()
    }

    /// Replaces the records and writes them to the snapshot.
    fn set_records(&self, records: Vec<SnapshotTenant>) {
        let mut current = self.records.lock().expect("records lock poisoned");
        *current = records;
        self.save(&current);
    }

    /// Replaces (or removes) one tenant's record and writes the snapshot.
    fn set_record(&self, id: &str, record: Option<SnapshotTenant>) {
        let mut current = self.records.lock().expect("records lock poisoned");
        current.retain(|t| t.record.id != id);
        current.extend(record);
        self.save(&current);
    }

    fn save(&self, tenants: &[SnapshotTenant]) {
        if let Err(e) = self.write_snapshot(&Snapshot {
            version: 1,
            tenants,
        }) {
            tracing::warn!(error = %format!("{e:#}"), "writing the catalog snapshot");
        }
    }

    fn set_source(&self, source: &'static str) {
        *self.source.lock().expect("source lock poisoned") = source;
    }

    pub fn new(
        catalog: Arc<CatalogHandle>,
        plans: Arc<Plans>,
        secrets: Arc<SecretBox>,
        data_dir: &std::path::Path,
        config_tenants: Vec<ConfigTenant>,
    ) -> CatalogSync {
        CatalogSync {
            catalog,
            plans: ArcSwap::new(plans),
            secrets,
            snapshot_path: data_dir.join("catalog.snapshot"),
            config_tenants: ArcSwap::from_pointee(config_tenants),
            source: std::sync::Mutex::new("none"),
            records: std::sync::Mutex::new(Vec::new()),
            events: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// The store's notifications that are not tenant changes, from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Fills the catalog at start: from the store (after upserting the config file's
    /// tenants), else from the snapshot and the config file. Returns where it came from.
    pub async fn start(&self, control: &Control) -> &'static str {
        if let Ok(store) = control.store() {
            match self.upsert_config_tenants(store).await {
                Ok(()) => match self.resync(store).await {
                    Ok(()) => return "control store",
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "loading the catalog from the control store")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "upserting the config file's tenants")
                }
            }
        }
        let source = match self.load_snapshot() {
            Ok(n) => {
                tracing::warn!(tenants = n, path = %self.snapshot_path.display(), "serving the catalog snapshot until the control store is back");
                "snapshot"
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no usable catalog snapshot: serving the config file's tenants");
                let config_tenants = self.config_tenants.load();
                let tenants = config_tenants.iter().filter_map(|t| {
                    materialize(&self.plans(), &t.record, Some(&t.auth_password))
                        .inspect_err(
                            |e| tracing::error!(error = %format!("{e:#}"), "config tenant"),
                        )
                        .ok()
                        .flatten()
                });
                self.catalog.replace(Catalog::new(tenants));
                "config file"
            }
        };
        self.set_source(source);
        source
    }

    async fn upsert_config_tenants(&self, store: &Store) -> anyhow::Result<()> {
        let config_tenants = self.config_tenants.load_full();
        let sealed: Vec<(String, crate::secrets::Sealed)> = config_tenants
            .iter()
            .map(|t| {
                let name = tenant_secret(&t.record.id, "auth");
                let sealed = self.secrets.seal(&name, &t.auth_password);
                (name, sealed)
            })
            .collect();
        let batch: Vec<_> = config_tenants
            .iter()
            .zip(&sealed)
            .map(|(t, (name, sealed))| (&t.record, name.as_str(), sealed))
            .collect();
        for id in store.upsert_config_tenants(&batch).await? {
            tracing::info!(tenant = %id, "config file tenant written to the control store");
        }
        Ok(())
    }

    /// Reads every tenant and replaces the catalog; writes the snapshot.
    pub async fn resync(&self, store: &Store) -> anyhow::Result<()> {
        let records = store.list_tenants().await?;
        let sealed = store.secrets("tenant/").await?;
        let mut hostnames: HashMap<String, Vec<HostnameRecord>> = HashMap::new();
        for hostname in store.all_hostnames().await? {
            hostnames
                .entry(hostname.tenant.clone())
                .or_default()
                .push(hostname);
        }
        let mut tenants = Vec::with_capacity(records.len());
        let mut snapshot = Vec::with_capacity(records.len());
        for record in records {
            let name = tenant_secret(&record.id, "auth");
            let auth = sealed.get(&name);
            let hostnames = hostnames.remove(&record.id).unwrap_or_default();
            match self.build(&record, auth, &hostnames) {
                Ok(Some(t)) => tenants.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tenant = %record.id, error = %format!("{e:#}"), "tenant left out of the catalog")
                }
            }
            snapshot.push(SnapshotTenant {
                record,
                auth: auth.cloned(),
                hostnames,
            });
        }
        self.catalog.replace(Catalog::new(tenants));
        self.set_source("control store");
        self.set_records(snapshot);
        Ok(())
    }

    /// Reads one tenant again and puts it in (or takes it out of) the catalog.
    pub async fn refresh(&self, store: &Store, id: &str) -> anyhow::Result<()> {
        let record = store.get_tenant(id).await?;
        let sealed = store.secrets(&format!("tenant/{id}/")).await?;
        let hostnames = match &record {
            Some(_) => store.list_hostnames(id).await?,
            None => Vec::new(),
        };
        let tenant = match &record {
            Some(record) => {
                self.build(record, sealed.get(&tenant_secret(id, "auth")), &hostnames)?
            }
            None => None,
        };
        let auth = sealed.get(&tenant_secret(id, "auth")).cloned();
        self.set_record(
            id,
            record.map(|record| SnapshotTenant {
                record,
                auth,
                hostnames,
            }),
        );
        let _ = self.catalog.update(|catalog| {
            Ok::<_, std::convert::Infallible>(match tenant {
                Some(t) => catalog.with(t),
                None => catalog.without(id),
            })
        });
        Ok(())
    }

    /// Puts the change of tenant `id` into this process's catalog at once, after a
    /// change through this process (other processes hear of it through the store's
    /// notification); a failure is logged and left to the next resync.
    pub async fn apply_locally(&self, control: &Control, id: &str) {
        if let Ok(store) = control.store() {
            if let Err(e) = self.refresh(store, id).await {
                tracing::warn!(tenant = %id, error = %format!("{e:#}"), "applying the change to the catalog; the next resync will");
            }
        }
    }

    fn build(
        &self,
        record: &TenantRecord,
        auth: Option<&Sealed>,
        hostnames: &[HostnameRecord],
    ) -> anyhow::Result<Option<Tenant>> {
        let password = auth
            .map(|s| self.secrets.open(&tenant_secret(&record.id, "auth"), s))
            .transpose()?;
        let tenant = materialize(&self.plans(), record, password.as_deref())?;
        Ok(tenant.map(|tenant| self.with_hostnames(tenant, hostnames)))
    }

    /// `tenant` with its own host names, keys opened. A key that does not open (the
    /// secrets key file changed) leaves that name out, with an error in the log; the
    /// tenant stays.
    fn with_hostnames(&self, mut tenant: Tenant, hostnames: &[HostnameRecord]) -> Tenant {
        tenant.hostnames = hostnames
            .iter()
            .filter_map(|h| {
                let name = key_secret(&h.tenant, &h.hostname);
                match self.secrets.open(&name, &h.key) {
                    Ok(key_pem) => Some(TenantHostname {
                        name: h.hostname.clone(),
                        cert_pem: h.cert_pem.clone(),
                        key_pem,
                    }),
                    Err(e) => {
                        tracing::error!(tenant = %h.tenant, hostname = %h.hostname, error = %format!("{e:#}"), "host name left out");
                        None
                    }
                }
            })
            .collect();
        tenant
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Per process: a new Sluice started beside the old one on the same data_dir (a
        // restart without a gap) writes the snapshot too, and their temporary files must
        // not mix.
        let tmp = self
            .snapshot_path
            .with_extension(format!("snapshot.tmp.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec(snapshot)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        Ok(())
    }

    /// The snapshot's tenants, with the config file's written over them.
    fn load_snapshot(&self) -> anyhow::Result<usize> {
        let bytes = std::fs::read(&self.snapshot_path)
            .with_context(|| format!("reading {}", self.snapshot_path.display()))?;
        let snapshot: SnapshotFile =
            serde_json::from_slice(&bytes).context("decoding the snapshot")?;
        anyhow::ensure!(
            snapshot.version == 1,
            "snapshot version {} is not one this build reads",
            snapshot.version
        );
        let catalog = self.catalog_of(&snapshot.tenants)?;
        let n = catalog.len();
        self.catalog.replace(catalog);
        *self.records.lock().expect("records lock poisoned") = snapshot.tenants;
        Ok(n)
    }

    /// The catalog of snapshot records, with the config file's tenants written over them.
    fn catalog_of(&self, records: &[SnapshotTenant]) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for t in records {
            match self.build(&t.record, t.auth.as_ref(), &t.hostnames) {
                Ok(Some(tenant)) => catalog = catalog.with(tenant),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tenant = %t.record.id, error = %format!("{e:#}"), "snapshot tenant left out")
                }
            }
        }
        let plans = self.plans();
        for t in self.config_tenants.load().iter() {
            if let Some(tenant) = materialize(&plans, &t.record, Some(&t.auth_password))? {
                // The file has no host names: the ones stored for the tenant stay.
                let stored = records.iter().find(|r| r.record.id == t.record.id);
                let hostnames = stored.map_or(&[][..], |r| &r.hostnames[..]);
                catalog = catalog.with(self.with_hostnames(tenant, hostnames));
            }
        }
        Ok(catalog)
    }

    /// Follows the store until `stop`: LISTEN/NOTIFY with a full resync after every
    /// (re)connection and every [`RESYNC_PERIOD`].
    pub async fn run(self: Arc<Self>, control: Control, stop: CancellationToken) {
        let Ok(store) = control.store() else {
            return;
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.follow(store) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "catalog sync lost the control store; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(&self, store: &Store) -> anyhow::Result<()> {
        let (client, mut connection) = store.connect_raw().await?;
        let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        });
        let _abort = AbortOnDrop(driver.abort_handle());
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .context("LISTEN")?;
        // Whatever changed before the LISTEN took effect is in this read.
        self.resync(store).await?;
        tracing::info!("catalog sync following the control store");
        let mut resync = tokio::time::interval(RESYNC_PERIOD);
        resync.tick().await;
        loop {
            tokio::select! {
                payload = notifications.recv() => {
                    let Some(payload) = payload else {
                        return Err(anyhow!("the notification connection ended"));
                    };
                    self.notified(store, &payload).await?;
                }
                _ = resync.tick() => self.resync(store).await?,
            }
            if client.is_closed() {
                return Err(anyhow!("the notification connection ended"));
            }
        }
    }

    async fn notified(&self, store: &Store, payload: &str) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Change {
            table: String,
            id: Option<String>,
            role: Option<String>,
        }
        let change: Change = match serde_json::from_str(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(payload, error = %e, "unreadable catalog notification");
                return Ok(());
            }
        };
        match change.table.as_str() {
            "api_keys" => {
                // Nobody listening is fine: no admin listener in this process.
                let _ = self.events.send(StoreEvent::ApiKeysChanged);
                return Ok(());
            }
            "sessions" => {
                if let Some(tenant) = change.id.as_deref().and_then(|id| TenantId::parse(id).ok()) {
                    let _ = self.events.send(StoreEvent::EndSessions(tenant));
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(id) = change.id else { return Ok(()) };
        self.refresh(store, &id).await?;
        if change.table == "roles" {
            if let (Some(role), Ok(tenant)) = (change.role, TenantId::parse(&id)) {
                self.catalog.role_changed(&tenant, &role);
            }
        }
        tracing::debug!(tenant = %id, table = %change.table, "catalog change applied");
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
