//! The provisioning worker: runs `create` and `delete` jobs from the store's queue
//! (see [`crate::store::jobs`] for how jobs are claimed and why a killed Sluice's job is
//! picked up again at once).
//!
//! A create job's steps, each idempotent and recorded when done:
//!
//! 1. `credentials`: the auth role's password (and, for the local driver, the backend
//!    administrator's) generated and stored encrypted, unless an earlier run did;
//! 2. `create_backend`: the driver makes the backend (or finds the one an earlier run
//!    made) and its address is recorded on the tenant;
//! 3. `wait_ready`: the backend accepts the administrator's login;
//! 4. `auth_role`: the auth role, its lookup function, the `app` database;
//! 5. `activate`: status `active`, which puts the tenant in every catalog.
//!
//! A delete job: `drain` (the tenant is already out of the catalog; its sessions end
//! with 57P01), `destroy_backend`, `delete_record`.
//!
//! A failed step is retried with exponential backoff; after [`MAX_ATTEMPTS`] the job is
//! `failed` (and a create's tenant too), with the error on the job. A backend's error
//! that retrying cannot fix ([`provision::sql::is_permanent`]: a refused login, a
//! database that does not exist, `server does not support TLS`, …) fails the job, and
//! the tenant, at once with that cause; only transient ones (connection refused,
//! timeouts, a server starting up) are retried.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog_sync::CatalogSync;
use provision::{sql, BackendAddress, BackendRequest};

use crate::drivers::Drivers;
use crate::secrets::tenant_secret;
use crate::store::{AuditEvent, JobOutcome, JobRecord, Store, TenantRecord};

/// Runs of a job before it is given up.
pub const MAX_ATTEMPTS: i32 = 5;
/// How long a new backend may take to accept logins.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the queue is polled when nobody pokes the worker.
const POLL: Duration = Duration::from_secs(1);
pub use provision::sql::{APP_DATABASE, AUTH_USER};

/// A job that must stop at once, without retries (it ends `failed` with this reason).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Abandoned(pub String);

/// A backend step's error that retrying cannot fix: the job, and a create's tenant, fail
/// at once with it.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct Deterministic(anyhow::Error);

/// Marks a backend step's error [`Deterministic`] when it is
/// ([`provision::sql::is_permanent`]).
fn classify(error: anyhow::Error) -> anyhow::Error {
    if sql::is_permanent(&error) {
        Deterministic(error).into()
    } else {
        error
    }
}

/// The worker of one process.
#[derive(Debug)]
pub struct Worker {
    pub sync: Arc<CatalogSync>,
    pub drivers: Arc<Drivers>,
    pub gates: Arc<dyn router::AdmissionControl>,
    /// Poked after a job is queued, so it starts without waiting for the next poll.
    pub wake: Arc<Notify>,
    pub name: String,
}

impl Worker {
    /// Starts the backends of known tenants (local clusters after a restart), then runs
    /// jobs until `stop`. `store` is the worker's own connection.
    pub async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        loop {
            match store.claim_job(&self.name).await {
                Ok(Some(job)) => {
                    let outcome = tokio::select! {
                        _ = stop.cancelled() => return, // the lock goes with the connection
                        outcome = self.run_job(&store, &job) => outcome,
                    };
                    self.finish(&store, &job, outcome).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "claiming a job"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn finish(&self, store: &Store, job: &JobRecord, outcome: anyhow::Result<()>) {
        let result = match &outcome {
            Ok(()) => {
                tracing::info!(job = job.id, kind = %job.kind, tenant = %job.tenant, "job succeeded");
                store.release_job(job.id, JobOutcome::Succeeded).await
            }
            Err(e) => {
                let error = format!("{e:#}");
                let abandoned = e.downcast_ref::<Abandoned>().is_some();
                let deterministic = e.downcast_ref::<Deterministic>().is_some();
                if abandoned {
                    tracing::info!(job = job.id, tenant = %job.tenant, reason = %error, "job abandoned");
                    store.release_job(job.id, JobOutcome::Failed(&error)).await
                } else if deterministic || job.attempts >= MAX_ATTEMPTS {
                    if deterministic {
                        tracing::error!(job = job.id, tenant = %job.tenant, attempt = job.attempts, error = %error, "job failed: retrying cannot fix this error");
                    } else {
                        tracing::error!(job = job.id, tenant = %job.tenant, error = %error, "job failed");
                    }
                    if job.kind == "create" {
                        let event = AuditEvent {
                            actor: Some("system".into()),
                            target: Some(job.tenant.clone()),
                            details: json!({"job": job.id, "error": error}),
                            ..AuditEvent::new("tenant.provision_failed")
                        };
                        if let Err(e) = store
                            .set_tenant_status(
                                &job.tenant,
                                &["provisioning"],
                                "failed",
                                None,
                                Some(&event),
                            )
                            .await
                        {
                            tracing::warn!(error = %e, "marking the tenant failed");
                        }
                    }
                    store.release_job(job.id, JobOutcome::Failed(&error)).await
                } else {
                    let after = Duration::from_secs(1 << job.attempts.clamp(0, 5));
                    tracing::warn!(job = job.id, tenant = %job.tenant, attempt = job.attempts, retry_in_s = after.as_secs(), error = %error, "job step failed; retrying");
                    store
                        .release_job(
                            job.id,
                            JobOutcome::Retry {
                                error: &error,
                                after,
                            },
                        )
                        .await
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(job = job.id, error = %format!("{e:#}"), "recording the job's outcome");
        }
    }

    async fn run_job(&self, store: &Store, job: &JobRecord) -> anyhow::Result<()> {
        tracing::info!(job = job.id, kind = %job.kind, tenant = %job.tenant, attempt = job.attempts, "running job");
        match job.kind.as_str() {
            "create" => self.create(store, job).await,
            "delete" => self.delete(store, job).await,
            other => Err(anyhow!("unknown job kind {other:?}")),
        }
    }

    async fn step(&self, store: &Store, job: &JobRecord, name: &str) -> anyhow::Result<()> {
        store.job_step_done(job.id, name).await
    }

    async fn create(&self, store: &Store, job: &JobRecord) -> anyhow::Result<()> {
        let id = job.tenant.as_str();
        let mut record = store
            .get_tenant(id)
            .await?
            .ok_or_else(|| anyhow!("tenant {id} no longer exists"))?;
        match record.status.as_str() {
            "provisioning" => {}
            "deleting" => {
                return Err(Abandoned("the tenant is being deleted".into()).into());
            }
            // Finished by an earlier run that died before recording it.
            _ => return Ok(()),
        }
        let driver = self
            .drivers
            .get(&record.backend.driver)
            .ok_or_else(|| anyhow!("no driver {:?} in this process", record.backend.driver))?
            .clone();
        let (auth_password, admin_password) =
            self.credentials(store, &record, driver.name()).await?;
        self.step(store, job, "credentials").await?;

        let address = driver
            .create(&BackendRequest {
                tenant: id.to_owned(),
                plan: record.plan.clone(),
                params: record.backend.params.clone(),
                admin_password: admin_password.clone(),
            })
            .await
            .context("creating the backend")
            .map_err(classify)?;
        record_address(&mut record, &address);
        store.set_tenant_backend(id, &record.backend).await?;
        self.step(store, job, "create_backend").await?;

        sql::wait_ready(&address, &admin_password, READY_TIMEOUT)
            .await
            .context("waiting for the backend")
            .map_err(classify)?;
        self.step(store, job, "wait_ready").await?;

        let client = sql::connect_admin(&address, &admin_password, None)
            .await
            .map_err(classify)?;
        sql::ensure_tenant_setup(&client, AUTH_USER, &sql::scram_verifier(&auth_password))
            .await
            .context("creating the auth role")
            .map_err(classify)?;
        self.step(store, job, "auth_role").await?;

        let event = AuditEvent {
            actor: Some("system".into()),
            target: Some(id.to_owned()),
            details: json!({"job": job.id, "driver": driver.name(), "address": format!("{}:{}", address.host, address.port)}),
            ..AuditEvent::new("tenant.provisioned")
        };
        store
            .set_tenant_status(id, &["provisioning"], "active", None, Some(&event))
            .await
            .map_err(|e| anyhow!(e))?;
        self.sync.refresh(store, id).await?;
        self.step(store, job, "activate").await?;
        Ok(())
    }

    /// The tenant's auth password and administrator password, made and stored on the
    /// first run.
    async fn credentials(
        &self,
        store: &Store,
        record: &TenantRecord,
        driver: &str,
    ) -> anyhow::Result<(String, String)> {
        let id = &record.id;
        let secrets = &self.sync.secrets;
        let sealed = store.secrets(&format!("tenant/{id}/")).await?;
        let get_or_make = async |what: &str, make: bool| -> anyhow::Result<String> {
            let name = tenant_secret(id, what);
            match sealed.get(&name) {
                Some(s) => secrets.open(&name, s),
                None if make => {
                    let password = sql::generate_password();
                    store
                        .put_secret(&name, &secrets.seal(&name, &password))
                        .await?;
                    Ok(password)
                }
                None => Err(anyhow!("secret {name} is missing")),
            }
        };
        let auth = get_or_make("auth", true).await?;
        // A static backend's administrator password came with the request.
        let admin = get_or_make("admin", driver != "static").await?;
        Ok((auth, admin))
    }

    async fn delete(&self, store: &Store, job: &JobRecord) -> anyhow::Result<()> {
        let id = job.tenant.as_str();
        let Some(record) = store.get_tenant(id).await? else {
            return Ok(()); // deleted by an earlier run
        };
        // A create job still running could make the backend after it is destroyed:
        // wait for it to give up (it stops at its next run once it sees `deleting`).
        if store.unfinished_jobs(id, "create").await? > 0 {
            return Err(anyhow!("waiting for the tenant's create job to stop"));
        }
        self.sync.refresh(store, id).await?;
        if let Ok(tenant) = router::TenantId::parse(id) {
            let ended = self.gates.terminate_sessions(&tenant);
            tracing::info!(tenant = %id, sessions = ended, "tenant drained for deletion");
        }
        self.step(store, job, "drain").await?;
        if let Some(driver) = self.drivers.get(&record.backend.driver) {
            driver.destroy(id).await.context("removing the backend")?;
        }
        self.step(store, job, "destroy_backend").await?;
        store.delete_tenant(id).await?;
        self.sync.refresh(store, id).await?;
        self.step(store, job, "delete_record").await?;
        Ok(())
    }
}

/// Puts a driver's answer into the tenant's backend record, with the auth settings every
/// provisioned backend shares.
fn record_address(record: &mut TenantRecord, address: &BackendAddress) {
    let b = &mut record.backend;
    b.host = Some(address.host.clone());
    b.port = Some(address.port);
    b.tls = address.tls.clone();
    b.tls_ca = address.tls_ca.clone();
    b.admin_user = Some(address.admin_user.clone());
    b.admin_database = Some(address.admin_database.clone());
    b.auth_user = AUTH_USER.to_owned();
    b.auth_database = sql::AUTH_DATABASE.to_owned();
    b.auth_query = Some(sql::AUTH_QUERY.to_owned());
}
