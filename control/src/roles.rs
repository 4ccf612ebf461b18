//! A tenant's login roles, managed on its backend over the administrator credential the
//! provisioning job stored: the connection ([`admin_client`]) and the operations on
//! roles (made by the `provision` crate's backend SQL, the same for every driver).
//!
//! The admin API changes the backend first, then records the role's SCRAM verifier in
//! the store with its audit event.

use provision::BackendAddress;

use crate::plane::Plane;
use crate::secrets::tenant_secret;
use crate::store::TenantRecord;

pub use provision::sql::{
    create_role, drop_role, generate_password, scram_verifier, set_password, valid_role_name,
    AdminClient, RoleError,
};

/// Why there is no administrator connection to a tenant's backend.
#[derive(Debug, thiserror::Error)]
pub enum AdminAccessError {
    /// The tenant cannot have its roles managed (yet, or through Sluice at all); the
    /// message says why.
    #[error("{0}")]
    NotManaged(String),
    /// The control store is unreachable, or failed to answer.
    #[error(transparent)]
    Store(#[from] crate::open::StoreUnavailable),
    #[error("reading the administrator credential: {0:#}")]
    StoreFailed(anyhow::Error),
    /// The stored credential cannot be opened.
    #[error("{0:#}")]
    Sealed(anyhow::Error),
    /// The backend did not accept the connection.
    #[error("{0:#}")]
    Backend(anyhow::Error),
}

/// A connection to `record`'s backend as its administrator. A tenant that is not
/// `active` or `suspended`, or has no administrator credential (declared in the config
/// file), is [`AdminAccessError::NotManaged`].
pub async fn admin_client(
    plane: &Plane,
    record: &TenantRecord,
) -> Result<AdminClient, AdminAccessError> {
    let id = &record.id;
    if !matches!(record.status.as_str(), "active" | "suspended") {
        return Err(AdminAccessError::NotManaged(format!(
            "tenant \"{id}\" is {}; roles can be managed once it is active",
            record.status
        )));
    }
    let b = &record.backend;
    let (Some(host), Some(port), Some(admin_user)) = (&b.host, b.port, &b.admin_user) else {
        return Err(AdminAccessError::NotManaged(format!(
            "tenant \"{id}\" has no administrator credential (a config file tenant): manage its roles on its server"
        )));
    };
    let store = plane.control.store()?;
    let name = tenant_secret(id, "admin");
    let sealed = store
        .secrets(&name)
        .await
        .map_err(AdminAccessError::StoreFailed)?;
    let sealed = sealed.get(&name).ok_or_else(|| {
        AdminAccessError::NotManaged(format!("tenant \"{id}\" has no administrator credential"))
    })?;
    let password = plane
        .sync
        .secrets
        .open(&name, sealed)
        .map_err(AdminAccessError::Sealed)?;
    let address = BackendAddress {
        host: host.clone(),
        port,
        tls: b.tls.clone(),
        tls_ca: b.tls_ca.clone(),
        admin_user: admin_user.clone(),
        admin_database: b
            .admin_database
            .clone()
            .unwrap_or_else(|| "postgres".into()),
    };
    provision::sql::connect_admin(&address, &password, None)
        .await
        .map_err(AdminAccessError::Backend)
}
