//! # ferrule-wire
//!
//! The protocol ferrule's agents and aggregators speak, with no I/O: frames and
//! their codec, the compact sample encoding, and the session state machines both
//! sides drive from their QUIC connections. Nothing here opens a socket, spawns a
//! task or reads a clock, so everything is tested in-process and fuzzed.
//!
//! ```
//! use ferrule_wire::*;
//!
//! let mut series = Series::new(SensorId(1));
//! for i in 0..1000 {
//!     series.push(1_700_000_000_000_000_000 + i * 1_000_000, 230.0 + (i % 10) as f64 * 0.01, Quality::Good);
//! }
//! let batch = Batch { epoch: Epoch(7), seq: Seq(1), clock_offset_ns: 0, series: vec![series] };
//! let limits = Limits::default();
//! let mut frame = Vec::new();
//! encode(&Message::Batch(batch.clone()), &limits, &mut frame).unwrap();
//! assert!(frame.len() < 1000, "about a byte a sample or less here");
//! let (msg, _) = decode(&frame, &limits).unwrap().unwrap();
//! assert_eq!(msg, Message::Batch(batch));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bits;
pub mod clock;
mod error;
pub mod example;
mod frame;
mod ids;
mod message;
pub mod record;
mod samples;
mod seqset;
pub mod session;

pub use error::{DecodeError, EncodeError};
pub use frame::{
    batch_cost, batch_frame_to_live, decode, decode_payload, encode, peek_batch, FrameReader,
    Limits, DECODED_BYTES_PER_SAMPLE, FRAME_HEADER_BYTES,
};
pub use ids::{Epoch, NameError, SensorId, SensorName, Seq, MAX_SENSOR_NAME_BYTES};
pub use message::*;
pub use samples::{Quality, SampleColumns, Series, SeriesRef, SAMPLE_ENCODING_V1};
pub use seqset::SeqSet;
