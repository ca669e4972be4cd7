//! Bounded parallelism over a list or any iterator (read lazily, so a
//! file list streamed from disk is never held whole): `jobs` workers take
//! items from one queue, in order, so at most `jobs` items are in flight (and memory stays
//! at `jobs` times what one item needs). After the first error no worker
//! takes a new item, and that error is returned. Used by backup (files),
//! restore (files) and verify (objects).

use std::future::Future;
use std::sync::{Arc, Mutex};

/// Runs `work` on every item with at most `jobs` at once. `Ok(None)`
/// results (an item with nothing to report) are dropped; the others are
/// returned in completion order. A panicking item panics the caller.
pub async fn run_bounded<I, T, R, E, F, Fut>(items: I, jobs: usize, work: F) -> Result<Vec<R>, E>
where
    I: IntoIterator<Item = T>,
    I::IntoIter: Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<R>, E>> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(Some(items.into_iter())));
    let work = Arc::new(work);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..jobs.max(1) {
        let queue = queue.clone();
        let work = work.clone();
        workers.spawn(async move {
            let mut results = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                    .and_then(Iterator::next);
                let Some(item) = next else { return Ok(results) };
                match work(item).await {
                    Ok(Some(r)) => results.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        // The run has failed: nobody starts another item.
                        *queue.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        return Err(e);
                    }
                }
            }
        });
    }
    let mut all = Vec::new();
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(results)) => all.extend(results),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down.
            Err(_) => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn runs_everything_with_at_most_jobs_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let mut out = run_bounded(0..40u32, 3, move |i| {
            let (f, p) = (f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                f.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>((i % 2 == 0).then_some(i))
            }
        })
        .await
        .unwrap();
        out.sort();
        assert_eq!(
            out,
            (0..40).filter(|i| i % 2 == 0).collect::<Vec<_>>(),
            "None results are dropped"
        );
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "never more than `jobs` at once"
        );
    }

    #[tokio::test]
    async fn the_first_error_stops_new_items() {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let err = run_bounded(0..100u32, 2, move |i| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                if i == 3 {
                    Err(format!("item {i} failed"))
                } else {
                    Ok(Some(i))
                }
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err, "item 3 failed");
        assert!(
            started.load(Ordering::SeqCst) < 10,
            "no new items after the failure"
        );
    }
}
