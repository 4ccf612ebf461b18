//! Fuzzes the parsers of message bodies Sluice reads: none may panic, and
//! what parses must rebuild to the same bytes where a builder exists.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages::{self, Authentication};

/// Builds one message with `build` and returns its body.
fn body_of(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    let frame = split_frame(&mut out, DEFAULT_MAX_FRAME_LEN)
        .expect("builders make valid frames")
        .expect("builders make whole frames");
    frame.body.to_vec()
}

fuzz_target!(|body: &[u8]| {
    if let Ok(auth) = messages::parse_authentication(body) {
        let rebuilt = match &auth {
            Authentication::Ok => Some(body_of(messages::auth_ok)),
            Authentication::CleartextPassword => Some(body_of(messages::auth_cleartext)),
            Authentication::Md5Password { salt } => Some(body_of(|o| messages::auth_md5(o, *salt))),
            Authentication::Sasl { mechanisms } => {
                Some(body_of(|o| messages::auth_sasl(o, mechanisms)))
            }
            Authentication::SaslContinue(data) => {
                Some(body_of(|o| messages::auth_sasl_continue(o, data)))
            }
            Authentication::SaslFinal(data) => {
                Some(body_of(|o| messages::auth_sasl_final(o, data)))
            }
            Authentication::Other(_) => None,
        };
        if let Some(rebuilt) = rebuilt {
            assert_eq!(rebuilt, body);
        }
    }
    let _ = messages::parse_error_fields(body);
    if let Ok((name, value)) = messages::parse_parameter_status(body) {
        assert_eq!(
            body_of(|o| messages::parameter_status(o, name, value)),
            body
        );
    }
    if let Ok(key) = messages::parse_backend_key_data(body) {
        assert_eq!(body_of(|o| messages::backend_key_data(o, key)), body);
    }
    let _ = messages::parse_ready_for_query(body);
    if let Ok(columns) = messages::parse_data_row(body) {
        assert!(columns.len() <= body.len() / 4);
    }
    if let Ok((mechanism, data)) = messages::parse_sasl_initial_response(body) {
        assert!(mechanism.len() + data.len() < body.len());
    }
});
