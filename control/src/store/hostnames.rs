//! Tenants' own host names in the store (`hostnames`): the certificate, the sealed key,
//! and what a listing shows of the certificate.
//!
//! A host name belongs to one tenant at most (its primary key) and is deleted with its
//! tenant. Every change is one transaction with its audit event; the table's trigger
//! notifies `sluice_catalog` with the tenant's id, so every process's catalog sync reads
//! the tenant again, host names included.

use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::audit::AuditEvent;
use super::connection::Store;
use super::tenants::ChangeError;
use crate::hostnames::CertSummary;
use crate::secrets::Sealed;

/// One host name as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostnameRecord {
    pub hostname: String,
    pub tenant: String,
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key, sealed under `hostnames::key_secret(tenant, hostname)`.
    pub key: Sealed,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: SystemTime,
    pub fingerprint: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Whether [`Store::put_hostname`] added the name or replaced its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostnamePut {
    Added,
    Replaced,
}

const COLUMNS: &str = "hostname, tenant_id, cert_pem, key_nonce, key_ciphertext, subject, sans, \
     not_after, fingerprint, created_at, updated_at";

fn decode(row: &Row) -> anyhow::Result<HostnameRecord> {
    Ok(HostnameRecord {
        hostname: row.try_get(0)?,
        tenant: row.try_get(1)?,
        cert_pem: row.try_get(2)?,
        key: Sealed {
            nonce: row.try_get(3)?,
            ciphertext: row.try_get(4)?,
        },
        subject: row.try_get(5)?,
        sans: row.try_get(6)?,
        not_after: row.try_get(7)?,
        fingerprint: row.try_get(8)?,
        created_at: row.try_get(9)?,
        updated_at: row.try_get(10)?,
    })
}

impl Store {
    /// The host names of `tenant`, by name.
    pub async fn list_hostnames(&self, tenant: &str) -> anyhow::Result<Vec<HostnameRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM hostnames WHERE tenant_id = $1 ORDER BY hostname"),
                &[&tenant],
            )
            .await
            .with_context(|| format!("listing tenant {tenant}'s host names"))?;
        rows.iter().map(decode).collect()
    }

    /// Every host name of every tenant (a full resync of the catalog).
    pub async fn all_hostnames(&self) -> anyhow::Result<Vec<HostnameRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM hostnames ORDER BY tenant_id, hostname"),
                &[],
            )
            .await
            .context("listing host names")?;
        rows.iter().map(decode).collect()
    }

    /// Adds `hostname` to `tenant` with its certificate and sealed key, or replaces the
    /// certificate of a name the tenant has already; with its audit event (its details
    /// get `replaced`). A name of
    /// another tenant is [`ChangeError::Taken`]; a tenant that does not exist
    /// [`ChangeError::Missing`], one being deleted [`ChangeError::Conflict`].
    pub async fn put_hostname(
        &self,
        tenant: &str,
        hostname: &str,
        cert_pem: &str,
        key: &Sealed,
        summary: &CertSummary,
        event: &AuditEvent,
    ) -> Result<HostnamePut, ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        // The tenant cannot be deleted meanwhile (a delete needs its row exclusively).
        let status: Option<String> = tx
            .query_opt(
                "SELECT status FROM tenants WHERE id = $1 FOR SHARE",
                &[&tenant],
            )
            .await
            .context("reading the tenant")?
            .map(|row| row.get(0));
        match status.as_deref() {
            None => return Err(ChangeError::Missing(format!("tenant \"{tenant}\""))),
            Some("deleting") => {
                return Err(ChangeError::Conflict(format!(
                    "\"{tenant}\" (it is being deleted)"
                )))
            }
            Some(_) => {}
        }
        // A name of another tenant is left alone: the conflict clause updates only the
        // tenant's own row, and no row comes back otherwise.
        let row = tx
            .query_opt(
                "INSERT INTO hostnames (hostname, tenant_id, cert_pem, key_nonce, key_ciphertext, \
                 subject, sans, not_after, fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (hostname) DO UPDATE SET cert_pem = EXCLUDED.cert_pem, \
                 key_nonce = EXCLUDED.key_nonce, key_ciphertext = EXCLUDED.key_ciphertext, \
                 subject = EXCLUDED.subject, sans = EXCLUDED.sans, not_after = EXCLUDED.not_after, \
                 fingerprint = EXCLUDED.fingerprint, updated_at = now() \
                 WHERE hostnames.tenant_id = EXCLUDED.tenant_id \
                 RETURNING xmax = 0",
                &[
                    &hostname,
                    &tenant,
                    &cert_pem,
                    &key.nonce,
                    &key.ciphertext,
                    &summary.subject,
                    &summary.sans,
                    &summary.not_after,
                    &summary.fingerprint,
                ],
            )
            .await
            .context("storing the host name")?;
        let Some(row) = row else {
            return Err(ChangeError::Taken(format!(
                "host name \"{hostname}\" belongs to another tenant; remove it there first"
            )));
        };
        // An inserted row has no deleting transaction yet; an updated one has ours.
        let inserted: bool = row.get(0);
        let mut event = event.clone();
        if let serde_json::Value::Object(details) = &mut event.details {
            details.insert("replaced".into(), serde_json::Value::Bool(!inserted));
        }
        self.audit_in(&tx, &event).await?;
        tx.commit().await.context("committing the host name")?;
        Ok(if inserted {
            HostnamePut::Added
        } else {
            HostnamePut::Replaced
        })
    }

    /// Removes `hostname` from `tenant`, with its audit event.
    pub async fn delete_hostname(
        &self,
        tenant: &str,
        hostname: &str,
        event: &AuditEvent,
    ) -> Result<(), ChangeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(anyhow::Error::from)?;
        let deleted = tx
            .execute(
                "DELETE FROM hostnames WHERE tenant_id = $1 AND hostname = $2",
                &[&tenant, &hostname],
            )
            .await
            .context("deleting the host name")?;
        if deleted == 0 {
            return Err(ChangeError::Missing(format!(
                "host name \"{hostname}\" of tenant \"{tenant}\""
            )));
        }
        self.audit_in(&tx, event).await?;
        tx.commit()
            .await
            .context("committing the host name's removal")?;
        Ok(())
    }
}
