//! API keys: `sk_<id>_<secret>`, kept only as SHA-256 hashes beside their visible id
//! and role. The first admin key comes from `[admin] bootstrap_key_file`, written with
//! mode 0600 when it does not exist yet.

use std::path::Path;

use anyhow::{bail, Context};
use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do; each role can do everything the ones before it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read stats, tenants, jobs, the audit log.
    Viewer,
    /// Also change tenants, pools, limits and roles.
    Operator,
    /// Also manage API keys.
    Admin,
}

impl Role {
    /// The name the store and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct StoredKey {
    hash: [u8; 32],
    role: Role,
}

/// The keys this process accepts.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_id: DashMap<String, StoredKey>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

const ID_LEN: usize = 8;
const SECRET_LEN: usize = 48;

/// A new random key: `sk_` + 8 hex id + `_` + 48 hex secret.
pub fn generate() -> String {
    let mut bytes = [0u8; (ID_LEN + SECRET_LEN) / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sk_{}_{}", &hex[..ID_LEN], &hex[ID_LEN..])
}

/// The SHA-256 of a whole key, as the store keeps it.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The visible id of a well-formed key.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("sk_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_LEN) && hex(secret, SECRET_LEN)).then_some(id)
}

impl ApiKeys {
    /// Accepts `key` with `role` from now on.
    pub fn insert(&self, key: &str, role: Role) -> anyhow::Result<String> {
        let Some(id) = key_id(key) else {
            bail!("not a Sluice API key (expected sk_<8 hex>_<48 hex>)");
        };
        let hash = Sha256::digest(key.as_bytes()).into();
        self.by_id.insert(id.to_owned(), StoredKey { hash, role });
        Ok(id.to_owned())
    }

    /// Accepts the key with this id and hash (as the store keeps them) from now on.
    pub fn insert_hashed(&self, id: &str, hash: [u8; 32], role: Role) {
        self.by_id.insert(id.to_owned(), StoredKey { hash, role });
    }

    /// Stops accepting key `id` at once; false if it was not accepted.
    pub fn remove(&self, id: &str) -> bool {
        self.by_id.remove(id).is_some()
    }

    /// The hash and role of an accepted key.
    pub fn get(&self, id: &str) -> Option<([u8; 32], Role)> {
        self.by_id.get(id).map(|k| (k.hash, k.role))
    }

    /// Makes the store and this cache agree at start: the bootstrap key (already loaded
    /// from its file) is stored as an admin key if the store does not know it yet, and
    /// every key the store holds unrevoked is accepted, with the stored hash and role. A
    /// bootstrap key revoked through the API stays revoked (delete the file to get a new
    /// one).
    pub async fn sync_with_store(
        &self,
        store: &crate::store::Store,
        bootstrap_id: &str,
    ) -> anyhow::Result<()> {
        self.refresh_from(store, bootstrap_id, false).await
    }

    /// Brings the accepted keys in line with the store: keys added elsewhere are accepted,
    /// keys revoked or deleted elsewhere are not any more.
    pub async fn refresh(
        &self,
        store: &crate::store::Store,
        bootstrap_id: &str,
    ) -> anyhow::Result<()> {
        self.refresh_from(store, bootstrap_id, true).await
    }

    /// [`ApiKeys::sync_with_store`], and with `forget` also dropping the keys the store
    /// no longer holds unrevoked. Two queries, whatever the number of keys.
    async fn refresh_from(
        &self,
        store: &crate::store::Store,
        bootstrap_id: &str,
        forget: bool,
    ) -> anyhow::Result<()> {
        let records = store.list_api_keys().await?;
        match records.iter().find(|r| r.id == bootstrap_id) {
            None => {
                let (hash, _) = self
                    .get(bootstrap_id)
                    .context("the bootstrap key is not loaded")?;
                store
                    .insert_api_key(bootstrap_id, &hash, Role::Admin.as_str(), Some("bootstrap"))
                    .await?;
            }
            Some(r) if r.revoked_at.is_some() => {
                tracing::warn!(
                    key_id = %bootstrap_id,
                    "the bootstrap admin key was revoked; it stays revoked \
                     (delete bootstrap_key_file to generate a new one)"
                );
                self.remove(bootstrap_id);
            }
            Some(_) => {}
        }
        let live = store.live_api_keys().await?;
        if forget {
            let ids: std::collections::HashSet<&str> =
                live.iter().map(|(id, _, _)| id.as_str()).collect();
            self.by_id.retain(|id, _| ids.contains(id.as_str()));
        }
        for (id, hash, role) in live {
            if let Some(role) = Role::parse(&role) {
                self.insert_hashed(&id, hash, role);
            }
        }
        Ok(())
    }

    /// The caller a bearer token belongs to, if it is a key this process accepts.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let id = key_id(token)?;
        let stored = self.by_id.get(id)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(hash.ct_eq(&stored.hash)).then(|| Caller {
            key_id: id.to_owned(),
            role: stored.role,
        })
    }

    /// Reads the bootstrap admin key from `path`, creating the file (0600, key and a
    /// newline) when it does not exist. A file others can read is refused.
    pub fn load_bootstrap(&self, path: &Path) -> anyhow::Result<String> {
        let mut generated = false;
        let key = provision::private_file::read_or_create(path, || {
            generated = true;
            generate()
        })?;
        if generated {
            tracing::info!(path = %path.display(), "generated the bootstrap admin key");
        }
        let id = self
            .insert(&key, Role::Admin)
            .with_context(|| format!("bootstrap key in {}", path.display()))?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_verify_only_themselves() {
        let keys = ApiKeys::default();
        let viewer = generate();
        let id = keys.insert(&viewer, Role::Viewer).unwrap();
        assert_eq!(
            keys.verify(&viewer),
            Some(Caller {
                key_id: id.clone(),
                role: Role::Viewer
            })
        );
        // Same id, different secret.
        let forged = format!("sk_{id}_{}", "0".repeat(SECRET_LEN));
        assert_eq!(keys.verify(&forged), None);
        assert_eq!(keys.verify(&generate()), None);
        for junk in ["", "sk_", "Bearer x", "sk_zzzzzzzz_", &viewer[..20]] {
            assert_eq!(keys.verify(junk), None, "{junk:?}");
        }
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn roles_round_trip_and_revoked_keys_stop_verifying() {
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, role.as_str());
            assert_eq!(serde_json::from_value::<Role>(json).unwrap(), role);
        }
        assert_eq!(Role::parse("root"), None);
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err());

        let keys = ApiKeys::default();
        let key = generate();
        let id = key_id(&key).unwrap().to_owned();
        keys.insert_hashed(&id, hash(&key), Role::Operator);
        assert_eq!(keys.verify(&key).unwrap().role, Role::Operator);
        assert_eq!(keys.get(&id), Some((hash(&key), Role::Operator)));
        assert!(keys.remove(&id));
        assert_eq!(keys.verify(&key), None);
        assert!(!keys.remove(&id));
    }

    #[test]
    fn bootstrap_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/admin.key");
        let keys = ApiKeys::default();
        let id = keys.load_bootstrap(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = fs::read_to_string(&path).unwrap();
        assert_eq!(keys.verify(key.trim()).unwrap().role, Role::Admin);

        let again = ApiKeys::default();
        assert_eq!(again.load_bootstrap(&path).unwrap(), id);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ApiKeys::default().load_bootstrap(&path).unwrap_err();
        assert!(err.to_string().contains("readable by others"), "{err}");
    }
}
