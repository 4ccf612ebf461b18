//! Fuzzes the parsers of client messages that transaction pooling rewrites (Parse,
//! Bind, Describe/Close): none may panic, and what parses must rebuild to the same
//! body.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages;

fn body_of(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    let frame = split_frame(&mut out, DEFAULT_MAX_FRAME_LEN)
        .expect("builders make valid frames")
        .expect("builders make whole frames");
    frame.body.to_vec()
}

fuzz_target!(|body: &[u8]| {
    if let Ok(p) = messages::parse_parse(body) {
        let rebuilt = body_of(|o| messages::parse_raw(o, p.name, p.query, p.param_types));
        assert_eq!(rebuilt, body);
    }
    if let Ok(b) = messages::parse_bind(body) {
        let rebuilt = body_of(|o| messages::bind_raw(o, b.portal, b.statement, b.rest));
        assert_eq!(rebuilt, body);
    }
    if let Ok((kind, name)) = messages::parse_target(body) {
        assert_eq!(body_of(|o| messages::describe(o, kind, name)), body);
        assert_eq!(body_of(|o| messages::close(o, kind, name)), body);
    }
});
