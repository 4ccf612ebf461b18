//! Fuzzes what replicas of a fleet send each other: `wire::fleet::ForwardedCancel`
//! (version 1, a 4-byte key; version 2, a sized one) over any bytes, the replica tag in
//! protocol 3.0 keys, and the slot, process and tag in protocol 3.2 keys.
//!
//! Checks: no panic; `forwarded_len` never names a length past the maximum; a message
//! that decodes was signed with the secret and encodes back to exactly its bytes; a
//! message signed with another secret never decodes; the slot a key was tagged with
//! reads back from the key; a long key reads back its origin under its secret only,
//! and a long key made of the input's bytes (no tag) is never taken for one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::fleet::{
    forwarded_len, long_key_origin, long_secret, slot_of, tagged_secret, ForwardedCancel,
    KeyOrigin, HEAD_LEN, MAX_FORWARDED_CANCEL_LEN,
};
use wire::startup::{CancelKey, ClientCancelKey, LongKey, LONG_SECRET_LEN};

const SECRET: &[u8] = b"the fleet secret of the fuzz run";

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<HEAD_LEN>() {
        if let Ok(len) = forwarded_len(head) {
            assert!((HEAD_LEN..=MAX_FORWARDED_CANCEL_LEN).contains(&len));
        }
    }
    if let Ok(message) = ForwardedCancel::decode(data, SECRET) {
        assert_eq!(message.encode(SECRET), data);
    }

    // Well-formed messages built from the input: they decode with their secret only.
    if data.len() >= 14 {
        let pid = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let random = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let slot = data[8];
        let secret = tagged_secret(SECRET, slot, pid, random);
        let short = CancelKey { pid, secret };
        assert_eq!(slot_of(SECRET, short), slot);
        let origin = KeyOrigin {
            slot: (data[9] & 1 == 1).then_some(slot),
            instance: i64::from(random) << 7 | i64::from(data[10]),
        };
        let long = LongKey {
            pid,
            secret: long_secret(SECRET, origin, pid, [data[11]; 16]),
        };
        assert_eq!(long_key_origin(SECRET, &long), Some(origin));
        assert_eq!(long_key_origin(b"another secret", &long), None);
        for key in [ClientCancelKey::Short(short), ClientCancelKey::Long(long)] {
            let message = ForwardedCancel {
                from_slot: data[9],
                sent_at_ms: u64::from(random),
                nonce: [data[10]; 16],
                key,
                client_ip: std::net::IpAddr::from([data[10], data[11], data[12], data[13]]),
            };
            let encoded = message.encode(SECRET);
            assert_eq!(ForwardedCancel::decode(&encoded, SECRET), Ok(message));
            assert!(ForwardedCancel::decode(&encoded, b"another secret").is_err());
        }
    }
    // A long key straight from the input: its tag is the fleet's only by a 2^-40 chance.
    if let Some(secret) = data.first_chunk::<LONG_SECRET_LEN>() {
        let key = LongKey {
            pid: 1,
            secret: *secret,
        };
        if long_key_origin(SECRET, &key).is_some() {
            assert_eq!(
                long_secret(
                    SECRET,
                    long_key_origin(SECRET, &key).unwrap(),
                    1,
                    secret[11..27].try_into().unwrap()
                ),
                *secret
            );
        }
    }
});
