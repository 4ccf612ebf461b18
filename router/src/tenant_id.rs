//! `TenantId`: the name of a tenant, one DNS label, checked once where it enters.

use std::fmt;
use std::sync::Arc;

/// A tenant id: one DNS label (`[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`), because it is
/// the first label of the host name clients connect to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tenant id {0:?}: must be a DNS label of 1-63 characters from [a-z0-9-], not starting or ending with '-'")]
pub struct TenantIdError(pub String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, TenantIdError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if valid {
            Ok(TenantId(Arc::from(s)))
        } else {
            Err(TenantIdError(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a map keyed by `TenantId` be searched with a `&str` (no allocation): the hash
/// and equality of a `TenantId` are those of its string.
impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}
