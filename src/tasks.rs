//! Running independent targets (servers, sites, tables) concurrently and
//! handing their results back in plan order, so reports read the same on
//! every run whatever finished first.

use std::future::Future;

use tokio::task::JoinSet;

/// Locks a std mutex shared between tasks; a task that panicked while
/// holding it left plain counters or maps behind, still usable.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns one task per item and returns their outputs in the items' order.
/// `on_done` runs as each finishes (a progress bar). A panicking task is a
/// bug: it is re-raised here rather than turned into a missing row.
pub async fn run_in_order<I, F, Fut, T>(items: I, run: F, mut on_done: impl FnMut()) -> Vec<T>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let fut = run(item);
        tasks.spawn(async move { (i, fut.await) });
    }
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => results.push(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
        on_done();
    }
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}
