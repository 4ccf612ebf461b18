//! How the administrator's password reaches PostgreSQL inside a new container without
//! Proxmox ever seeing it (docs/drivers.md, "Password handoff").
//!
//! The Proxmox API pushes exactly one piece of caller text into a new container's file
//! system: the create call's `ssh-public-keys`, which Proxmox writes to
//! `/root/.ssh/authorized_keys` in the container and does not keep in the container's
//! config. The driver sends one line there:
//!
//! ```text
//! restrict ssh-ed25519 <32 random bytes, base64'd as a key> sluice-admin-verifier:SCRAM-SHA-256$4096:…
//! ```
//!
//! The key is 32 random bytes with no private half (nobody can log in with it, and
//! `restrict` would forbid everything but a shell anyway); the line exists for its
//! comment, the SCRAM verifier of the administrator's password. The template's
//! first-boot unit sets that verifier as the `postgres` role's password and removes the
//! line. A verifier lets no one log in: it proves a server's identity to a client that
//! knows the password, and the password (32 random characters) cannot be recovered from
//! it by guessing.

use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;

/// What the comment of the handoff line starts with, before the verifier.
pub const MARKER: &str = "sluice-admin-verifier:";

/// The `authorized_keys` line carrying `verifier`.
pub fn key_line(verifier: &str) -> String {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut blob = Vec::with_capacity(51);
    for field in [&b"ssh-ed25519"[..], &key[..]] {
        blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
        blob.extend_from_slice(field);
    }
    let blob = base64::engine::general_purpose::STANDARD.encode(blob);
    format!("restrict ssh-ed25519 {blob} {MARKER}{verifier}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_an_authorized_keys_line_with_the_verifier_as_comment() {
        let line = key_line("SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 4);
        assert_eq!(&words[..2], ["restrict", "ssh-ed25519"]);
        let blob = base64::engine::general_purpose::STANDARD
            .decode(words[2])
            .unwrap();
        assert_eq!(blob.len(), 4 + 11 + 4 + 32);
        assert_eq!(&blob[4..15], b"ssh-ed25519");
        assert_eq!(
            words[3],
            "sluice-admin-verifier:SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy"
        );
    }
}
