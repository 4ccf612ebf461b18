//! Fuzzes framing: `split_frame` over the whole input and a `Scanner` fed in
//! chunks must report the same messages and the same error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::scan::Scanner;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit and the chunk size.
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let max_len = if sel & 1 == 0 {
        DEFAULT_MAX_FRAME_LEN
    } else {
        usize::from(sel)
    };
    let chunk = usize::from(sel >> 1).max(1);

    let mut buf = BytesMut::from(data);
    let mut framed = Vec::new();
    let framed_err = loop {
        match split_frame(&mut buf, max_len) {
            Ok(Some(frame)) => framed.push((frame.tag, frame.body.first().copied())),
            Ok(None) => break None,
            Err(err) => break Some(err),
        }
    };

    let mut scanner = Scanner::new(max_len);
    let mut scanned = Vec::new();
    let mut scanned_err = None;
    for piece in data.chunks(chunk) {
        if let Err(err) = scanner.feed(piece, |tag, first| scanned.push((tag, first))) {
            scanned_err = Some(err);
            break;
        }
    }

    assert_eq!(framed, scanned);
    assert_eq!(framed_err, scanned_err);
    if framed_err.is_none() {
        assert_eq!(scanner.at_boundary(), buf.is_empty());
    }
});
