//! Tenants and their login roles in the store, and the encrypted secrets that go with
//! them.
//!
//! Every change here is one transaction that also appends its audit event
//! ([`Store::audit_in`]), so a change and its event are durable together and an
//! API call answers 2xx only after both. The table triggers NOTIFY `sluice_catalog` at
//! commit, which is how every Sluice process's catalog sync hears of it.
//!
//! A tenant row keeps only what differs from its plan: `pool` and `limits` hold the keys
//! set for this tenant (the API's PATCH shapes), so a plan change reaches every tenant
//! that did not override the key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Transaction};

use super::audit::AuditEvent;
use super::connection::Store;
use super::jobs::{JobRecord, JOB_COLUMNS};
use crate::secrets::Sealed;
use crate::settings::{LimitsPatch, PoolPatch};

/// Where a tenant's backend is and how Sluice logs into it. `host`/`port` are unset
/// while a provisioning job has not created the backend yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// `local`, `static`, or `config` (declared in the config file).
    pub driver: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// `disable`, `prefer`, `require` or `verify-full`.
    pub tls: String,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The role the control plane manages login roles with (secret `tenant/<id>/admin`).
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_database: Option<String>,
    /// The role the data plane reads verifiers with (secret `tenant/<id>/auth`).
    pub auth_user: String,
    /// Whether clients may log in through Sluice as `auth_user` (default false: they
    /// get 28000). Left out of the stored JSON while false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_auth_user_login: bool,
    pub auth_database: String,
    #[serde(default)]
    pub auth_query: Option<String>,
    /// The driver's own parameters (never a password).
    #[serde(default)]
    pub params: Value,
}

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub plan: Option<String>,
    /// `provisioning`, `active`, `suspended`, `failed` or `deleting`.
    pub status: String,
    pub suspended_reason: Option<String>,
    pub backend: BackendRecord,
    /// Keys set for this tenant on top of its plan.
    pub pool: PoolPatch,
    pub limits: LimitsPatch,
    /// Bumped by every change; PATCH refuses to overwrite a version it did not read.
    pub version: i64,
}

/// A login role as listed (its verifier stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    pub created_at: SystemTime,
    pub rotated_at: Option<SystemTime>,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0} already exists")]
    Exists(String),
    /// The tenant exists; the message says in what state and what to do.
    #[error("{0}")]
    Taken(String),
    #[error("{0} does not exist")]
    Missing(String),
    /// Someone else changed the tenant since it was read.
    #[error("tenant {0} was changed concurrently; read it again and retry")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

const TENANT_COLUMNS: &str =
    "id, plan, status, suspended_reason, backend::text, pool::text, limits::text, version";

fn decode_tenant(row: &Row) -> anyhow::Result<TenantRecord> {
    let id: String = row.try_get(0)?;
    let json = |i: usize, what: &str| -> anyhow::Result<String> {
        row.try_get(i)
            .with_context(|| format!("tenant {id}: reading {what}"))
    };
    Ok(TenantRecord {
        plan: row.try_get(1)?,
        status: row.try_get(2)?,
        suspended_reason: row.try_get(3)?,
        backend: serde_json::from_str(&json(4, "backend")?)
            .with_context(|| format!("tenant {id}: decoding backend"))?,
        pool: serde_json::from_str(&json(5, "pool")?)
            .with_context(|| format!("tenant {id}: decoding pool"))?,
        limits: serde_json::from_str(&json(6, "limits")?)
            .with_context(|| format!("tenant {id}: decoding limits"))?,
        version: row.try_get(7)?,
        id,
    })
}

fn to_json(value: &impl Serialize) -> anyhow::Result<String> {
    serde_json::to_string(value).context("encoding a tenant field")
}

impl Store {
    /// Why a tenant cannot be created under `id`: it exists, and in what state (read
    /// after the failed insert's transaction, on the store's one connection, which the
    /// caller must have let go), with what to do about it.
    async fn taken(&self, id: &str) -> ChangeError {
        let found = match self.client().await {
            Ok(client) => client
                .query_opt(
                    "SELECT status, suspended_reason FROM tenants WHERE id = $1",
                    &[&id],
                )
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        let Some(row) = found else {
            return ChangeError::Exists(format!("tenant \"{id}\""));
        };
        let status: String = row.get(0);
        let reason: Option<String> = row.get(1);
        let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
        let next = match status.as_str() {
            "failed" => format!("; delete it (DELETE /v1/tenants/{id}) and create it again"),
            "deleting" => "; wait for its delete job, then create it again".to_owned(),
            _ => String::new(),
        };
        ChangeError::Taken(format!(
            "tenant \"{id}\" already exists (status {status}{why}){next}"
        ))
    }

    /// Every tenant, by id.
    pub async fn list_tenants(&self) -> anyhow::Result<Vec<TenantRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"),
                &[],
            )
            .await
            .context("listing tenants")?;
        rows.iter().map(decode_tenant).collect()
    }

    pub async fn get_tenant(&self, id: &str) -> anyhow::Result<Option<TenantRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"),
                &[&id],
            )
            .await
            .with_context(|| format!("reading tenant {id}"))?;
        row.as_ref().map(decode_tenant).transpose()
    }

    /// Every secret whose name starts with `prefix` (`""`: all).
    pub async fn secrets(&self, prefix: &str) -> anyhow::Result<HashMap<String, Sealed>> {
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = self
            .client()
            .await?
            .query(
                "SELECT name, nonce, ciphertext FROM secrets WHERE name LIKE $1",
                &[&pattern],
            )
            .await
            .context("reading secrets")?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    Sealed {
                        nonce: row.try_get(1)?,
                        ciphertext: row.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    /// Stores a secret, replacing one of the same name.
    pub async fn put_secret(&self, name: &str, sealed: &Sealed) -> anyhow::Result<()> {
        let client = self.client().await?;
        put_secret(&*client, name, sealed).await
    }

    /// The tenants declared in the config file, inserted or brought in line with the
    /// file (backend, plan, pool, limits), with their auth secrets, in one transaction
    /// (10,000 tenants: one commit, not 10,000). Their status and suspension are left as
    /// the store has them: a tenant suspended through the API stays suspended across
    /// restarts. Returns the ids that were inserted or changed.
    pub async fn upsert_config_tenants(
        &self,
        tenants: &[(&TenantRecord, &str, &Sealed)],
    ) -> anyhow::Result<Vec<String>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let select = tx
            .prepare(&format!(
                "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 FOR UPDATE"
            ))
            .await?;
        let upsert = tx
            .prepare(
                "INSERT INTO tenants (id, plan, status, backend, pool, limits) \
                 VALUES ($1, $2, 'active', $3::text::jsonb, $4::text::jsonb, $5::text::jsonb) \
                 ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan, backend = EXCLUDED.backend, \
                 pool = EXCLUDED.pool, limits = EXCLUDED.limits, updated_at = now(), \
                 version = tenants.version + 1",
            )
            .await?;
        let secret = tx.prepare(PUT_SECRET).await?;
        let mut changed = Vec::new();
        for (record, name, sealed) in tenants {
            let existing = tx
                .query_opt(&select, &[&record.id])
                .await?
                .as_ref()
                .map(decode_tenant)
                .transpose()?;
            let differs = match &existing {
                Some(old) => {
                    old.plan != record.plan
                        || old.backend != record.backend
                        || to_json(&old.pool)? != to_json(&record.pool)?
                        || to_json(&old.limits)? != to_json(&record.limits)?
                }
                None => true,
            };
            if differs {
                tx.execute(
                    &upsert,
                    &[
                        &record.id,
                        &record.plan,
                        &to_json(&record.backend)?,
                        &to_json(&record.pool)?,
                        &to_json(&record.limits)?,
                    ],
                )
                .await
                .with_context(|| format!("upserting config tenant {}", record.id))?;
                changed.push(record.id.clone());
            }
            tx.execute(&secret, &[name, &sealed.nonce, &sealed.ciphertext])
                .await
                .with_context(|| format!("storing secret {name}"))?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// A new tenant (status `provisioning`) with its secrets and its create job.
    pub async fn create_tenant(
        &self,
        record: &TenantRecord,
        secrets: &[(String, Sealed)],
        event: &AuditEvent,
    ) -> Result<(TenantRecord, JobRecord), ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        let inserted = tx
            .query_one(
                &format!(
                    "INSERT INTO tenants (id, plan, status, backend, pool, limits) \
                     VALUES ($1, $2, 'provisioning', $3::text::jsonb, $4::text::jsonb, $5::text::jsonb) \
                     RETURNING {TENANT_COLUMNS}"
                ),
                &[
                    &record.id,
                    &record.plan,
                    &to_json(&record.backend)?,
                    &to_json(&record.pool)?,
                    &to_json(&record.limits)?,
                ],
            )
            .await;
        let row = match inserted {
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // The connection is this one: free it before asking what is there.
                drop(tx);
                drop(client);
                return Err(self.taken(&record.id).await);
            }
            other => other.context("inserting the tenant")?,
        };
        let tenant = decode_tenant(&row)?;
        for (name, sealed) in secrets {
            put_secret(&tx, name, sealed).await?;
        }
        let job = insert_job(&tx, "create", &record.id).await?;
        self.audit_in(&tx, &with_job(event, &job)).await?;
        tx.commit().await.context("committing the new tenant")?;
        Ok((tenant, job))
    }

    /// Replaces a tenant's plan and its pool and limit overrides if it is still at
    /// `version`.
    pub async fn update_tenant_settings(
        &self,
        id: &str,
        version: i64,
        plan: Option<&str>,
        pool: &PoolPatch,
        limits: &LimitsPatch,
        event: &AuditEvent,
    ) -> Result<TenantRecord, ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenants SET pool = $3::text::jsonb, limits = $4::text::jsonb, \
                     plan = $5, updated_at = now(), version = version + 1 \
                     WHERE id = $1 AND version = $2 RETURNING {TENANT_COLUMNS}"
                ),
                &[&id, &version, &to_json(pool)?, &to_json(limits)?, &plan],
            )
            .await
            .context("updating the tenant")?;
        let Some(row) = row else {
            return Err(missing_or_conflict(&tx, id).await);
        };
        self.audit_in(&tx, event).await?;
        tx.commit().await.context("committing the tenant change")?;
        Ok(decode_tenant(&row)?)
    }

    /// Tells every process following the store (its catalog sync) to end `tenant`'s
    /// running sessions: a suspension with `terminate` reaches every replica.
    pub async fn notify_end_sessions(&self, tenant: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "SELECT pg_notify('sluice_catalog', \
                 json_build_object('table', 'sessions', 'op', 'END', 'id', $1::text)::text)",
                &[&tenant],
            )
            .await
            .context("notifying the end of the tenant's sessions")?;
        Ok(())
    }

    /// Sets a tenant's status (and suspension reason), audited when `event` is given.
    /// `from` limits the change to tenants in one of those states.
    pub async fn set_tenant_status(
        &self,
        id: &str,
        from: &[&str],
        status: &str,
        reason: Option<&str>,
        event: Option<&AuditEvent>,
    ) -> Result<TenantRecord, ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tenants SET status = $2, suspended_reason = $3, updated_at = now(), \
                     version = version + 1 WHERE id = $1 AND status = ANY($4) \
                     RETURNING {TENANT_COLUMNS}"
                ),
                &[&id, &status, &reason, &from],
            )
            .await
            .context("changing the tenant's status")?;
        let Some(row) = row else {
            let current: Option<String> = tx
                .query_opt("SELECT status FROM tenants WHERE id = $1", &[&id])
                .await
                .context("reading the tenant's status")?
                .map(|r| r.get(0));
            return Err(match current {
                None => ChangeError::Missing(format!("tenant \"{id}\"")),
                Some(current) => ChangeError::Conflict(format!(
                    "\"{id}\" (it is {current}, not {})",
                    from.join(" or ")
                )),
            });
        };
        if let Some(event) = event {
            self.audit_in(&tx, event).await?;
        }
        tx.commit().await.context("committing the status change")?;
        Ok(decode_tenant(&row)?)
    }

    /// Marks a tenant `deleting` and queues its delete job.
    pub async fn start_delete(
        &self,
        id: &str,
        event: &AuditEvent,
    ) -> Result<JobRecord, ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        let updated = tx
            .execute(
                "UPDATE tenants SET status = 'deleting', updated_at = now(), \
                 version = version + 1 WHERE id = $1 AND status <> 'deleting'",
                &[&id],
            )
            .await
            .context("marking the tenant deleting")?;
        if updated == 0 {
            let exists = tx
                .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&id])
                .await
                .context("reading the tenant")?
                .is_some();
            return Err(if exists {
                ChangeError::Conflict(format!("\"{id}\" (already being deleted)"))
            } else {
                ChangeError::Missing(format!("tenant \"{id}\""))
            });
        }
        let job = insert_job(&tx, "delete", id).await?;
        self.audit_in(&tx, &with_job(event, &job)).await?;
        tx.commit().await.context("committing the delete")?;
        Ok(job)
    }

    /// Records where a provisioned backend is (a job step).
    pub async fn set_tenant_backend(
        &self,
        id: &str,
        backend: &BackendRecord,
    ) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE tenants SET backend = $2::text::jsonb, updated_at = now(), \
                 version = version + 1 WHERE id = $1",
                &[&id, &to_json(backend)?],
            )
            .await
            .with_context(|| format!("recording tenant {id}'s backend"))?;
        Ok(())
    }

    /// Removes a tenant, its roles and its secrets (the last step of a delete job).
    pub async fn delete_tenant(&self, id: &str) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM tenants WHERE id = $1", &[&id])
            .await
            .context("deleting the tenant")?;
        tx.execute(
            "DELETE FROM secrets WHERE name LIKE $1",
            &[&format!("tenant/{id}/%")],
        )
        .await
        .context("deleting the tenant's secrets")?;
        tx.commit().await?;
        Ok(())
    }

    /// A tenant's login roles, by name.
    pub async fn list_roles(&self, tenant: &str) -> anyhow::Result<Vec<RoleRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT name, created_at, rotated_at FROM roles WHERE tenant_id = $1 ORDER BY name",
                &[&tenant],
            )
            .await
            .context("listing roles")?;
        rows.iter()
            .map(|row| {
                Ok(RoleRecord {
                    name: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    rotated_at: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// Records a role created (or its password rotated) on the backend.
    pub async fn put_role(
        &self,
        tenant: &str,
        name: &str,
        verifier: &str,
        rotated: bool,
        event: &AuditEvent,
    ) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO roles (tenant_id, name, scram_verifier) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET scram_verifier = EXCLUDED.scram_verifier, \
             rotated_at = CASE WHEN $4 THEN now() ELSE roles.rotated_at END",
            &[&tenant, &name, &verifier, &rotated],
        )
        .await
        .context("recording the role")?;
        self.audit_in(&tx, event).await?;
        tx.commit().await.context("committing the role")?;
        Ok(())
    }

    /// Forgets a role dropped on the backend.
    pub async fn delete_role(
        &self,
        tenant: &str,
        name: &str,
        event: &AuditEvent,
    ) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM roles WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await
        .context("deleting the role")?;
        self.audit_in(&tx, event).await?;
        tx.commit().await.context("committing the role delete")?;
        Ok(())
    }
}

const PUT_SECRET: &str = "INSERT INTO secrets (name, nonce, ciphertext) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext";

async fn put_secret(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
    sealed: &Sealed,
) -> anyhow::Result<()> {
    client
        .execute(PUT_SECRET, &[&name, &sealed.nonce, &sealed.ciphertext])
        .await
        .with_context(|| format!("storing secret {name}"))?;
    Ok(())
}

async fn insert_job(tx: &Transaction<'_>, kind: &str, tenant: &str) -> anyhow::Result<JobRecord> {
    let row = tx
        .query_one(
            &format!("INSERT INTO jobs (kind, tenant_id) VALUES ($1, $2) RETURNING {JOB_COLUMNS}"),
            &[&kind, &tenant],
        )
        .await
        .context("queueing the job")?;
    JobRecord::decode(&row)
}

/// The event with the job's id added to its details.
fn with_job(event: &AuditEvent, job: &JobRecord) -> AuditEvent {
    let mut event = event.clone();
    if let Value::Object(details) = &mut event.details {
        details.insert("job".into(), Value::from(job.id));
    }
    event
}

async fn missing_or_conflict(tx: &Transaction<'_>, id: &str) -> ChangeError {
    match tx
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&id])
        .await
    {
        Ok(Some(_)) => ChangeError::Conflict(id.to_owned()),
        Ok(None) => ChangeError::Missing(format!("tenant \"{id}\"")),
        Err(e) => ChangeError::Store(anyhow!(e).context("reading the tenant")),
    }
}
