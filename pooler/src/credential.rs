//! What Sluice presents to a backend when it opens a server connection for a role.

use std::fmt;

use wire::scram::ClientKey;

/// A credential for logging into a backend as a client's role. Sluice never stores a
/// client's password: for SCRAM it keeps the ClientKey recovered from the client's own
/// proof (pass-through), for md5 the stored md5 hash read from the backend.
#[derive(Clone)]
pub enum ServerCredential {
    /// SCRAM pass-through. `server_key` lets Sluice check the backend's signature.
    ScramClientKey {
        client_key: ClientKey,
        server_key: [u8; 32],
    },
    /// The role's `md5...` hash from `pg_authid`: enough to answer an md5 challenge.
    Md5Hash(String),
    /// A plaintext password, only for Sluice's own `auth_user`.
    Password(String),
}

impl fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerCredential::ScramClientKey { .. } => "ScramClientKey(..)",
            ServerCredential::Md5Hash(_) => "Md5Hash(..)",
            ServerCredential::Password(_) => "Password(..)",
        })
    }
}
