//! Decoding arbitrary bytes returns a message or a typed error: never a panic, never
//! an allocation beyond the limits, never a hang. What decodes must re-encode and
//! decode to the same thing, a batch's peeked header must match it, and its live
//! copy (the same frame with the Live type byte) must decode to the same batch.
#![no_main]

use ferrule_wire::{
    batch_frame_to_live, decode, decode_payload, encode, peek_batch, Limits, Message,
};
use libfuzzer_sys::fuzz_target;

fn same(a: &Message, b: &Message) -> bool {
    // Compare by encoding: floats are compared bit for bit that way (NaN included).
    let limits = Limits { max_frame_bytes: u32::MAX, max_batch_samples: u32::MAX };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    encode(a, &limits, &mut x).is_ok() && encode(b, &limits, &mut y).is_ok() && x == y
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::for_frame_bytes(64 * 1024);
    if let Ok(Some((msg, used))) = decode(data, &limits) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        let big = Limits { max_frame_bytes: u32::MAX, max_batch_samples: u32::MAX };
        encode(&msg, &big, &mut again).expect("a decoded message re-encodes");
        let (back, n) = decode(&again, &big).expect("re-encoded decodes").expect("whole frame");
        assert_eq!(n, again.len());
        assert!(same(&msg, &back));
        // The agent names spooled batches by their header alone: it must agree.
        if let Message::Batch(b) = &msg {
            assert_eq!(peek_batch(data).expect("a batch's header peeks"), (b.epoch, b.seq));
            // The agent sends a spooled frame as its live copy by its type byte.
            let mut live = data[..used].to_vec();
            batch_frame_to_live(&mut live).expect("a batch frame becomes a live copy");
            match decode(&live, &limits) {
                Ok(Some((Message::Live(l), n))) => {
                    assert_eq!(n, used);
                    assert!(same(&Message::Batch(l), &msg));
                }
                other => panic!("a live copy of a batch decodes as {other:?}"),
            }
        }
    }
    let _ = peek_batch(data);
    if let Some((&ty, rest)) = data.split_first() {
        let _ = decode_payload(ty % 12, rest, &limits);
    }
});
