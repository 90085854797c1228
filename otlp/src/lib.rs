//! # ferrule-otlp
//!
//! ferrule's OpenTelemetry export over OTLP (gRPC or HTTP/protobuf): its own
//! metrics, sampled traces of a batch's life, and selected sensors as gauges.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
