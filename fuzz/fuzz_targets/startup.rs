//! Fuzzes startup packet parsing: no panic on any bytes, and a parsed
//! StartupMessage re-encodes to a packet that parses the same.
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
        Ok(StartupPacket::Cancel(key)) => {
            let mut out = BytesMut::new();
            startup::encode_cancel(key, &mut out);
            assert_eq!(&out[..], data);
        }
        Ok(_) => assert_eq!(data.len(), 8),
        Err(_) => {}
    }
});
