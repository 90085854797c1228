//! Frames over QUIC streams.
//!
//! [`FrameReceiver`] gives every frame a deadline from its first byte: a peer that
//! trickles bytes to hold a buffer open is cut off, while an idle stream between
//! frames may wait as long as the connection's idle timeout allows. Its buffer
//! never holds more than one frame plus one read.

use crate::error::StreamError;
use ferrule_wire::{encode, FrameReader, Limits, Message};
use std::time::Duration;
use tokio::time::Instant;

/// Most bytes taken from the stream at a time. quinn hands over the bytes it
/// already holds (no read buffer of our own per stream: with ten thousand
/// agents, two streams each, a fixed 64 KiB buffer was 1.3 GB).
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    reader: FrameReader,
    frame_timeout: Duration,
    /// When the partial frame in the buffer started arriving.
    partial_since: Option<Instant>,
}

impl FrameReceiver {
    /// Wraps `recv`, decoding with `limits` and cutting off frames slower than
    /// `frame_timeout`.
    pub fn new(recv: quinn::RecvStream, limits: Limits, frame_timeout: Duration) -> Self {
        Self {
            recv,
            reader: FrameReader::new(limits),
            frame_timeout,
            partial_since: None,
        }
    }

    /// The next message and its frame size, `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<(Message, usize)>, StreamError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                self.partial_since = (self.reader.buffered() > 0).then(Instant::now);
                return Ok(Some(frame));
            }
            let read = match self.partial_since {
                Some(since) => {
                    let deadline = since + self.frame_timeout;
                    match tokio::time::timeout_at(deadline, self.recv.read_chunk(READ_CHUNK, true))
                        .await
                    {
                        Ok(r) => r?,
                        Err(_) => return Err(StreamError::FrameTimeout(self.frame_timeout)),
                    }
                }
                None => {
                    // Idle between frames: give back a buffer a large frame grew.
                    self.reader.shrink_idle();
                    self.recv.read_chunk(READ_CHUNK, true).await?
                }
            };
            match read {
                Some(chunk) => {
                    if self.partial_since.is_none() && !chunk.bytes.is_empty() {
                        self.partial_since = Some(Instant::now());
                    }
                    self.reader.feed(&chunk.bytes);
                }
                None if self.reader.buffered() == 0 => return Ok(None),
                None => return Err(StreamError::Truncated(self.reader.buffered())),
            }
        }
    }

    /// Tells the peer we will read no more (used when closing a lane early).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}

/// Writes frames to a QUIC send stream.
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
    buf: Vec<u8>,
    limits: Limits,
}

impl FrameSender {
    /// Wraps `send`, encoding with `limits` (the peer's announced limits).
    pub fn new(send: quinn::SendStream, limits: Limits) -> Self {
        Self {
            send,
            buf: Vec::new(),
            limits,
        }
    }

    /// Replaces the limits once the peer has announced its own.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sets the stream's priority: higher goes first when streams compete.
    pub fn set_priority(&self, priority: i32) {
        let _ = self.send.set_priority(priority);
    }

    /// Encodes and writes one message; returns the frame size.
    pub async fn send(&mut self, msg: &Message) -> Result<usize, StreamError> {
        self.buf.clear();
        encode(msg, &self.limits, &mut self.buf)?;
        self.send.write_all(&self.buf).await?;
        Ok(self.buf.len())
    }

    /// Writes an already encoded frame (a batch read back from the spool).
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), StreamError> {
        self.send.write_all(frame).await?;
        Ok(())
    }

    /// Finishes the stream: the peer reads a clean end after the last frame.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Finishes the stream and waits (at most `max`) until the peer has received
    /// everything on it. Closing a connection discards unsent stream data, so a
    /// last Error message must be flushed this way before the close.
    pub async fn finish_and_wait(&mut self, max: std::time::Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(max, self.send.stopped()).await;
    }
}
