//! Fuzzes what replicas of a fleet send each other: `wire::fleet::ForwardedCancel`
//! over any bytes, and the replica tag in cancel keys.
//!
//! Checks: no panic; a message that decodes was signed with the secret and encodes
//! back to exactly its bytes; a message signed with another secret never decodes; the
//! slot a key was tagged with reads back from the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::fleet::{slot_of, tagged_secret, ForwardedCancel, FORWARDED_CANCEL_LEN};
use wire::startup::CancelKey;

const SECRET: &[u8] = b"the fleet secret of the fuzz run";

fuzz_target!(|data: &[u8]| {
    let mut bytes = [0u8; FORWARDED_CANCEL_LEN];
    let n = data.len().min(FORWARDED_CANCEL_LEN);
    bytes[..n].copy_from_slice(&data[..n]);
    if let Ok(message) = ForwardedCancel::decode(&bytes, SECRET) {
        assert_eq!(message.encode(SECRET), bytes);
    }

    // Well-formed messages built from the input: they decode with their secret only.
    if data.len() >= 14 {
        let pid = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let random = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let slot = data[8];
        let secret = tagged_secret(SECRET, slot, pid, random);
        let key = CancelKey { pid, secret };
        assert_eq!(slot_of(SECRET, key), slot);
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
});
