//! Role secrets read from the tenant's own backend with `auth_query`, cached briefly.
//!
//! Like PgBouncer's auth_query: Sluice logs in as the tenant's `auth_user` and reads the
//! role's `rolpassword` (a SCRAM verifier or an md5 hash) and its expiry. Unknown roles
//! are cached too, so a flood of bad user names does not become a flood of queries.
//!
//! A password check that fails against a cached secret gets a second look
//! ([`SecretCache::reread`]): the password may have changed on the backend since.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use dashmap::DashMap;
use pooler::{connect, ConnectRequest, ServerCredential, TlsConnectors};
use router::{Tenant, TenantId};
use tokio::sync::Semaphore;
use wire::scram::Verifier;

use crate::error::ClientError;

/// What a role authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum RoleSecret {
    Scram(Verifier),
    /// `md5` + hex(md5(password || user)).
    Md5(String),
}

impl std::fmt::Debug for RoleSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoleSecret::Scram(_) => "Scram(..)",
            RoleSecret::Md5(_) => "Md5(..)",
        })
    }
}

#[derive(Clone)]
struct Cached {
    /// `None`: no such login role (or no usable secret).
    secret: Option<RoleSecret>,
    /// `rolvaliduntil`, as seconds since the epoch; `None` means no expiry.
    valid_until: Option<f64>,
    fetched: Instant,
    /// Read again because a login failed against the entry before it.
    reread: bool,
}

/// A role's secret as one login found it.
#[derive(Debug)]
pub struct Looked {
    /// `None` when the role cannot log in (unknown, NOLOGIN, expired, no password).
    pub secret: Option<RoleSecret>,
    /// When the secret was read from the backend, if that was before this login
    /// began (it came from the cache): then a failed password check against it is
    /// worth a [`SecretCache::reread`].
    pub cached_since: Option<Instant>,
}

/// Lookups in flight at once per tenant: bounds the connections Sluice opens to a
/// tenant's backend as `auth_user`, however many unknown user names arrive.
const LOOKUPS_PER_TENANT: usize = 4;

/// Entries kept before expired ones are swept (and, if still too many, all dropped).
const MAX_ENTRIES: usize = 100_000;

/// A role's secret is read again for a failed login at most this often, so that wrong
/// passwords, however many, cost its backend at most one `auth_query` a second.
const REREAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct SecretCache {
    entries: DashMap<(TenantId, String), Cached>,
    lookups: DashMap<TenantId, Arc<Semaphore>>,
    ttl: Duration,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("secret", &self.secret)
            .field("age", &self.fetched.elapsed())
            .finish()
    }
}

impl SecretCache {
    pub fn new(ttl: Duration) -> Self {
        SecretCache {
            entries: DashMap::new(),
            lookups: DashMap::new(),
            ttl,
        }
    }

    /// The role's secret, from the cache or the backend.
    pub async fn lookup(
        &self,
        tenant: &Tenant,
        role: &str,
        tls: &TlsConnectors,
    ) -> Result<Looked, ClientError> {
        let asked = Instant::now();
        let key = (tenant.id.clone(), role.to_owned());
        let cached = match self.fresh(&key) {
            Some(c) => c,
            None => {
                let _permit = self.lookup_permit(&tenant.id).await;
                // Whoever held the permit before us may have fetched this very role.
                match self.fresh(&key) {
                    Some(c) => c,
                    None => {
                        let fresh = fetch(tenant, role, tls).await?;
                        self.insert(key, fresh.clone());
                        fresh
                    }
                }
            }
        };
        Ok(Looked {
            cached_since: (cached.fetched < asked).then_some(cached.fetched),
            secret: usable(cached),
        })
    }

    /// A second look after a password check failed against a cached secret read at
    /// `seen`: the role's secret as the backend has it now, bypassing the cache (and
    /// put into it), when it may differ from the one the client was checked against.
    /// `None` when nothing new can be said: the role cannot log in, or its secret was
    /// read again for a failed login less than [`REREAD_EVERY`] ago, or the read
    /// failed (logged). Failures at the same time share one read.
    pub async fn reread(
        &self,
        tenant: &Tenant,
        role: &str,
        tls: &TlsConnectors,
        seen: Instant,
    ) -> Option<RoleSecret> {
        let key = (tenant.id.clone(), role.to_owned());
        let _permit = self.lookup_permit(&tenant.id).await;
        match self.entries.get(&key).map(|e| e.clone()) {
            // Read again since this login looked (by another failed login, say).
            Some(c) if c.fetched > seen => return usable(c),
            Some(c) if c.reread && c.fetched.elapsed() < REREAD_EVERY => return None,
            _ => {}
        }
        match fetch(tenant, role, tls).await {
            Ok(fresh) => {
                let fresh = Cached {
                    reread: true,
                    ..fresh
                };
                self.insert(key, fresh.clone());
                usable(fresh)
            }
            Err(e) => {
                tracing::warn!(error = ?e, "reading a role's secret again failed");
                None
            }
        }
    }

    /// A turn to read from the tenant's backend (at most [`LOOKUPS_PER_TENANT`] at once).
    async fn lookup_permit(&self, tenant: &TenantId) -> tokio::sync::OwnedSemaphorePermit {
        let gate = self
            .lookups
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(LOOKUPS_PER_TENANT)))
            .clone();
        gate.acquire_owned().await.expect("never closed")
    }
}

/// The secret of an entry, or `None` if the role's password has expired.
fn usable(cached: Cached) -> Option<RoleSecret> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    match cached.valid_until {
        Some(until) if until <= now => None,
        _ => cached.secret,
    }
}

impl SecretCache {
    fn fresh(&self, key: &(TenantId, String)) -> Option<Cached> {
        self.entries
            .get(key)
            .map(|e| e.clone())
            .filter(|c| c.fetched.elapsed() < self.ttl)
    }

    fn insert(&self, key: (TenantId, String), value: Cached) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, c| c.fetched.elapsed() < self.ttl);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(key, value);
    }

    /// Forgets a role's secret, e.g. after its backend refused the credential it gave
    /// (the password changed): the next login reads it again.
    pub fn invalidate(&self, tenant: &TenantId, role: &str) {
        self.entries.remove(&(tenant.clone(), role.to_owned()));
    }
}

async fn fetch(tenant: &Tenant, role: &str, tls: &TlsConnectors) -> Result<Cached, ClientError> {
    let backend = &tenant.backend;
    let unavailable = |detail: String| ClientError::BackendUnavailable {
        tenant: tenant.id.to_string(),
        detail,
    };
    let credential = ServerCredential::Password(backend.auth_password.clone());
    let mut conn = connect(
        ConnectRequest {
            backend,
            user: &backend.auth_user,
            database: &backend.auth_database,
            credential: &credential,
        },
        tls,
    )
    .await
    .map_err(|e| unavailable(format!("auth_query login as {}: {e}", backend.auth_user)))?;
    let outcome = conn
        .extended_query(&backend.auth_query, &[Some(role.as_bytes())])
        .await
        .map_err(|e| unavailable(format!("auth_query: {e}")));
    conn.terminate().await;
    let outcome = outcome?;
    if let Some(e) = outcome.error {
        return Err(unavailable(format!(
            "auth_query failed: {} {}",
            e.code, e.message
        )));
    }
    let row = outcome.rows.first();
    let text = |i: usize| {
        row.and_then(|r| r.get(i))
            .and_then(|v| v.as_ref())
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let secret = text(0).and_then(parse_secret);
    let valid_until = text(1).and_then(|s| s.parse::<f64>().ok());
    Ok(Cached {
        secret,
        valid_until,
        fetched: Instant::now(),
        reread: false,
    })
}

/// Reads a `rolpassword` value; anything else (NULL, plaintext from ancient versions)
/// cannot be used and makes the role unable to log in through Sluice.
fn parse_secret(s: &str) -> Option<RoleSecret> {
    if s.starts_with("SCRAM-SHA-256$") {
        Verifier::parse(s).ok().map(RoleSecret::Scram)
    } else if s.len() == 35 && s.starts_with("md5") {
        Some(RoleSecret::Md5(s.to_owned()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised() {
        let v = Verifier::from_password("pw", b"0123456789abcdef", 4096);
        assert_eq!(
            parse_secret(&v.to_postgres_string()),
            Some(RoleSecret::Scram(v))
        );
        let md5 = wire::md5::md5_password_hash("app", "pw");
        assert_eq!(parse_secret(&md5), Some(RoleSecret::Md5(md5.clone())));
        assert_eq!(parse_secret("plaintext"), None);
        assert_eq!(parse_secret("SCRAM-SHA-256$garbage"), None);
    }
}
