//! `ferrule-aggregator`: the central service. It will accept agents over
//! mutually authenticated QUIC and commit their batches durably; today it only
//! parses its command line, as the transport lands in its own change.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ferrule-aggregator",
    version,
    about = "ferrule's central aggregator: commits every batch durably before acknowledging it",
    long_about = None,
    after_help = "Status: the wire protocol and certificate tooling exist; QUIC ingest and the embedded durable log arrive in the next changes."
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("ferrule-aggregator {}: nothing to run yet (see --help)", env!("CARGO_PKG_VERSION"));
}
