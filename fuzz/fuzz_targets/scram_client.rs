//! Fuzzes the SCRAM client with arbitrary server messages.
//!
//! Input: a flags byte, the server-first-message, a NUL, the
//! server-final-message. `NONCE` in the server-first-message is replaced by
//! the client's nonce so the fuzzer can get past the nonce check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::scram::{ClientCredential, ClientKey, ScramClient};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let (server_first, server_final) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // Large iteration counts are valid (up to MAX_ITERATIONS) but make each
    // run slow without reaching new code; skip them.
    if server_first
        .windows(6)
        .any(|w| w.starts_with(b"i=") && w[2..].iter().all(u8::is_ascii_digit))
    {
        return;
    }
    let credential = match flags % 3 {
        0 => ClientCredential::Password("pencil".to_owned()),
        1 => ClientCredential::ClientKey {
            client_key: ClientKey([7; 32]),
            server_key: Some([9; 32]),
        },
        _ => ClientCredential::ClientKey {
            client_key: ClientKey([7; 32]),
            server_key: None,
        },
    };
    let mut client = ScramClient::new(credential);
    let client_first = client.client_first();
    let nonce = &client_first[client_first.len() - 24..];
    let server_first = replace(server_first, b"NONCE", nonce);
    let Ok(client_final) = client.handle_server_first(&server_first) else {
        return;
    };
    assert!(client_final.starts_with(b"c=biws,r="));
    if let Some(server_final) = server_final {
        let _ = client.handle_server_final(server_final);
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
