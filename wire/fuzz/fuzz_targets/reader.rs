//! A byte stream cut into arbitrary pieces goes through the frame reader without
//! panicking, and its buffer never holds more than a frame plus one piece.
#![no_main]

use ferrule_wire::{FrameReader, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::for_frame_bytes(4096);
    let mut reader = FrameReader::new(limits);
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(step) {
        reader.feed(chunk);
        loop {
            match reader.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(reader.buffered() <= 4096 + step);
    }
});
