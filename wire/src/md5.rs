//! Postgres' legacy md5 password authentication.
//!
//! Sluice uses it only to log into backends that still store md5 hashes; it
//! never offers md5 to clients by choice.

use md5::{Digest, Md5};

/// Hex digits of `md5(parts...)`.
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash Postgres stores for `user`'s `password`:
/// `"md5" + hex(md5(password + user))`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The response to AuthenticationMD5Password, given the stored hash
/// (`"md5..."`, as from [`md5_password_hash`]) and the server's salt:
/// `"md5" + hex(md5(hex_part + salt))`. Without its NUL terminator.
pub fn md5_response(stored_md5: &str, salt: [u8; 4]) -> String {
    let hex = stored_md5.strip_prefix("md5").unwrap_or(stored_md5);
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_postgres_values() {
        // SELECT 'md5' || md5('postgres' || 'postgres');
        let stored = md5_password_hash("postgres", "postgres");
        assert_eq!(stored, "md53175bce1d3201d16594cebf9d7eb3f9d");
        // Computed independently with md5sum over the hex digits + salt bytes.
        assert_eq!(
            md5_response(&stored, [1, 2, 3, 4]),
            "md568be9ed08db75f318087ab337aaea044"
        );
    }
}
