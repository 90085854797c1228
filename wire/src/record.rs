//! The committed form of a batch: what the aggregator writes to its embedded log
//! or to Kafka, one record per batch.
//!
//! A record is self-describing, so a consumer starting at any offset can read it:
//! a postcard header naming the agent, its epoch and sequence (the dedupe key),
//! the clock offset, the receive time and the sensors the batch uses, followed by
//! the same compact sample block the wire carries. Layout, byte for byte, in
//! `wire/README.md`.

use crate::error::{DecodeError, EncodeError};
use crate::ids::{Epoch, SensorId, SensorName, Seq};
use crate::message::SensorKind;
use crate::samples::{self, SampleColumns, Series};
use serde::{Deserialize, Serialize};

/// Version byte that starts every record.
pub const RECORD_VERSION: u8 = 1;

/// What a consumer needs to know about a sensor a record uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorInfo {
    /// The id the record's series use (scoped to the agent).
    pub id: SensorId,
    /// The sensor's full name.
    pub name: SensorName,
    /// Unit of its values.
    pub unit: String,
    /// What it measures.
    pub kind: SensorKind,
}

/// The fixed part of a record, readable without decoding the samples (inspect,
/// dedupe ledgers and indexes read only this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// Site named by the agent's certificate.
    pub site: String,
    /// Agent id named by the agent's certificate.
    pub agent: String,
    /// The agent's boot epoch.
    pub epoch: Epoch,
    /// The batch's sequence number.
    pub seq: Seq,
    /// The agent's clock offset estimate (aggregator - agent), nanoseconds.
    pub clock_offset_ns: i64,
    /// When the aggregator received the batch, nanoseconds since the Unix epoch.
    pub received_ns: i64,
    /// Samples in the record.
    pub samples: u32,
    /// The sensors the series use.
    pub sensors: Vec<SensorInfo>,
}

impl RecordHeader {
    /// The entry for the record's `i`-th series, naming sensor `id`. Ingest
    /// lists the sensors in series order: the same index first, a search only
    /// for a record built otherwise.
    pub fn sensor(&self, i: usize, id: SensorId) -> Option<&SensorInfo> {
        match self.sensors.get(i) {
            Some(s) if s.id == id => Some(s),
            _ => self.sensors.iter().find(|s| s.id == id),
        }
    }
}

/// A whole record: header and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// Who, which batch, and the sensors.
    pub header: RecordHeader,
    /// The samples, one series per sensor.
    pub series: Vec<Series>,
}

/// Appends the encoding of a record to `out`.
pub fn encode_record(
    header: &RecordHeader,
    series: &[Series],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.push(RECORD_VERSION);
    postcard::to_io(header, &mut *out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    samples::encode_block(series, out);
    Ok(())
}

fn split_header(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
    if version != RECORD_VERSION {
        return Err(DecodeError::UnknownEncoding(version));
    }
    Ok(postcard::take_from_bytes(rest)?)
}

/// Decodes only a record's header.
pub fn decode_record_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    Ok(split_header(bytes)?.0)
}

/// Decodes a whole record, allowing at most `max_samples` samples.
pub fn decode_record(bytes: &[u8], max_samples: u64) -> Result<BatchRecord, DecodeError> {
    let (header, block) = split_header(bytes)?;
    let series = samples::decode_block(block, max_samples)?;
    let n: usize = series.iter().map(Series::len).sum();
    if n as u64 != u64::from(header.samples) {
        return Err(DecodeError::malformed(
            "record",
            format!("header says {} samples, block holds {n}", header.samples),
        ));
    }
    Ok(BatchRecord { header, series })
}

/// Decodes a whole record, its samples into `columns` (reused: see
/// [`SampleColumns`]), allowing at most `max_samples` samples. The same checks
/// as [`decode_record`]; on error `columns` holds nothing to use.
pub fn decode_record_into(
    bytes: &[u8],
    max_samples: u64,
    columns: &mut SampleColumns,
) -> Result<RecordHeader, DecodeError> {
    decode_record_filtered(bytes, max_samples, columns, |_, _, _, _| true)
}

/// [`decode_record_into`], deciding per series whether its values are wanted:
/// after decoding a series' timestamps, `keep(header, index, sensor,
/// timestamps)` is asked (not for an empty series), and when it says no the
/// values and quality are checked but not stored, and the series'
/// [`SeriesRef::has_values`](crate::SeriesRef::has_values) is false. A consumer
/// that can tell from the times alone that it would not look at the values (a
/// resend it already has) skips most of the decoding. The record is refused
/// for exactly the inputs [`decode_record`] refuses.
pub fn decode_record_filtered(
    bytes: &[u8],
    max_samples: u64,
    columns: &mut SampleColumns,
    mut keep: impl FnMut(&RecordHeader, usize, SensorId, &[i64]) -> bool,
) -> Result<RecordHeader, DecodeError> {
    let (header, block) = split_header(bytes)?;
    samples::decode_block_into(block, max_samples, columns, |i, sensor, ts| {
        keep(&header, i, sensor, ts)
    })?;
    let n = columns.samples();
    if n as u64 != u64::from(header.samples) {
        return Err(DecodeError::malformed(
            "record",
            format!("header says {} samples, block holds {n}", header.samples),
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{FeedOptions, ThreePhaseFeed, SENSORS, UNITS};

    #[test]
    fn records_round_trip_and_headers_read_alone() {
        let series = ThreePhaseFeed::new(3, 0, FeedOptions::default()).next_batch(700);
        let header = RecordHeader {
            site: "s".into(),
            agent: "a".into(),
            epoch: Epoch(2),
            seq: Seq(9),
            clock_offset_ns: -5,
            received_ns: 77,
            samples: 700,
            sensors: (0..7)
                .map(|i| SensorInfo {
                    id: SensorId(i),
                    name: SensorName::new(SENSORS[i as usize]).unwrap_or_else(|_| unreachable!()),
                    unit: UNITS[i as usize].into(),
                    kind: SensorKind::Gauge,
                })
                .collect(),
        };
        let mut buf = Vec::new();
        encode_record(&header, &series, &mut buf).unwrap();
        assert_eq!(decode_record_header(&buf).unwrap(), header);
        let rec = decode_record(&buf, 10_000).unwrap();
        assert_eq!(rec.series, series);
        // A header that lies about its sample count is refused.
        let mut lying = header.clone();
        lying.samples = 5;
        let mut buf = Vec::new();
        encode_record(&lying, &series, &mut buf).unwrap();
        assert!(decode_record(&buf, 10_000).is_err());
        assert_eq!(
            decode_record_header(&[9]),
            Err(DecodeError::UnknownEncoding(9))
        );
    }
}
