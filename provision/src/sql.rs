//! What the control plane does on a tenant's backend once a driver has made it, over an
//! administrator's login: the same SQL whatever the driver.
//!
//! Layout of a tenant backend:
//!
//! - [`AUTH_USER`] (`sluice_auth`): the login Sluice's `auth_query` uses; it may only call
//!   `sluice.role_secret(name)` in [`AUTH_DATABASE`], a SECURITY DEFINER function that
//!   returns a login role's SCRAM verifier and expiry, never a superuser's
//!   ([`localpg::bootstrap::auth_lookup_sql`]);
//! - [`APP_OWNER`] (`app_owner`): a NOLOGIN group role that owns database [`APP_DATABASE`]
//!   (`app`) and its `public` schema; every login role made through the API is a member, so
//!   it may create tables there;
//! - the tenant's login roles, made by [`create_role`].
//!
//! Passwords travel as SCRAM verifiers (`SCRAM-SHA-256$...`), computed here: the
//! backend never sees a plaintext password, and a statement log shows none. Functions
//! that take a verifier refuse anything else. Statements with a verifier are utility
//! statements, which take no bind parameters, so the verifier is a quoted literal; it is
//! checked to be in Postgres' canonical form (base64 and `$:`) first.
//!
//! Everything runs over an [`AdminClient`] from [`connect_admin`] (`sql/connect.rs`),
//! which opens further connections to `postgres` or `app` when a step must run there.

mod connect;

use anyhow::{anyhow, bail, Context};
use localpg::bootstrap::{auth_lookup_sql, quote_ident};
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use rand::RngCore;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use wire::scram::Verifier;

pub(super) use connect::tls_mode;
pub use connect::{connect_admin, is_permanent, wait_ready, AdminClient, Permanent};

/// The role Sluice's `auth_query` logs in as.
pub const AUTH_USER: &str = "sluice_auth";
/// The database `auth_query` connects to, where the lookup function lives.
pub const AUTH_DATABASE: &str = "postgres";
/// The query that goes with the lookup function ([`localpg::bootstrap::AUTH_QUERY`]).
pub const AUTH_QUERY: &str = localpg::bootstrap::AUTH_QUERY;
/// The group role that owns the tenant's database; every API-made login role is a member.
pub const APP_OWNER: &str = "app_owner";
/// The tenant's database.
pub const APP_DATABASE: &str = "app";

/// Iterations of PBKDF2 in the verifiers made here (Postgres' own default).
const SCRAM_ITERATIONS: u32 = 4096;
/// Length of [`generate_password`]'s passwords: 32 alphanumerics are about 190 bits.
const PASSWORD_LENGTH: usize = 32;

/// Role names that [`valid_role_name`] refuses besides `pg_*`, `sluice` and `sluice_*`:
/// Sluice's own roles, the bootstrap superuser, names Postgres reserves as role
/// specifications, and pg_hba.conf keywords (a role by that name reads as the keyword
/// there).
const RESERVED_ROLE_NAMES: [&str; 13] = [
    "postgres",
    APP_OWNER,
    "public",
    "none",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "all",
    "replication",
    "sameuser",
    "samerole",
    "samegroup",
];

/// Why a role operation failed, for the roles API to answer 409 / 404 / 5xx.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// A role by that name already exists (SQLSTATE 42710).
    #[error("the role already exists")]
    Exists,
    /// No such role, or one that Sluice did not make (not a member of `app_owner`).
    #[error("the role does not exist")]
    Missing,
    #[error(transparent)]
    Other(anyhow::Error),
}

/// Prepares a backend for Sluice; safe to run again (each step checks or replaces what is
/// there): the login role `auth_user` with `auth_verifier` (its password is replaced if
/// it exists), the lookup function in [`AUTH_DATABASE`], the group role [`APP_OWNER`], the
/// database [`APP_DATABASE`] owned by it, and its `public` schema owned by it too.
pub async fn ensure_tenant_setup(
    client: &AdminClient,
    auth_user: &str,
    auth_verifier: &str,
) -> anyhow::Result<()> {
    check_verifier(auth_verifier)?;
    let auth = quote_ident(auth_user);
    let secret = quote_literal(auth_verifier);
    if role_exists(client, auth_user).await? {
        client
            .batch_execute(&format!("ALTER ROLE {auth} LOGIN PASSWORD {secret}"))
            .await
            .with_context(|| format!("setting the password of {auth}"))?;
    } else {
        client
            .batch_execute(&format!("CREATE ROLE {auth} LOGIN PASSWORD {secret}"))
            .await
            .with_context(|| format!("creating the auth role {auth}"))?;
    }
    let in_auth_database = client.open_in(AUTH_DATABASE).await?;
    in_auth_database
        .as_deref()
        .unwrap_or(client)
        .batch_execute(&format!(
            "BEGIN;\n{};\nCOMMIT",
            idempotent_auth_lookup_sql(auth_user).replace('\n', ";\n")
        ))
        .await
        .context("installing the auth lookup function sluice.role_secret")?;

    let owner = quote_ident(APP_OWNER);
    if !role_exists(client, APP_OWNER).await? {
        client
            .batch_execute(&format!("CREATE ROLE {owner} NOLOGIN"))
            .await
            .with_context(|| format!("creating the group role {owner}"))?;
    }
    let database = quote_ident(APP_DATABASE);
    // CREATE DATABASE refuses to run inside a transaction, and has no IF NOT EXISTS:
    // look first.
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&APP_DATABASE],
        )
        .await
        .context("looking for the app database")?
        .is_some();
    let statement = if exists {
        format!("ALTER DATABASE {database} OWNER TO {owner}")
    } else {
        format!("CREATE DATABASE {database} OWNER {owner}")
    };
    client
        .batch_execute(&statement)
        .await
        .with_context(|| format!("running {statement}"))?;

    // Since PostgreSQL 15 `public` belongs to pg_database_owner (the owner above) in a new
    // database; older servers give it to the bootstrap superuser. Either way, say it.
    let in_app = client.open_in(APP_DATABASE).await?;
    in_app
        .as_deref()
        .unwrap_or(client)
        .batch_execute(&format!("ALTER SCHEMA public OWNER TO {owner}"))
        .await
        .context("giving schema public of the app database to app_owner")?;
    Ok(())
}

/// localpg's lookup function (the one definition of it), made re-runnable: the schema
/// only if missing, the function replaced. One statement per line.
fn idempotent_auth_lookup_sql(auth_user: &str) -> String {
    auth_lookup_sql(auth_user)
        .replacen("CREATE SCHEMA ", "CREATE SCHEMA IF NOT EXISTS ", 1)
        .replacen("CREATE FUNCTION ", "CREATE OR REPLACE FUNCTION ", 1)
}

async fn role_exists(client: &Client, name: &str) -> anyhow::Result<bool> {
    let row = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .with_context(|| format!("looking for role {name:?}"))?;
    Ok(row.is_some())
}

/// Creates a login role of the tenant with `verifier` as its password, member of
/// [`APP_OWNER`]. [`RoleError::Exists`] if the name is taken.
pub async fn create_role(client: &Client, name: &str, verifier: &str) -> Result<(), RoleError> {
    valid_role_name(name).map_err(|e| RoleError::Other(anyhow!(e)))?;
    check_verifier(verifier).map_err(RoleError::Other)?;
    let sql = format!(
        "CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}",
        quote_ident(name),
        quote_literal(verifier),
        quote_ident(APP_OWNER)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| match e.code() {
            Some(code) if *code == SqlState::DUPLICATE_OBJECT => RoleError::Exists,
            _ => RoleError::Other(anyhow::Error::new(e).context(format!("creating role {name:?}"))),
        })
}

/// Replaces the password of a tenant role. Sessions already logged in stay logged in
/// (Postgres checks a password only at login). [`RoleError::Missing`] for a role that does
/// not exist or that Sluice did not make.
pub async fn set_password(client: &Client, name: &str, verifier: &str) -> Result<(), RoleError> {
    valid_role_name(name).map_err(|e| RoleError::Other(anyhow!(e)))?;
    check_verifier(verifier).map_err(RoleError::Other)?;
    if !is_tenant_role(client, name).await? {
        return Err(RoleError::Missing);
    }
    let sql = format!(
        "ALTER ROLE {} PASSWORD {}",
        quote_ident(name),
        quote_literal(verifier)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| match e.code() {
            // Dropped since we looked.
            Some(code) if *code == SqlState::UNDEFINED_OBJECT => RoleError::Missing,
            _ => RoleError::Other(
                anyhow::Error::new(e).context(format!("setting the password of {name:?}")),
            ),
        })
}

/// Removes a tenant role, keeping its data: what it owns in [`APP_DATABASE`] and
/// [`AUTH_DATABASE`] passes to [`APP_OWNER`] (REASSIGN OWNED), its remaining privileges
/// there are revoked (DROP OWNED), then the role is dropped. [`RoleError::Missing`] for a
/// role that does not exist or that Sluice did not make.
///
/// Postgres lets DROP ROLE go through while the role has sessions (it checks owned
/// objects and privileges, not sessions), and those sessions stay connected as a role
/// that no longer exists (tested on PostgreSQL 15: `SELECT 1` still runs, `SELECT
/// current_user` fails with "invalid role OID", CREATE TABLE is denied since the
/// membership in `app_owner` went with the role). So the role first loses LOGIN, then
/// its sessions are terminated, and only then are its objects moved and the role
/// dropped: a deleted credential stops working at once. (Server connections that
/// Sluice's pools hold for the role are among those sessions.)
pub async fn drop_role(client: &AdminClient, name: &str) -> Result<(), RoleError> {
    valid_role_name(name).map_err(|e| RoleError::Other(anyhow!(e)))?;
    let other = |what: String| {
        move |e: tokio_postgres::Error| RoleError::Other(anyhow::Error::new(e).context(what))
    };
    if !is_tenant_role(client, name).await? {
        return Err(RoleError::Missing);
    }
    let role = quote_ident(name);
    client
        .batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .await
        .map_err(other(format!("taking LOGIN from {role}")))?;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .map_err(other(format!("ending the sessions of {role}")))?;
    let keep_data = format!(
        "REASSIGN OWNED BY {role} TO {}; DROP OWNED BY {role}",
        quote_ident(APP_OWNER)
    );
    for database in [AUTH_DATABASE, APP_DATABASE] {
        let there = client.open_in(database).await.map_err(RoleError::Other)?;
        there
            .as_deref()
            .unwrap_or(client)
            .batch_execute(&keep_data)
            .await
            .map_err(other(format!(
                "moving what {role} owns in database {database:?} to {APP_OWNER}"
            )))?;
    }
    client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .map_err(|e| match e.code() {
            Some(code) if *code == SqlState::UNDEFINED_OBJECT => RoleError::Missing,
            _ => RoleError::Other(anyhow::Error::new(e).context(format!("dropping {role}"))),
        })
}

/// True if `name` exists and is a direct member of [`APP_OWNER`]: the roles the API made.
/// Others (the superuser, `sluice_auth`, an operator's own roles on a static backend) are
/// never changed through it.
async fn is_tenant_role(client: &Client, name: &str) -> Result<bool, RoleError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_auth_members m \
             JOIN pg_roles member ON member.oid = m.member \
             JOIN pg_roles grp ON grp.oid = m.roleid \
             WHERE member.rolname = $1 AND grp.rolname = $2",
            &[&name, &APP_OWNER],
        )
        .await
        .map_err(|e| {
            RoleError::Other(anyhow::Error::new(e).context(format!("looking for role {name:?}")))
        })?;
    Ok(row.is_some())
}

/// Checks a name for a tenant's login role: `[a-z_][a-z0-9_]{0,62}` (a name that needs no
/// quoting anywhere and fits Postgres' 63 bytes), not `pg_*` (reserved by Postgres), not
/// `sluice` or `sluice_*` (Sluice's own), nor one of the reserved names above.
pub fn valid_role_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err("a role name cannot be empty".to_owned());
    };
    if bytes.len() > 63 {
        return Err(format!("role name {name:?} is longer than 63 characters"));
    }
    if !(first.is_ascii_lowercase() || first == b'_') {
        return Err(format!(
            "role name {name:?} must start with a lowercase letter or '_'"
        ));
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_';
    if !bytes.iter().all(allowed) {
        return Err(format!(
            "role name {name:?} may contain only lowercase letters, digits and '_'"
        ));
    }
    if name.starts_with("pg_") {
        return Err(format!(
            "role name {name:?} is reserved: pg_ names belong to PostgreSQL"
        ));
    }
    if name == "sluice" || name.starts_with("sluice_") {
        return Err(format!(
            "role name {name:?} is reserved: sluice names belong to Sluice"
        ));
    }
    if RESERVED_ROLE_NAMES.contains(&name) {
        return Err(format!("role name {name:?} is reserved"));
    }
    Ok(())
}

/// A SCRAM-SHA-256 verifier for `password`: a random 16-byte salt, 4096 iterations.
pub fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    Verifier::from_password(password, &salt, SCRAM_ITERATIONS).to_postgres_string()
}

/// A new password: 32 letters and digits from the operating system's CSPRNG, nothing that
/// needs quoting in SQL, a connection string or a shell.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut OsRng, PASSWORD_LENGTH)
}

/// Refuses anything but a canonical SCRAM verifier, so that a plaintext password can
/// never be sent by mistake, and the literal it goes into needs no escaping to be safe.
fn check_verifier(verifier: &str) -> anyhow::Result<()> {
    let parsed = Verifier::parse(verifier)
        .map_err(|e| anyhow!("expected a SCRAM-SHA-256 verifier, not a password: {e}"))?;
    if parsed.to_postgres_string() != verifier {
        bail!("the SCRAM-SHA-256 verifier is not in PostgreSQL's canonical form");
    }
    Ok(())
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings; verifiers hold no
/// backslash anyway).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_sql_is_made_re_runnable() {
        let sql = idempotent_auth_lookup_sql("sluice_auth");
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS sluice"), "{sql}");
        assert!(
            sql.contains("CREATE OR REPLACE FUNCTION sluice.role_secret"),
            "{sql}"
        );
        assert_eq!(sql.lines().count(), auth_lookup_sql("x").lines().count());
    }

    #[test]
    fn only_canonical_verifiers_pass() {
        assert!(check_verifier(&scram_verifier("pw")).is_ok());
        assert!(check_verifier("hunter2").is_err());
        let sloppy = scram_verifier("pw").replace("4096", "04096");
        assert!(check_verifier(&sloppy).is_err());
    }

    #[test]
    fn tls_words_are_libpq_sslmodes() {
        assert_eq!(tls_mode("verify-full"), Ok(router::BackendTls::VerifyFull));
        assert!(tls_mode("verify-ca").is_err());
        assert!(tls_mode("").is_err());
    }
}
