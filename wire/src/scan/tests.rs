//! Unit and property tests for [`super::Scanner`].

use super::*;
use crate::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use bytes::BytesMut;
use proptest::prelude::*;

fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn expected(msgs: &[(u8, Vec<u8>)]) -> Vec<(u8, Option<u8>)> {
    msgs.iter().map(|(t, b)| (*t, b.first().copied())).collect()
}

#[test]
fn reports_ready_for_query_status_split_across_chunks() {
    let stream = [encode(b'C', b"SELECT 1\0"), encode(b'Z', b"I")].concat();
    let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
    let mut seen = Vec::new();
    for byte in &stream {
        scanner
            .feed(std::slice::from_ref(byte), |t, f| seen.push((t, f)))
            .unwrap();
    }
    assert_eq!(seen, vec![(b'C', Some(b'S')), (b'Z', Some(b'I'))]);
    assert!(scanner.at_boundary());
}

#[test]
fn bad_length_poisons_the_scanner() {
    let mut scanner = Scanner::new(100);
    let mut seen = 0;
    let bad = [b'D', 0, 0, 0, 200];
    assert_eq!(
        scanner.feed(&bad, |_, _| seen += 1),
        Err(FrameError::TooLong { len: 200, max: 100 })
    );
    assert!(scanner.feed(&encode(b'Z', b"I"), |_, _| seen += 1).is_err());
    assert!(!scanner.at_boundary());
    assert_eq!(seen, 0);
    let mut scanner = Scanner::new(100);
    assert_eq!(
        scanner.feed(&[b'D', 0, 0, 0, 3], |_, _| ()),
        Err(FrameError::TooShort(3))
    );
}

#[test]
fn skips_a_huge_body_without_buffering() {
    let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
    let len: u32 = 1 << 29;
    let mut header = vec![b'D'];
    header.extend_from_slice(&len.to_be_bytes());
    let mut seen = Vec::new();
    scanner.feed(&header, |t, f| seen.push((t, f))).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut left = (len - 4) as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        scanner.feed(&chunk[..n], |t, f| seen.push((t, f))).unwrap();
        left -= n;
    }
    assert_eq!(seen, vec![(b'D', Some(7))]);
    assert!(scanner.at_boundary());
}

proptest! {
    #[test]
    fn chunking_does_not_change_reports(
        msgs in crate::frame::tests::messages(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| encode(*t, b)).collect();
        let ends: Vec<usize> = msgs
            .iter()
            .scan(0, |end, (_, b)| { *end += 5 + b.len(); Some(*end) })
            .collect();

        // Whole.
        let mut whole = Vec::new();
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        scanner.feed(&stream, |t, f| whole.push((t, f))).unwrap();
        prop_assert!(scanner.at_boundary());

        // Chunked, checking the boundary flag after each chunk.
        let mut chunked = Vec::new();
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        let mut offset = 0;
        for chunk in crate::frame::tests::chunking(&stream, &cuts) {
            scanner.feed(&chunk, |t, f| chunked.push((t, f))).unwrap();
            offset += chunk.len();
            prop_assert_eq!(scanner.at_boundary(), offset == 0 || ends.contains(&offset));
        }

        // Byte by byte: the boundary flag is exact at every offset.
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        let mut bytewise = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            scanner.feed(std::slice::from_ref(byte), |t, f| bytewise.push((t, f))).unwrap();
            prop_assert_eq!(scanner.at_boundary(), ends.contains(&(i + 1)));
        }

        let mut buf = BytesMut::from(&stream[..]);
        let mut framed = Vec::new();
        while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
            framed.push((frame.tag, frame.body.first().copied()));
        }

        // Where each message ends, whole and byte by byte.
        let mut whole_ends = Vec::new();
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        scanner.feed_ends(&stream, |_, _, end| whole_ends.push(end)).unwrap();
        prop_assert_eq!(&whole_ends, &ends);
        let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
        let mut bytewise_ends = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            scanner
                .feed_ends(std::slice::from_ref(byte), |_, _, end| {
                    assert_eq!(end, 1);
                    bytewise_ends.push(i + end);
                })
                .unwrap();
        }
        prop_assert_eq!(&bytewise_ends, &ends);

        let want = expected(&msgs);
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&chunked, &want);
        prop_assert_eq!(&bytewise, &want);
        prop_assert_eq!(&framed, &want);
    }
}
