//! What Sluice replicas of one fleet say to each other: a CancelRequest one replica
//! received for a client another replica serves, and the tag in every cancel key that
//! tells which replica that is.
//!
//! Both use the fleet's shared secret (`[fleet] secret_file`) as an HMAC-SHA-256 key:
//! - [`key_tag`]: the top byte of a client's cancel secret is its replica's slot XOR a
//!   byte of HMAC(secret, "tag" ‖ pid ‖ the secret's other 24 bits). Any replica can
//!   read the slot back; to anyone without the fleet secret the byte is as random as
//!   the rest, so a key is no easier to guess than without a fleet.
//! - [`ForwardedCancel`]: a fixed-size message, `MAGIC` ‖ version ‖ the sender's slot ‖
//!   time sent (ms since the Unix epoch) ‖ a random nonce ‖ the key ‖ the client's
//!   address (16 bytes, IPv4 mapped) ‖ HMAC over all of that. The receiver checks
//!   the HMAC (in constant time) before it looks at anything else; freshness and
//!   replays are the receiver's to check, with the time and nonce it gets back.

use std::net::{IpAddr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::startup::CancelKey;

type HmacSha256 = Hmac<Sha256>;

/// The first bytes of a forwarded cancel.
pub const MAGIC: [u8; 4] = *b"SLCF";
/// The version of the message this build sends and reads.
pub const VERSION: u8 = 1;
/// The length of a forwarded cancel, exactly.
pub const FORWARDED_CANCEL_LEN: usize = 4 + 1 + 1 + 8 + 16 + 4 + 4 + 16 + 32;
/// Where the HMAC starts.
const SIGNED_LEN: usize = FORWARDED_CANCEL_LEN - 32;

/// The byte XORed with a replica's slot in the top byte of a cancel secret.
pub fn key_tag(fleet_secret: &[u8], pid: i32, low24: u32) -> u8 {
    let mut mac = HmacSha256::new_from_slice(fleet_secret).expect("HMAC takes any key length");
    mac.update(b"tag");
    mac.update(&pid.to_be_bytes());
    mac.update(&(low24 & 0x00ff_ffff).to_be_bytes());
    mac.finalize().into_bytes()[0]
}

/// The secret of a cancel key for a client of the replica in `slot`, from 24 random
/// bits.
pub fn tagged_secret(fleet_secret: &[u8], slot: u8, pid: i32, random: u32) -> i32 {
    let low24 = random & 0x00ff_ffff;
    let top = slot ^ key_tag(fleet_secret, pid, low24);
    ((u32::from(top) << 24) | low24) as i32
}

/// The slot of the replica that gave out `key` (if a replica of this fleet did).
pub fn slot_of(fleet_secret: &[u8], key: CancelKey) -> u8 {
    let secret = key.secret as u32;
    let top = (secret >> 24) as u8;
    top ^ key_tag(fleet_secret, key.pid, secret & 0x00ff_ffff)
}

/// A CancelRequest sent on by the replica that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedCancel {
    /// The sending replica's slot.
    pub from_slot: u8,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    pub nonce: [u8; 16],
    pub key: CancelKey,
    /// The address the CancelRequest came from.
    pub client_ip: IpAddr,
}

/// Why a forwarded cancel was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedCancelError {
    #[error("not a forwarded cancel (bad magic)")]
    Magic,
    #[error("unknown forwarded-cancel version {0}")]
    Version(u8),
    #[error("forwarded cancel with a bad signature")]
    Signature,
}

impl ForwardedCancel {
    /// The message, signed with `fleet_secret`.
    pub fn encode(&self, fleet_secret: &[u8]) -> [u8; FORWARDED_CANCEL_LEN] {
        let mut out = [0u8; FORWARDED_CANCEL_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.from_slot;
        out[6..14].copy_from_slice(&self.sent_at_ms.to_be_bytes());
        out[14..30].copy_from_slice(&self.nonce);
        out[30..34].copy_from_slice(&self.key.pid.to_be_bytes());
        out[34..38].copy_from_slice(&self.key.secret.to_be_bytes());
        let ip = match self.client_ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out[38..54].copy_from_slice(&ip.octets());
        let mut mac = HmacSha256::new_from_slice(fleet_secret).expect("HMAC takes any key length");
        mac.update(&out[..SIGNED_LEN]);
        out[SIGNED_LEN..].copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Reads a message, checking its signature first.
    pub fn decode(
        bytes: &[u8; FORWARDED_CANCEL_LEN],
        fleet_secret: &[u8],
    ) -> Result<ForwardedCancel, ForwardedCancelError> {
        if bytes[0..4] != MAGIC {
            return Err(ForwardedCancelError::Magic);
        }
        if bytes[4] != VERSION {
            return Err(ForwardedCancelError::Version(bytes[4]));
        }
        let mut mac = HmacSha256::new_from_slice(fleet_secret).expect("HMAC takes any key length");
        mac.update(&bytes[..SIGNED_LEN]);
        mac.verify_slice(&bytes[SIGNED_LEN..])
            .map_err(|_| ForwardedCancelError::Signature)?;
        let be4 = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&bytes[6..14]);
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&bytes[14..30]);
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&bytes[38..54]);
        let ip = Ipv6Addr::from(ip);
        Ok(ForwardedCancel {
            from_slot: bytes[5],
            sent_at_ms: u64::from_be_bytes(sent_at),
            nonce,
            key: CancelKey {
                pid: i32::from_be_bytes(be4(30)),
                secret: i32::from_be_bytes(be4(34)),
            },
            client_ip: ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a fleet secret of thirty-two byt";

    #[test]
    fn every_slot_reads_back_from_its_keys() {
        for slot in [0u8, 1, 2, 7, 255] {
            for (pid, random) in [(1, 0), (42, 0xffff_ffff), (i32::MAX, 0x0012_3456), (-5, 9)] {
                let secret = tagged_secret(SECRET, slot, pid, random);
                assert_eq!(secret as u32 & 0x00ff_ffff, random & 0x00ff_ffff);
                assert_eq!(slot_of(SECRET, CancelKey { pid, secret }), slot);
            }
        }
    }

    #[test]
    fn the_tag_depends_on_the_fleet_secret() {
        let tags: std::collections::HashSet<u8> = (0..64)
            .map(|i| {
                slot_of(
                    format!("secret {i}").as_bytes(),
                    CancelKey { pid: 7, secret: 1 },
                )
            })
            .collect();
        assert!(tags.len() > 16, "the tag barely varies: {tags:?}");
    }

    #[test]
    fn a_forwarded_cancel_round_trips_and_any_change_breaks_its_signature() {
        let message = ForwardedCancel {
            from_slot: 3,
            sent_at_ms: 1_700_000_000_123,
            nonce: [9; 16],
            key: CancelKey {
                pid: 1234,
                secret: -77,
            },
            client_ip: "127.0.0.2".parse().unwrap(),
        };
        let bytes = message.encode(SECRET);
        assert_eq!(ForwardedCancel::decode(&bytes, SECRET), Ok(message));
        let v6 = ForwardedCancel {
            client_ip: "2001:db8::1".parse().unwrap(),
            ..message
        };
        assert_eq!(ForwardedCancel::decode(&v6.encode(SECRET), SECRET), Ok(v6));
        assert_eq!(
            ForwardedCancel::decode(&bytes, b"another secret"),
            Err(ForwardedCancelError::Signature)
        );
        for i in 5..FORWARDED_CANCEL_LEN {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert_eq!(
                ForwardedCancel::decode(&bad, SECRET),
                Err(ForwardedCancelError::Signature),
                "byte {i}"
            );
        }
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(
            ForwardedCancel::decode(&bad, SECRET),
            Err(ForwardedCancelError::Magic)
        );
        bad = bytes;
        bad[4] = 2;
        assert_eq!(
            ForwardedCancel::decode(&bad, SECRET),
            Err(ForwardedCancelError::Version(2))
        );
    }
}
