//! What Sluice replicas of one fleet say to each other: a CancelRequest one replica
//! received for a client another replica serves, and what in every cancel key tells
//! which replica that is.
//!
//! Both use the fleet's shared secret (`[fleet] secret_file`) as an HMAC-SHA-256 key:
//! - [`key_tag`]: the top byte of a protocol 3.0 client's cancel secret (4 bytes) is its
//!   replica's slot XOR a byte of HMAC(secret, "tag" ‖ pid ‖ the secret's other 24
//!   bits). Any replica can read the slot back; to anyone without the fleet secret the
//!   byte is as random as the rest, so a key is no easier to guess than without a
//!   fleet.
//! - [`long_secret`]: a protocol 3.2 client's 32-byte secret names the slot and the
//!   process (its instance, random at its start) in clear, carries 128 random bits,
//!   and ends with a 40-bit HMAC tag over all of it ([`long_key_origin`] checks it), so
//!   a replica can tell a key of its fleet from a forged one before sending it on.
//! - [`ForwardedCancel`]: `MAGIC` ‖ version ‖ the sender's slot ‖ time sent (ms since
//!   the Unix epoch) ‖ a random nonce ‖ the key ‖ the client's address (16 bytes, IPv4
//!   mapped) ‖ HMAC over all of that. Version 1 carries a 4-byte secret (86 bytes in
//!   all), version 2 a length (2 bytes) and a secret of that length (32 bytes: 116 in
//!   all). The receiver checks the HMAC (in constant time) before it looks at anything
//!   else; freshness and replays are the receiver's to check, with the time and nonce
//!   it gets back.

use std::net::{IpAddr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use subtle::ConstantTimeEq;

use crate::startup::{CancelKey, ClientCancelKey, LongKey, LONG_SECRET_LEN, MAX_SECRET_LEN};

type HmacSha256 = Hmac<Sha256>;

/// The first bytes of a forwarded cancel.
pub const MAGIC: [u8; 4] = *b"SLCF";
/// A forwarded cancel with a protocol 3.0 key (a 4-byte secret).
pub const VERSION_SHORT: u8 = 1;
/// A forwarded cancel with a secret of the length it gives (protocol 3.2 keys).
pub const VERSION_SIZED: u8 = 2;
/// Bytes that tell the length of any forwarded cancel ([`forwarded_len`]): magic,
/// version, slot, time, nonce, process id, and version 2's key length.
pub const HEAD_LEN: usize = 4 + 1 + 1 + 8 + 16 + 4 + 2;
/// The length of a version 1 message, exactly.
pub const SHORT_LEN: usize = 4 + 1 + 1 + 8 + 16 + 4 + 4 + 16 + 32;
/// The longest message of any version (a version 2 one with a 256-byte secret).
pub const MAX_FORWARDED_CANCEL_LEN: usize = HEAD_LEN + MAX_SECRET_LEN + 16 + 32;
/// Where the process id is.
const PID_AT: usize = 30;

/// The layout of Sluice's 32-byte secrets (their first byte).
pub const LONG_KEY_LAYOUT: u8 = 1;
/// Bit of a long secret's flags byte: the slot byte is set.
const HAS_SLOT: u8 = 1;
/// Where a long secret's HMAC tag starts; it runs to the end (5 bytes).
const LONG_TAG_AT: usize = 27;

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

/// Which process handed out a long key: its slot in the fleet (unless it had none yet)
/// and its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOrigin {
    pub slot: Option<u8>,
    pub instance: i64,
}

fn long_tag(tag_secret: &[u8], pid: i32, signed: &[u8]) -> [u8; LONG_SECRET_LEN - LONG_TAG_AT] {
    let mut mac = HmacSha256::new_from_slice(tag_secret).expect("HMAC takes any key length");
    mac.update(b"key32");
    mac.update(&pid.to_be_bytes());
    mac.update(signed);
    let mut tag = [0u8; LONG_SECRET_LEN - LONG_TAG_AT];
    tag.copy_from_slice(&mac.finalize().into_bytes()[..LONG_SECRET_LEN - LONG_TAG_AT]);
    tag
}

/// The 32-byte secret of a protocol 3.2 client's key with process id `pid`: layout ‖
/// flags ‖ slot ‖ instance (8 bytes) ‖ `random` (16 bytes) ‖ 5 bytes of
/// HMAC(`tag_secret`, "key32" ‖ pid ‖ all that). `tag_secret` is the fleet's secret
/// (any replica can then check the tag), or a process's own outside a fleet.
pub fn long_secret(
    tag_secret: &[u8],
    origin: KeyOrigin,
    pid: i32,
    random: [u8; 16],
) -> [u8; LONG_SECRET_LEN] {
    let mut secret = [0u8; LONG_SECRET_LEN];
    secret[0] = LONG_KEY_LAYOUT;
    secret[1] = if origin.slot.is_some() { HAS_SLOT } else { 0 };
    secret[2] = origin.slot.unwrap_or(0);
    secret[3..11].copy_from_slice(&origin.instance.to_be_bytes());
    secret[11..27].copy_from_slice(&random);
    let tag = long_tag(tag_secret, pid, &secret[..LONG_TAG_AT]);
    secret[LONG_TAG_AT..].copy_from_slice(&tag);
    secret
}

/// The process that handed out `key`, if its tag is right under `tag_secret` (checked
/// in constant time); `None` for a key of another fleet, of a process outside a fleet,
/// or forged.
pub fn long_key_origin(tag_secret: &[u8], key: &LongKey) -> Option<KeyOrigin> {
    let secret = &key.secret;
    let tag = long_tag(tag_secret, key.pid, &secret[..LONG_TAG_AT]);
    if !bool::from(tag.ct_eq(&secret[LONG_TAG_AT..])) || secret[0] != LONG_KEY_LAYOUT {
        return None;
    }
    let mut instance = [0u8; 8];
    instance.copy_from_slice(&secret[3..11]);
    Some(KeyOrigin {
        slot: (secret[1] & HAS_SLOT != 0).then_some(secret[2]),
        instance: i64::from_be_bytes(instance),
    })
}

/// The whole length of the forwarded cancel that starts with `head`, once its magic and
/// version are known and a version 2 key length is within 4..=256; read that many bytes
/// (the head included) and hand them to [`ForwardedCancel::decode`].
pub fn forwarded_len(head: &[u8; HEAD_LEN]) -> Result<usize, ForwardedCancelError> {
    if head[0..4] != MAGIC {
        return Err(ForwardedCancelError::Magic);
    }
    match head[4] {
        VERSION_SHORT => Ok(SHORT_LEN),
        VERSION_SIZED => {
            let len = usize::from(u16::from_be_bytes([head[HEAD_LEN - 2], head[HEAD_LEN - 1]]));
            if !(crate::startup::MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&len) {
                return Err(ForwardedCancelError::KeyLength(len));
            }
            Ok(HEAD_LEN + len + 16 + 32)
        }
        version => Err(ForwardedCancelError::Version(version)),
    }
}

/// A CancelRequest sent on by the replica that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedCancel {
    /// The sending replica's slot.
    pub from_slot: u8,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    pub nonce: [u8; 16],
    pub key: ClientCancelKey,
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
    #[error("forwarded cancel whose length does not match its header")]
    Length,
    #[error("forwarded cancel with a {0}-byte key")]
    KeyLength(usize),
}

impl ForwardedCancel {
    /// The message, signed with `fleet_secret`: version 1 for a 4-byte secret, else 2.
    pub fn encode(&self, fleet_secret: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_FORWARDED_CANCEL_LEN);
        out.extend_from_slice(&MAGIC);
        let version = match self.key {
            ClientCancelKey::Short(_) => VERSION_SHORT,
            ClientCancelKey::Long(_) => VERSION_SIZED,
        };
        out.push(version);
        out.push(self.from_slot);
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.key.pid().to_be_bytes());
        match &self.key {
            ClientCancelKey::Short(key) => out.extend_from_slice(&key.secret.to_be_bytes()),
            ClientCancelKey::Long(key) => {
                out.extend_from_slice(&(LONG_SECRET_LEN as u16).to_be_bytes());
                out.extend_from_slice(&key.secret);
            }
        }
        let ip = match self.client_ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&ip.octets());
        let mut mac = HmacSha256::new_from_slice(fleet_secret).expect("HMAC takes any key length");
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Reads a whole message (its length as [`forwarded_len`] says), checking its
    /// signature before any field after the version.
    pub fn decode(
        bytes: &[u8],
        fleet_secret: &[u8],
    ) -> Result<ForwardedCancel, ForwardedCancelError> {
        let head: &[u8; HEAD_LEN] = bytes.first_chunk().ok_or(ForwardedCancelError::Length)?;
        if forwarded_len(head)? != bytes.len() {
            return Err(ForwardedCancelError::Length);
        }
        let (signed, signature) = bytes.split_at(bytes.len() - 32);
        let mut mac = HmacSha256::new_from_slice(fleet_secret).expect("HMAC takes any key length");
        mac.update(signed);
        mac.verify_slice(signature)
            .map_err(|_| ForwardedCancelError::Signature)?;
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&bytes[6..14]);
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&bytes[14..30]);
        let be4 = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let pid = i32::from_be_bytes(be4(PID_AT));
        let (key, ip_at) = if bytes[4] == VERSION_SHORT {
            let secret = i32::from_be_bytes(be4(PID_AT + 4));
            (
                ClientCancelKey::Short(CancelKey { pid, secret }),
                PID_AT + 8,
            )
        } else {
            let secret = &signed[HEAD_LEN..signed.len() - 16];
            let secret = <[u8; LONG_SECRET_LEN]>::try_from(secret)
                .map_err(|_| ForwardedCancelError::KeyLength(secret.len()))?;
            (
                ClientCancelKey::Long(LongKey { pid, secret }),
                signed.len() - 16,
            )
        };
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&bytes[ip_at..ip_at + 16]);
        let ip = Ipv6Addr::from(ip);
        Ok(ForwardedCancel {
            from_slot: bytes[5],
            sent_at_ms: u64::from_be_bytes(sent_at),
            nonce,
            key,
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
    fn a_long_key_names_its_process_and_any_change_breaks_its_tag() {
        for slot in [None, Some(0), Some(3), Some(255)] {
            let origin = KeyOrigin {
                slot,
                instance: 0x0123_4567_89ab_cdef,
            };
            let secret = long_secret(SECRET, origin, 77, [5; 16]);
            let key = LongKey { pid: 77, secret };
            assert_eq!(long_key_origin(SECRET, &key), Some(origin));
            assert_eq!(long_key_origin(b"another fleet", &key), None);
            assert_eq!(long_key_origin(SECRET, &LongKey { pid: 78, ..key }), None);
            for i in 0..LONG_SECRET_LEN {
                let mut bad = key;
                bad.secret[i] ^= 0x10;
                assert_eq!(long_key_origin(SECRET, &bad), None, "byte {i}");
            }
        }
        let a = long_secret(
            SECRET,
            KeyOrigin {
                slot: None,
                instance: 1,
            },
            1,
            [1; 16],
        );
        let b = long_secret(
            SECRET,
            KeyOrigin {
                slot: None,
                instance: 1,
            },
            1,
            [2; 16],
        );
        assert_ne!(a, b);
    }

    fn forwarded(key: ClientCancelKey) -> ForwardedCancel {
        ForwardedCancel {
            from_slot: 3,
            sent_at_ms: 1_700_000_000_123,
            nonce: [9; 16],
            key,
            client_ip: "127.0.0.2".parse().unwrap(),
        }
    }

    #[test]
    fn a_forwarded_cancel_round_trips_and_any_change_breaks_its_signature() {
        let short = ClientCancelKey::Short(CancelKey {
            pid: 1234,
            secret: -77,
        });
        let long = ClientCancelKey::Long(LongKey {
            pid: 1234,
            secret: [0xa5; LONG_SECRET_LEN],
        });
        for (key, version, len) in [
            (short, VERSION_SHORT, SHORT_LEN),
            (long, VERSION_SIZED, 116),
        ] {
            let message = forwarded(key);
            let bytes = message.encode(SECRET);
            assert_eq!(bytes.len(), len);
            assert_eq!(bytes[4], version);
            let head: &[u8; HEAD_LEN] = bytes.first_chunk().unwrap();
            assert_eq!(forwarded_len(head), Ok(len));
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
            for i in 5..len {
                if version == VERSION_SIZED && (HEAD_LEN - 2..HEAD_LEN).contains(&i) {
                    continue; // the key's length: below
                }
                let mut bad = bytes.clone();
                bad[i] ^= 1;
                assert_eq!(
                    ForwardedCancel::decode(&bad, SECRET),
                    Err(ForwardedCancelError::Signature),
                    "byte {i}"
                );
            }
            let mut bad = bytes.clone();
            bad[0] = b'X';
            assert_eq!(
                ForwardedCancel::decode(&bad, SECRET),
                Err(ForwardedCancelError::Magic)
            );
            bad = bytes.clone();
            bad[4] = 3;
            assert_eq!(
                ForwardedCancel::decode(&bad, SECRET),
                Err(ForwardedCancelError::Version(3))
            );
            for cut in [0, 1, HEAD_LEN - 1, HEAD_LEN, len - 1] {
                assert!(
                    ForwardedCancel::decode(&bytes[..cut], SECRET).is_err(),
                    "{cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                ForwardedCancel::decode(&longer, SECRET),
                Err(ForwardedCancelError::Length)
            );
        }
    }

    #[test]
    fn a_version_2_length_is_bounded_before_anything_is_read() {
        let long = ClientCancelKey::Long(LongKey {
            pid: 1,
            secret: [1; LONG_SECRET_LEN],
        });
        let bytes = forwarded(long).encode(SECRET);
        let mut head: [u8; HEAD_LEN] = *bytes.first_chunk().unwrap();
        for (len, ok) in [
            (3u16, false),
            (4, true),
            (256, true),
            (257, false),
            (u16::MAX, false),
        ] {
            head[HEAD_LEN - 2..].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                forwarded_len(&head).is_ok(),
                ok,
                "{len}: {:?}",
                forwarded_len(&head)
            );
        }
        // A signed version 2 message with a 4-byte key: read, and refused for its key.
        let mut message = bytes[..HEAD_LEN].to_vec();
        message[HEAD_LEN - 2..].copy_from_slice(&4u16.to_be_bytes());
        message.extend_from_slice(&[0; 4 + 16]);
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(&message);
        message.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(
            ForwardedCancel::decode(&message, SECRET),
            Err(ForwardedCancelError::KeyLength(4))
        );
    }
}
