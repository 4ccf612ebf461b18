//! API keys in the store: the visible 8-hex id, the SHA-256 of the whole key, a role.
//!
//! The key itself is shown once when created and never stored, so a copy of the database
//! does not let anyone call the API. Revoking keeps the row (with `revoked_at`) so audit
//! events that name the key id still say whose key it was.

use std::time::SystemTime;

use anyhow::{bail, Context};
use tokio_postgres::Row;

use super::connection::Store;

/// A key as listed: everything but its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    pub name: Option<String>,
    pub created_at: SystemTime,
    /// Set once revoked; a revoked key no longer authenticates.
    pub revoked_at: Option<SystemTime>,
}

impl Store {
    /// Stores a new key. Fails if the id exists (even revoked: ids are never reused, so an
    /// old audit event cannot be attributed to a newer key) or the role is not one of
    /// `viewer`, `operator`, `admin`.
    pub async fn insert_api_key(
        &self,
        id: &str,
        hash: &[u8; 32],
        role: &str,
        name: Option<&str>,
    ) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_keys (id, hash, role, name) VALUES ($1, $2, $3, $4)",
                &[&id, &hash.as_slice(), &role, &name],
            )
            .await
            .with_context(|| format!("storing API key {id} ({role})"))?;
        Ok(())
    }

    /// The hash and role of key `id`, if it exists and is not revoked.
    pub async fn lookup_api_key(&self, id: &str) -> anyhow::Result<Option<([u8; 32], String)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT hash, role FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
            .with_context(|| format!("looking up API key {id}"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: Vec<u8> = row.try_get(0).context("decoding an API key hash")?;
        let role: String = row.try_get(1).context("decoding an API key role")?;
        let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
            bail!(
                "API key {id} has a stored hash of {} bytes, not 32",
                hash.len()
            );
        };
        Ok(Some((hash, role)))
    }

    /// Every unrevoked key: id, hash and role, in one query.
    pub async fn live_api_keys(&self) -> anyhow::Result<Vec<(String, [u8; 32], String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, hash, role FROM api_keys WHERE revoked_at IS NULL",
                &[],
            )
            .await
            .context("reading the API keys")?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let hash: Vec<u8> = row.try_get(1)?;
                let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                    bail!(
                        "API key {id} has a stored hash of {} bytes, not 32",
                        hash.len()
                    );
                };
                Ok((id, hash, row.try_get(2)?))
            })
            .collect()
    }

    /// Revokes key `id`; false if there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> anyhow::Result<bool> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
            .with_context(|| format!("revoking API key {id}"))?;
        Ok(changed == 1)
    }

    /// Every key, revoked ones included, oldest first. Hashes are not returned.
    pub async fn list_api_keys(&self) -> anyhow::Result<Vec<ApiKeyRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, role, name, created_at, revoked_at FROM api_keys \
                 ORDER BY created_at, id",
                &[],
            )
            .await
            .context("listing API keys")?;
        rows.iter()
            .map(decode_record)
            .collect::<Result<_, _>>()
            .context("decoding API keys")
    }
}

fn decode_record(row: &Row) -> Result<ApiKeyRecord, tokio_postgres::Error> {
    Ok(ApiKeyRecord {
        id: row.try_get(0)?,
        role: row.try_get(1)?,
        name: row.try_get(2)?,
        created_at: row.try_get(3)?,
        revoked_at: row.try_get(4)?,
    })
}
