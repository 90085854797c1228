//! Blocking work (fsyncs, reads of a backlog from disk) from async code.
//!
//! On a multi-threaded runtime the worker is handed over with
//! `block_in_place` while the work runs, so other tasks go on; on a
//! current-thread runtime (tests, embedders) that would panic, so the work runs
//! inline there.

/// Runs `f`, handing the async worker over if the runtime allows it.
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn runs_inline_on_a_current_thread_runtime() {
        assert_eq!(super::run(|| 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn hands_the_worker_over_on_a_multi_threaded_runtime() {
        assert_eq!(super::run(|| 8), 8);
    }
}
