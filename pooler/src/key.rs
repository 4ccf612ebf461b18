//! [`PoolKey`]: what a pool is for, (tenant, database, role). Imports nothing of the
//! crate, so the pool and the registry can both name it.

use std::fmt;

use router::TenantId;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub tenant: TenantId,
    pub database: String,
    pub role: String,
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.database, self.role)
    }
}
