//! Fuzzes the SCRAM server with arbitrary client messages.
//!
//! Input: a flags byte, the client-first-message, a NUL, the
//! client-final-message. `NONCE` in the client-final-message is replaced by
//! the nonce the server chose, so the fuzzer can get past the nonce check
//! and exercise the proof and channel-binding checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::scram::{ScramError, ScramServer, Verifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let (client_first, client_final) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let verifier = Verifier::from_password("pencil", b"fuzz-salt", 1);
    let channel_binding = (flags & 1 != 0).then(|| b"certificate hash".to_vec());
    let mechanism = if flags & 2 != 0 {
        SCRAM_SHA_256_PLUS
    } else {
        SCRAM_SHA_256
    };
    let mut server = ScramServer::new(verifier, channel_binding, flags & 4 != 0);
    let Ok(server_first) = server.handle_client_first(mechanism, client_first) else {
        return;
    };
    let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
    let nonce = server_first
        .split(',')
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .expect("server-first starts with the nonce");
    let Some(client_final) = client_final else {
        return;
    };
    let client_final = replace(client_final, b"NONCE", nonce.as_bytes());
    match server.handle_client_final(&client_final) {
        Ok(outcome) => assert!(outcome.server_final.starts_with(b"v=")),
        Err(ScramError::AuthenticationFailed | ScramError::Protocol(_)) => {}
        Err(other) => panic!("unexpected error {other:?}"),
    }
});

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}
