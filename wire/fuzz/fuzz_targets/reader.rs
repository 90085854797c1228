//! A byte stream cut into arbitrary pieces goes through the frame reader without
//! panicking, and its buffer never holds more than a frame plus one piece. A
//! second reader that gives back its buffer whenever it is idle (as a server's
//! idle streams do) decodes exactly the same messages and fails at the same point.
#![no_main]

use ferrule_wire::{FrameReader, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::for_frame_bytes(4096);
    let mut reader = FrameReader::new(limits);
    let mut shrinking = FrameReader::new(limits);
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(step) {
        reader.feed(chunk);
        shrinking.feed(chunk);
        loop {
            let a = reader.next_message();
            let b = shrinking.next_message();
            match (a, b) {
                // By their printed form: a sample may be NaN, unequal to itself.
                (Ok(Some(x)), Ok(Some(y))) => assert_eq!(format!("{x:?}"), format!("{y:?}")),
                (Ok(None), Ok(None)) => break,
                (Err(_), Err(_)) => return,
                (a, b) => panic!("the readers disagree: {a:?} / {b:?}"),
            }
        }
        shrinking.shrink_idle();
        assert!(reader.buffered() <= 4096 + step);
        assert_eq!(reader.buffered(), shrinking.buffered());
    }
});
