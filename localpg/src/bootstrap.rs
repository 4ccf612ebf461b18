//! SQL that prepares a tenant's cluster for Sluice, shared by `sluice demo`, the tests
//! and (later) the local provisioner, so every local tenant is set up the same way.
//!
//! The statements are meant for [`crate::Cluster::run_single_user`]: one per line,
//! passwords only as SCRAM verifiers computed by the caller.

/// The auth query that goes with [`auth_lookup_sql`].
pub const AUTH_QUERY: &str = "SELECT secret, valid_until FROM sluice.role_secret($1)";

/// A login role with a SCRAM verifier (`SCRAM-SHA-256$...`) as its password.
pub fn create_login_role(name: &str, verifier: &str) -> String {
    format!(
        "CREATE ROLE {} LOGIN PASSWORD '{}'",
        quote_ident(name),
        verifier.replace('\'', "''")
    )
}

/// A least-privilege way for `auth_role` to read secrets: a SECURITY DEFINER function
/// that returns a login role's secret and expiry, and never a superuser's.
pub fn auth_lookup_sql(auth_role: &str) -> String {
    let role = quote_ident(auth_role);
    [
        "CREATE SCHEMA sluice".to_owned(),
        "CREATE FUNCTION sluice.role_secret(name) RETURNS TABLE (secret text, valid_until float8) \
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$ \
         SELECT rolpassword, extract(epoch FROM rolvaliduntil)::float8 FROM pg_authid \
         WHERE rolname = $1 AND rolcanlogin AND NOT rolsuper $$"
            .to_owned(),
        "REVOKE ALL ON FUNCTION sluice.role_secret(name) FROM PUBLIC".to_owned(),
        format!("GRANT USAGE ON SCHEMA sluice TO {role}"),
        format!("GRANT EXECUTE ON FUNCTION sluice.role_secret(name) TO {role}"),
    ]
    .join("\n")
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_per_line() {
        assert_eq!(auth_lookup_sql("a").lines().count(), 5);
        assert_eq!(
            create_login_role("app", "SCRAM-SHA-256$x"),
            "CREATE ROLE \"app\" LOGIN PASSWORD 'SCRAM-SHA-256$x'"
        );
    }
}
