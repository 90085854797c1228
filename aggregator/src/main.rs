//! `ferrule-agent`: the site daemon. The transport lands in a later change; for now
//! it prints what it will do.
fn main() {
    println!("ferrule-agent {}", env!("CARGO_PKG_VERSION"));
}
