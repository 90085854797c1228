//! Prints append + group-commit throughput on this machine's disk:
//! `cargo run --release -p ferrule-disklog --example throughput [DIR]`.
//! Each batch of appends is followed by one `sync` (one fdatasync), as the aggregator
//! and the agent do; `FsyncPolicy::Always` is shown for comparison.

use std::time::Instant;

use ferrule_disklog::{Error, FsyncPolicy, Log, Options};

fn run(
    dir: &std::path::Path,
    fsync: FsyncPolicy,
    batch: usize,
    records: usize,
    size: usize,
) -> Result<(), Error> {
    let mut opts = Options::default();
    opts.fsync = fsync;
    let (mut log, _) = Log::open(dir, opts)?;
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    for i in 0..records {
        log.append(&payload)?;
        if (i + 1) % batch == 0 {
            log.sync()?;
        }
    }
    log.sync()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{fsync:?} batch {batch:>4}, {size} B records: {:>9.0} records/s, {:>7.1} MiB/s, {:>7.0} syncs/s",
        records as f64 / secs,
        (records * size) as f64 / secs / (1 << 20) as f64,
        (records / batch) as f64 / secs
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ferrule-disklog-throughput-{}", std::process::id()));
    for (i, (fsync, batch, records)) in [
        (FsyncPolicy::Always, 1, 2_000),
        (FsyncPolicy::Batch, 10, 20_000),
        (FsyncPolicy::Batch, 100, 100_000),
        (FsyncPolicy::Batch, 1_000, 200_000),
    ]
    .into_iter()
    .enumerate()
    {
        let d = dir.join(i.to_string());
        run(&d, fsync, batch, records, 512)?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
