//! Length-prefixed framing.
//!
//! A frame is `[u32 little-endian length][u8 type][payload]`, where the length
//! counts the type byte and the payload. The length is checked against
//! [`Limits::max_frame_bytes`] as soon as its four bytes are in, before anything
//! else is buffered, so a peer declaring a huge frame is refused at once.

use crate::error::{DecodeError, EncodeError};
use crate::message::*;
use crate::samples;

/// Bytes before the payload: length (4) and type (1).
pub const FRAME_HEADER_BYTES: usize = 5;

/// Upper bound on the memory one decoded sample takes (timestamp, value, quality),
/// used to size [`Limits::max_batch_samples`] from the frame limit.
pub const DECODED_BYTES_PER_SAMPLE: u32 = 17;

/// What a decoder accepts. Both sides configure these; the aggregator announces its
/// own in [`Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included.
    pub max_frame_bytes: u32,
    /// Most samples in one batch. With the default, a decoded batch never takes more
    /// memory than the frame limit.
    pub max_batch_samples: u32,
}

impl Limits {
    /// Limits for a frame size, with the sample limit derived so that decoded
    /// samples never take more memory than the frame limit.
    pub const fn for_frame_bytes(max_frame_bytes: u32) -> Self {
        Self {
            max_frame_bytes,
            max_batch_samples: max_frame_bytes / DECODED_BYTES_PER_SAMPLE,
        }
    }
}

impl Default for Limits {
    /// 1 MiB frames, about 61 000 samples a batch.
    fn default() -> Self {
        Self::for_frame_bytes(1 << 20)
    }
}

/// What a batch costs of a session's credit: its frame bytes or the memory its
/// samples take once decoded, whichever is more.
///
/// Credit bounds what the aggregator holds for an agent. Counting wire bytes alone
/// let a peer send tiny frames that decode to tens of thousands of samples each
/// (the sample encoding compresses constant series to almost nothing), so both
/// sides charge this instead; the agent computes it from what it spooled, the
/// aggregator from what it decoded, and the two agree.
///
/// ```
/// use ferrule_wire::{batch_cost, DECODED_BYTES_PER_SAMPLE};
/// assert_eq!(batch_cost(5000, 10), 5000);
/// assert_eq!(batch_cost(100, 10_000), 10_000 * u64::from(DECODED_BYTES_PER_SAMPLE));
/// ```
pub fn batch_cost(frame_bytes: u64, samples: u64) -> u64 {
    frame_bytes.max(samples.saturating_mul(u64::from(DECODED_BYTES_PER_SAMPLE)))
}

/// The (epoch, seq) of a batch frame, read from its header without decoding the
/// samples: the agent names the batches in its spool by it.
pub fn peek_batch(frame: &[u8]) -> Result<(crate::Epoch, crate::Seq), DecodeError> {
    let ty = *frame.get(4).ok_or(DecodeError::Truncated)?;
    if ty != 4 {
        return Err(DecodeError::UnknownType(ty));
    }
    let (h, _): (BatchHeader, _) = postcard::take_from_bytes(&frame[5..])?;
    Ok((h.epoch, h.seq))
}

/// Appends `msg` as one frame to `out`. On error `out` is left as it was.
///
/// ```
/// use ferrule_wire::{encode, decode, Credit, Limits, Message};
/// let limits = Limits::default();
/// let mut buf = Vec::new();
/// encode(&Message::Credit(Credit { bytes: 65536, batches: 8 }), &limits, &mut buf).unwrap();
/// let (msg, used) = decode(&buf, &limits).unwrap().unwrap();
/// assert_eq!(used, buf.len());
/// assert_eq!(msg, Message::Credit(Credit { bytes: 65536, batches: 8 }));
/// ```
pub fn encode(msg: &Message, limits: &Limits, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(msg.type_byte());
    let res = encode_payload(msg, limits, out);
    let res = res.and_then(|()| {
        let len = out.len() - start - 4;
        if len + 4 > limits.max_frame_bytes as usize {
            return Err(EncodeError::FrameTooLarge {
                size: (len + 4) as u64,
                limit: u64::from(limits.max_frame_bytes),
            });
        }
        // len < max_frame_bytes <= u32::MAX, checked just above.
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    });
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn put<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    postcard::to_io(value, &mut *out)
        .map(|_| ())
        .map_err(|e| EncodeError::Serialize(e.to_string()))
}

fn encode_payload(msg: &Message, limits: &Limits, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match msg {
        Message::Hello(m) => put(m, out),
        Message::Welcome(m) => put(m, out),
        Message::Define(m) => put(m, out),
        Message::Batch(b) | Message::Live(b) => {
            let count = b.sample_count() as u64;
            if count > u64::from(limits.max_batch_samples) {
                return Err(EncodeError::TooManySamples {
                    count,
                    limit: u64::from(limits.max_batch_samples),
                });
            }
            put(
                &BatchHeader {
                    epoch: b.epoch,
                    seq: b.seq,
                    clock_offset_ns: b.clock_offset_ns,
                },
                out,
            )?;
            samples::encode_block(&b.series, out);
            Ok(())
        }
        Message::Ack(m) => put(m, out),
        Message::Credit(m) => put(m, out),
        Message::Heartbeat(m) => put(m, out),
        Message::GoAway(m) => put(m, out),
        Message::Error(m) => put(m, out),
        Message::Status(m) => put(m, out),
    }
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call
/// again), or the message and the number of bytes it took.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(len) = frame_len(buf, limits)? else {
        return Ok(None);
    };
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let msg = decode_payload(buf[4], &buf[5..total], limits)?;
    Ok(Some((msg, total)))
}

/// Reads and checks the length prefix; `None` if fewer than four bytes are in.
fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut le = [0u8; 4];
    le.copy_from_slice(head);
    let len = u32::from_le_bytes(le);
    if u64::from(len) + 4 > u64::from(limits.max_frame_bytes) {
        return Err(DecodeError::FrameTooLarge {
            declared: u64::from(len) + 4,
            limit: u64::from(limits.max_frame_bytes),
        });
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    Ok(Some(len as usize))
}

/// Decodes the payload of a frame whose type byte is `ty`.
pub fn decode_payload(ty: u8, payload: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    Ok(match ty {
        1 => Message::Hello(take(payload)?),
        2 => Message::Welcome(take(payload)?),
        3 => Message::Define(take(payload)?),
        4 => Message::Batch(take_batch(payload, limits)?),
        5 => Message::Ack(take(payload)?),
        6 => Message::Credit(take(payload)?),
        7 => Message::Heartbeat(take(payload)?),
        8 => Message::GoAway(take(payload)?),
        9 => Message::Error(take(payload)?),
        10 => Message::Live(take_batch(payload, limits)?),
        11 => Message::Status(take(payload)?),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// A batch's payload (a [`Batch`] or a [`Message::Live`] copy: the same bytes).
fn take_batch(payload: &[u8], limits: &Limits) -> Result<Batch, DecodeError> {
    let (h, rest): (BatchHeader, _) = postcard::take_from_bytes(payload)?;
    let series = samples::decode_block(rest, u64::from(limits.max_batch_samples))?;
    Ok(Batch {
        epoch: h.epoch,
        seq: h.seq,
        clock_offset_ns: h.clock_offset_ns,
        series,
    })
}

/// Rewrites an encoded [`Batch`] frame (a spooled one) as its [`Message::Live`]
/// copy in place: the payload is the same, only the type byte differs, so the
/// agent sends a live copy without decoding or encoding anything.
///
/// ```
/// use ferrule_wire::*;
/// let b = Batch { epoch: Epoch(1), seq: Seq(2), clock_offset_ns: 0, series: vec![] };
/// let mut frame = Vec::new();
/// encode(&Message::Batch(b.clone()), &Limits::default(), &mut frame).unwrap();
/// batch_frame_to_live(&mut frame).unwrap();
/// assert_eq!(decode(&frame, &Limits::default()).unwrap().unwrap().0, Message::Live(b));
/// ```
pub fn batch_frame_to_live(frame: &mut [u8]) -> Result<(), DecodeError> {
    let ty = frame.get_mut(4).ok_or(DecodeError::Truncated)?;
    if *ty != 4 {
        return Err(DecodeError::UnknownType(*ty));
    }
    *ty = 10;
    Ok(())
}

/// Decodes a whole payload, refusing leftover bytes so every message has one encoding.
fn take<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let (v, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(v)
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// Holds at most one partial frame plus what the last [`feed`](Self::feed) brought;
/// an oversized length prefix is an error as soon as it is seen.
///
/// ```
/// use ferrule_wire::{encode, FrameReader, Heartbeat, Limits, Message};
/// let limits = Limits::default();
/// let hb = Message::Heartbeat(Heartbeat { origin_ns: 1, receive_ns: 0, transmit_ns: 0 });
/// let mut bytes = Vec::new();
/// encode(&hb, &limits, &mut bytes).unwrap();
/// let mut reader = FrameReader::new(limits);
/// for b in &bytes {
///     reader.feed(std::slice::from_ref(b));
/// }
/// assert_eq!(reader.next_message().unwrap(), Some(hb));
/// assert_eq!(reader.next_message().unwrap(), None);
/// ```
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    limits: Limits,
}

/// The largest buffer [`FrameReader::shrink_idle`] keeps: a few small
/// frames' worth (a 100-sample batch is about 1 KiB).
const IDLE_BUFFER_BYTES: usize = 4096;

impl FrameReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limits,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Frees the buffer a large frame grew once nothing is held, so an idle
    /// stream costs no more than its reader (a server holds thousands).
    /// A buffer of up to 4 KiB is kept for the next frames.
    pub fn shrink_idle(&mut self) {
        if self.buffered() == 0 {
            self.start = 0;
            self.buf.clear();
            if self.buf.capacity() > IDLE_BUFFER_BYTES {
                self.buf = Vec::new();
            }
        }
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `None` if more bytes are needed. After an error the
    /// stream is unusable: close it.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        Ok(self.next_frame()?.map(|(msg, _)| msg))
    }

    /// Like [`next_message`](Self::next_message), with the frame's size in bytes
    /// (what a batch spends of the credit).
    pub fn next_frame(&mut self) -> Result<Option<(Message, usize)>, DecodeError> {
        match decode(&self.buf[self.start..], &self.limits)? {
            Some((msg, used)) => {
                self.start += used;
                Ok(Some((msg, used)))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Heartbeat;

    /// A server holds thousands of idle streams: a reader that once took a
    /// large read must not keep that buffer while idle, and must still
    /// decode what comes next.
    #[test]
    fn an_idle_reader_gives_back_a_large_buffer() {
        let limits = Limits::default();
        let hb = |i| {
            Message::Heartbeat(Heartbeat {
                origin_ns: i,
                receive_ns: 0,
                transmit_ns: 0,
            })
        };
        let mut bytes = Vec::new();
        for i in 0..5000 {
            encode(&hb(i), &limits, &mut bytes).expect("encodes");
        }
        assert!(bytes.len() > 2 * IDLE_BUFFER_BYTES, "{}", bytes.len());
        let mut reader = FrameReader::new(limits);
        reader.feed(&bytes);
        reader.shrink_idle();
        assert!(
            reader.buf.capacity() >= bytes.len(),
            "nothing freed while frames are held"
        );
        for i in 0..5000 {
            assert_eq!(reader.next_message().expect("decodes"), Some(hb(i)));
        }
        reader.shrink_idle();
        assert!(reader.buf.capacity() <= IDLE_BUFFER_BYTES);
        let mut one = Vec::new();
        encode(&hb(7), &limits, &mut one).expect("encodes");
        reader.feed(&one[..3]);
        reader.shrink_idle();
        reader.feed(&one[3..]);
        assert_eq!(reader.next_message().expect("decodes"), Some(hb(7)));
    }
}
