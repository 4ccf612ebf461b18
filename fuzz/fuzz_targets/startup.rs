//! Fuzzes startup packet parsing: no panic on any bytes, a parsed StartupMessage
//! re-encodes to a packet that parses the same, and a parsed CancelRequest (a secret of
//! 4 to 256 bytes, protocol 3.0 or 3.2) re-encodes to exactly its bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::startup::{self, StartupPacket};

fuzz_target!(|data: &[u8]| {
    if let Some(&[a, b, c, d]) = data.get(..4) {
        if let Ok(len) = startup::parse_len([a, b, c, d]) {
            assert!((startup::MIN_STARTUP_LEN..=startup::MAX_STARTUP_LEN).contains(&len));
        }
    }
    match startup::parse(data) {
        Ok(StartupPacket::Startup(msg)) => {
            assert!(msg.user().is_some_and(|u| !u.is_empty()));
            assert!(msg.database().is_some());
            if msg.minor == 0 {
                let params: Vec<(&str, &str)> = msg
                    .params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut out = BytesMut::new();
                startup::encode_startup(&params, &mut out);
                assert_eq!(&out[..], data);
            }
        }
        Ok(StartupPacket::Cancel(request)) => {
            let len = request.secret.len();
            assert!((startup::MIN_SECRET_LEN..=startup::MAX_SECRET_LEN).contains(&len));
            assert_eq!(data.len(), 12 + len);
            let mut out = BytesMut::new();
            startup::encode_cancel_secret(request.pid, &request.secret, &mut out);
            assert_eq!(&out[..], data);
            // The lengths Sluice hands out (4 and 32) name a key, and only those.
            match request.key() {
                Some(key) => {
                    let mut again = BytesMut::new();
                    key.encode_cancel(&mut again);
                    assert_eq!(&again[..], data);
                }
                None => assert!(len != 4 && len != startup::LONG_SECRET_LEN),
            }
        }
        Ok(_) => assert_eq!(data.len(), 8),
        Err(_) => {}
    }
});
