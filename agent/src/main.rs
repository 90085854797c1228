//! `ferrule-agent`: the site daemon. It will read local signals, spool them
//! crash-safely and forward them over mutually authenticated QUIC; today it only
//! parses its command line, as the transport lands in its own change.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ferrule-agent",
    version,
    about = "ferrule's site agent: reads local signals, spools them crash-safely and forwards them over mutually authenticated QUIC",
    long_about = None,
    after_help = "Status: the wire protocol and certificate tooling exist; the QUIC uplink, spool and inputs arrive in the next changes."
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("ferrule-agent {}: nothing to run yet (see --help)", env!("CARGO_PKG_VERSION"));
}
