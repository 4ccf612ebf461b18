//! Unit and property tests for [`super::split_frame`].

use super::*;
use bytes::BufMut;
use proptest::prelude::*;

fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn splits_complete_frames_and_waits_for_partial_ones() {
    let mut buf = BytesMut::new();
    buf.put_slice(&encode(b'Q', b"select 1\0"));
    buf.put_slice(&encode(b'S', b"")[..3]);
    let frame = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(frame.tag, b'Q');
    assert_eq!(&frame.body[..], b"select 1\0");
    assert_eq!(split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
    assert_eq!(buf.len(), 3, "an incomplete frame is left in place");
    buf.put_slice(&encode(b'S', b"")[3..]);
    let frame = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert_eq!((frame.tag, frame.body.len()), (b'S', 0));
    assert!(buf.is_empty());
}

#[test]
fn rejects_lengths_below_four() {
    for len in 0..4u32 {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_u32(len);
        assert_eq!(
            split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::TooShort(len))
        );
    }
}

#[test]
fn rejects_lengths_above_the_limit_without_waiting_for_the_body() {
    let mut buf = BytesMut::new();
    buf.put_u8(b'D');
    buf.put_u32(u32::MAX);
    assert_eq!(
        split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::TooLong {
            len: u32::MAX as usize,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
    let mut buf = BytesMut::from(&encode(b'D', &[0; 7])[..]);
    assert_eq!(
        split_frame(&mut buf, 10),
        Err(FrameError::TooLong { len: 11, max: 10 })
    );
    let mut buf = BytesMut::from(&encode(b'D', &[0; 6])[..]);
    assert!(split_frame(&mut buf, 10).unwrap().is_some());
}

#[test]
fn does_not_reserve_for_announced_length() {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u8(b'D');
    buf.put_u32(1 << 29);
    let before = buf.capacity();
    assert_eq!(split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
    assert_eq!(buf.capacity(), before);
}

/// Random messages: tag and body up to 300 bytes.
pub(crate) fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)),
        0..20,
    )
}

/// Cut points splitting a stream of `len` bytes into chunks.
pub(crate) fn chunking(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (stream.len() + 1))
        .chain([0, stream.len()])
        .collect();
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| stream[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #[test]
    fn chunking_does_not_change_frames(
        msgs in messages(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| encode(*t, b)).collect();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunking(&stream, &cuts) {
            buf.put_slice(&chunk);
            while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
                frames.push((frame.tag, frame.body.to_vec()));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(frames, msgs);
    }
}
