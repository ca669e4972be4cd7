//! The storage self-test of `walvault check --storage`: does this store
//! behave as walvault relies on? Every check goes through the
//! [`ObjectStore`] API, so it tests what walvault itself would see, on any
//! backend, under a scratch prefix it removes afterwards.

use std::sync::Arc;

use bytes::Bytes;

use super::{Key, ObjectStore, PutMode};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Verdict {
    /// As walvault needs.
    Pass,
    /// A fact worth knowing (versioning, the URL style).
    Info,
    /// Works, with a cost or a weaker guarantee walvault compensates for.
    Warn,
    /// Breaks a walvault guarantee.
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Info => "INFO",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Finding {
    pub fn new(check: &str, verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// Keys listed to see pagination: more than one page of S3's 1000.
pub const LISTED_KEYS: usize = 1001;

/// The clock skew the repository lock tolerates between hosts.
const MAX_SKEW_SECS: i64 = crate::repo::lock::MAX_CLOCK_SKEW_SECS;

/// Runs every check under `base` (a fresh key prefix), removing what it
/// wrote. `multipart_bytes` is an object size that takes several parts.
pub async fn run_self_test(
    store: Arc<dyn ObjectStore>,
    base: &str,
    multipart_bytes: usize,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let key = |name: &str| Key::new(format!("{base}/{name}")).expect("self-test keys are valid");

    // Round trip and ranged reads.
    let small = super::conformance::pattern(3 << 20, 7);
    let k = key("range");
    let local_before = jiff::Timestamp::now().as_second();
    match store
        .put_bytes(&k, Bytes::from(small.clone()), PutMode::Overwrite)
        .await
    {
        Err(e) => out.push(Finding::new(
            "write and read back",
            Verdict::Fail,
            e.to_string(),
        )),
        Ok(()) => {
            let local_after = jiff::Timestamp::now().as_second();
            match store.get_bytes(&k).await {
                Ok(b) if b[..] == small[..] => out.push(Finding::new(
                    "write and read back",
                    Verdict::Pass,
                    "3 MiB, byte for byte",
                )),
                Ok(b) => out.push(Finding::new(
                    "write and read back",
                    Verdict::Fail,
                    format!("read {} bytes that differ from the 3 MiB written", b.len()),
                )),
                Err(e) => out.push(Finding::new(
                    "write and read back",
                    Verdict::Fail,
                    e.to_string(),
                )),
            }
            let mut wrong = Vec::new();
            for (offset, len) in [
                (0u64, 1u64),
                (65_535, 3),
                (1 << 20, 200_000),
                (3 << 20, 10),
                ((3 << 20) - 5, 100),
            ] {
                let want_end = ((offset + len) as usize).min(small.len());
                let want = &small[(offset as usize).min(small.len())..want_end];
                match store.get_range(&k, offset, len).await {
                    Ok(b) if b[..] == *want => {}
                    Ok(b) => wrong.push(format!(
                        "{len} bytes at {offset}: got {} that differ",
                        b.len()
                    )),
                    Err(e) => wrong.push(format!("{len} bytes at {offset}: {e}")),
                }
            }
            out.push(if wrong.is_empty() {
                Finding::new(
                    "ranged reads",
                    Verdict::Pass,
                    "5 ranges, including past the end",
                )
            } else {
                Finding::new("ranged reads", Verdict::Fail, wrong.join("; "))
            });
            // Clock skew: the object's time is the server's.
            match store.head(&k).await {
                Ok(meta) => {
                    let skew = if meta.modified_unix_secs < local_before - 1 {
                        meta.modified_unix_secs - local_before
                    } else if meta.modified_unix_secs > local_after + 1 {
                        meta.modified_unix_secs - local_after
                    } else {
                        0
                    };
                    let verdict = if skew.abs() > MAX_SKEW_SECS {
                        Verdict::Fail
                    } else if skew.abs() > 10 {
                        Verdict::Warn
                    } else {
                        Verdict::Pass
                    };
                    out.push(Finding::new(
                        "clock skew",
                        verdict,
                        format!(
                            "server time {}{} s from this host's (the repository lock allows {MAX_SKEW_SECS} s; keep both on NTP)",
                            if skew >= 0 { "+" } else { "" },
                            skew
                        ),
                    ));
                }
                Err(e) => out.push(Finding::new("clock skew", Verdict::Fail, e.to_string())),
            }
        }
    }
    let _ = store.delete(&k).await;

    // An object of several parts, written as walvault writes one.
    let big = super::conformance::pattern(multipart_bytes, 9);
    let k = key("multipart");
    let written = async {
        let mut w = store.put(&k, PutMode::Create).await?;
        for chunk in big.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await?;
        }
        w.commit().await
    }
    .await;
    out.push(match written {
        Err(e) => Finding::new("multipart upload", Verdict::Fail, e.to_string()),
        Ok(()) => match store.get_bytes(&k).await {
            Ok(b) if b[..] == big[..] => Finding::new(
                "multipart upload",
                Verdict::Pass,
                format!(
                    "{} MiB streamed in 1 MiB writes (several parts on S3), byte for byte",
                    multipart_bytes >> 20
                ),
            ),
            Ok(b) => Finding::new(
                "multipart upload",
                Verdict::Fail,
                format!(
                    "read {} bytes that differ from the {} written",
                    b.len(),
                    big.len()
                ),
            ),
            Err(e) => Finding::new("multipart upload", Verdict::Fail, e.to_string()),
        },
    });
    let _ = store.delete(&k).await;

    // An aborted upload leaves nothing visible.
    let k = key("aborted");
    let aborted = async {
        let mut w = store.put(&k, PutMode::Create).await?;
        for chunk in big.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await?;
        }
        w.abort().await;
        Ok::<_, super::StorageError>(())
    }
    .await;
    out.push(match (aborted, store.head(&k).await) {
        (Err(e), _) => Finding::new("abort", Verdict::Fail, e.to_string()),
        (Ok(()), Err(e)) if e.is_not_found() => {
            Finding::new("abort", Verdict::Pass, "an aborted upload left no object")
        }
        (Ok(()), Ok(_)) => Finding::new(
            "abort",
            Verdict::Fail,
            "an aborted upload is visible as an object: a partial object could look complete",
        ),
        (Ok(()), Err(e)) => Finding::new("abort", Verdict::Fail, e.to_string()),
    });
    let _ = store.delete(&k).await;

    // Listing: every key once, in order, past the first page.
    let names: Vec<Key> = (0..LISTED_KEYS)
        .map(|i| key(&format!("list/{i:05}")))
        .collect();
    let put_all = crate::pool::run_bounded(names.clone(), 16, {
        let store = store.clone();
        move |k: Key| {
            let store = store.clone();
            async move {
                store
                    .put_bytes(&k, Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
                    .map(|_| None::<()>)
            }
        }
    })
    .await;
    out.push(match put_all {
        Err(e) => Finding::new("listing", Verdict::Fail, e.to_string()),
        Ok(_) => match store.list(Some(&format!("{base}/list/"))).await {
            Err(e) => Finding::new("listing", Verdict::Fail, e.to_string()),
            Ok(listed) => {
                let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != LISTED_KEYS || keys.len() != LISTED_KEYS {
                    Finding::new(
                        "listing",
                        Verdict::Fail,
                        format!(
                            "listed {} keys ({} distinct) of {LISTED_KEYS}: a listing that loses keys makes expire and verify miss objects",
                            keys.len(),
                            sorted.len()
                        ),
                    )
                } else if keys != sorted {
                    Finding::new(
                        "listing",
                        Verdict::Info,
                        format!("all {LISTED_KEYS} keys, not in key order (walvault sorts what it needs)"),
                    )
                } else {
                    Finding::new(
                        "listing",
                        Verdict::Pass,
                        format!("all {LISTED_KEYS} keys, in key order, past the first page of 1000"),
                    )
                }
            }
        },
    });
    let _ = crate::pool::run_bounded(names, 16, {
        let store = store.clone();
        move |k: Key| {
            let store = store.clone();
            async move { store.delete(&k).await.map(|_| None::<()>) }
        }
    })
    .await;

    // Deletes are idempotent: a second delete and a delete of a key that
    // never existed both succeed.
    let k = key("delete");
    let deleted = async {
        store
            .put_bytes(&k, Bytes::from_static(b"x"), PutMode::Overwrite)
            .await?;
        store.delete(&k).await?;
        store.delete(&k).await?;
        store.delete(&key("never-existed")).await?;
        Ok::<_, super::StorageError>(store.head(&k).await)
    }
    .await;
    out.push(match deleted {
        Ok(Err(e)) if e.is_not_found() => Finding::new(
            "delete",
            Verdict::Pass,
            "gone after one delete; deleting again and deleting a missing key succeed",
        ),
        Ok(Ok(_)) => Finding::new(
            "delete",
            Verdict::Fail,
            "the object is still there after a delete",
        ),
        Ok(Err(e)) | Err(e) => Finding::new("delete", Verdict::Fail, e.to_string()),
    });
    out.extend(store.probe_features().await);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    /// A store that loses listed keys after the first thousand and shows
    /// aborted uploads: what a misbehaving server does to walvault.
    #[derive(Debug)]
    struct Broken(MemoryStore);

    #[async_trait::async_trait]
    impl ObjectStore for Broken {
        async fn get(&self, key: &Key) -> super::super::Result<super::super::ObjectReader> {
            self.0.get(key).await
        }
        async fn get_range(&self, key: &Key, offset: u64, len: u64) -> super::super::Result<Bytes> {
            // Ignores the range: the whole object.
            let _ = (offset, len);
            self.0.get_bytes(key).await
        }
        async fn head(&self, key: &Key) -> super::super::Result<super::super::ObjectMeta> {
            self.0.head(key).await
        }
        async fn put(
            &self,
            key: &Key,
            mode: PutMode,
        ) -> super::super::Result<Box<dyn super::super::ObjectWriter>> {
            self.0.put(key, mode).await
        }
        async fn list(
            &self,
            prefix: Option<&str>,
        ) -> super::super::Result<Vec<super::super::ObjectMeta>> {
            let mut all = self.0.list(prefix).await?;
            all.truncate(1000);
            Ok(all)
        }
        async fn delete(&self, key: &Key) -> super::super::Result<()> {
            self.0.delete(key).await
        }
        fn describe(&self) -> String {
            "broken".to_string()
        }
    }

    #[tokio::test]
    async fn a_sound_store_passes_and_a_broken_one_fails_by_name() {
        let good = run_self_test(Arc::new(MemoryStore::new()), "probe/t", 5 << 20).await;
        assert!(good.iter().all(|f| f.verdict == Verdict::Pass), "{good:#?}");
        assert_eq!(good.len(), 7, "{good:#?}");
        let bad = run_self_test(Arc::new(Broken(MemoryStore::new())), "probe/t", 5 << 20).await;
        let failed: Vec<&str> = bad
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .map(|f| f.check.as_str())
            .collect();
        assert_eq!(failed, ["ranged reads", "listing"], "{bad:#?}");
    }
}
