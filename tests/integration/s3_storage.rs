//! The storage conformance suite against a real S3-compatible server.

use walvault::storage::conformance;
use walvault::storage::s3::{S3Settings, S3Store};
use walvault::storage::ObjectStore;

use crate::harness::{s3, S3Server, TestDir};

fn settings_for(server: &S3Server, url: &str) -> S3Settings {
    let mut settings = S3Settings::from_url(url).expect("s3 url");
    settings.endpoint = Some(server.endpoint.clone());
    settings.path_style = true;
    settings.region = Some("us-east-1".to_string());
    settings.static_credentials = Some((s3::ACCESS_KEY.to_string(), s3::SECRET_KEY.to_string()));
    settings
}

pub fn store_for(server: &S3Server, url: &str) -> S3Store {
    S3Store::new(settings_for(server, url)).expect("s3 store")
}

/// With the default settings the suite's large objects (up to 19 MiB) go
/// up in one PUT (`s3_store_without_prefix_conforms`); here every object
/// over a part goes up as a multipart upload.
#[tokio::test]
async fn s3_store_conforms() {
    let dir = TestDir::new("s3-conformance");
    let server = S3Server::start(dir.path(), "bucket");
    let mut settings = settings_for(&server, "s3://bucket/some/prefix");
    settings.single_put_max_bytes = settings.part_size_bytes;
    let store = S3Store::new(settings).expect("s3 store");
    conformance::run_all(&store, "conformance").await;
    // Objects really live under the prefix in the bucket.
    assert!(server
        .root
        .join("bucket/some/prefix/conformance/round/trip")
        .is_file());
}

#[tokio::test]
async fn s3_store_without_prefix_conforms() {
    let dir = TestDir::new("s3-conformance-root");
    let server = S3Server::start(dir.path(), "bucket");
    let store = store_for(&server, "s3://bucket");
    conformance::run_all(&store, "c").await;
    let all = store.list(None).await.expect("list");
    assert!(all.iter().all(|m| m.key.as_str().starts_with("c/")));
}

/// A multipart upload left open by a writer that never finished (its
/// process was killed: no abort ran) does not make `remove_abandoned`
/// (which expire calls) fail. s3s-fs cannot list multipart uploads, so
/// here that is all it can show; the finished object is untouched.
#[tokio::test]
async fn abandoned_multipart_uploads_do_not_break_expire() {
    use walvault::storage::{Key, PutMode};
    let dir = TestDir::new("s3-abandoned");
    let server = S3Server::start(dir.path(), "bucket");
    let mut settings = S3Settings::from_url("s3://bucket/p").unwrap();
    settings.endpoint = Some(server.endpoint.clone());
    settings.path_style = true;
    settings.region = Some("us-east-1".to_string());
    settings.static_credentials = Some((s3::ACCESS_KEY.to_string(), s3::SECRET_KEY.to_string()));
    settings.part_size_bytes = 5 << 20;
    settings.single_put_max_bytes = 5 << 20;
    let store = S3Store::new(settings).unwrap();
    let kept = Key::new("kept").unwrap();
    store
        .put_bytes(&kept, bytes::Bytes::from_static(b"done"), PutMode::Create)
        .await
        .unwrap();
    let mut writer = store
        .put(&Key::new("killed").unwrap(), PutMode::Create)
        .await
        .unwrap();
    // More than a part: the upload is started and its first part sent.
    writer
        .write(bytes::Bytes::from(vec![7u8; 6 << 20]))
        .await
        .unwrap();
    // As if the process died here: no commit, no abort, no drop.
    std::mem::forget(writer);
    store
        .remove_abandoned(std::time::Duration::ZERO, &["killed"])
        .await
        .expect("a server without ListMultipartUploads is not an error");
    assert_eq!(&store.get_bytes(&kept).await.unwrap()[..], b"done");
    assert!(
        store.head(&Key::new("killed").unwrap()).await.is_err(),
        "the unfinished upload never became an object"
    );
}

/// Upload parts s3s-fs holds for open multipart uploads.
fn open_upload_parts(server: &S3Server) -> usize {
    std::fs::read_dir(&server.root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
        .count()
}

/// A multipart upload whose completion fails (here: the name is already
/// archived) is aborted before the put returns, so no part is left on
/// the server; an upload abandoned without an abort leaves its parts.
#[tokio::test]
async fn a_failed_multipart_upload_is_aborted() {
    use walvault::storage::{Key, PutMode, StorageError};
    let dir = TestDir::new("s3-abort");
    let server = S3Server::start(dir.path(), "bucket");
    let mut settings = S3Settings::from_url("s3://bucket/p").unwrap();
    settings.endpoint = Some(server.endpoint.clone());
    settings.path_style = true;
    settings.region = Some("us-east-1".to_string());
    settings.static_credentials = Some((s3::ACCESS_KEY.to_string(), s3::SECRET_KEY.to_string()));
    settings.part_size_bytes = 5 << 20;
    settings.single_put_max_bytes = 5 << 20;
    let store = S3Store::new(settings).unwrap();
    let key = Key::new("taken").unwrap();
    store
        .put_bytes(&key, bytes::Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let mut writer = store.put(&key, PutMode::Create).await.unwrap();
    writer
        .write(bytes::Bytes::from(vec![1u8; 6 << 20]))
        .await
        .unwrap();
    // The part goes up in the background; wait until the server holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while open_upload_parts(&server) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(open_upload_parts(&server) > 0, "a part was uploaded");
    let err = writer.commit().await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(
        open_upload_parts(&server),
        0,
        "the failed upload was aborted"
    );
    assert_eq!(&store.get_bytes(&key).await.unwrap()[..], b"first");
}

/// Multipart uploads s3s-fs holds open (it records each when it is
/// created, and forgets it at completion or abort).
fn open_uploads(server: &S3Server) -> usize {
    std::fs::read_dir(&server.root)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with(".upload-") && name.ends_with(".json")
        })
        .count()
}

/// Writes `data` to `writer` in chunks of 1 MiB.
async fn write_in_chunks(writer: &mut dyn walvault::storage::ObjectWriter, data: &[u8]) {
    for chunk in data.chunks(1 << 20) {
        writer
            .write(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
}

/// An object of up to the single-put size is sent with one PutObject at
/// commit: no multipart upload is started however it is written. One
/// byte more and the upload is created (the write that crosses the size
/// waits for it) and its first part goes up before the commit.
#[tokio::test]
async fn objects_up_to_the_single_put_size_are_one_put() {
    use walvault::storage::{Key, PutMode};
    let dir = TestDir::new("s3-single-put");
    let server = S3Server::start(dir.path(), "bucket");
    let mut settings = settings_for(&server, "s3://bucket/p");
    settings.part_size_bytes = 5 << 20;
    settings.single_put_max_bytes = 12 << 20;
    let store = S3Store::new(settings).unwrap();
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    let key = Key::new("whole").unwrap();
    let mut writer = store.put(&key, PutMode::Create).await.unwrap();
    write_in_chunks(writer.as_mut(), &data).await;
    assert_eq!(open_uploads(&server), 0, "no multipart upload was created");
    writer.commit().await.unwrap();
    assert!(store.get_bytes(&key).await.unwrap() == data);
    assert_eq!(open_upload_parts(&server), 0);

    let key = Key::new("parts").unwrap();
    let mut writer = store.put(&key, PutMode::Create).await.unwrap();
    write_in_chunks(writer.as_mut(), &data).await;
    writer.write(bytes::Bytes::from_static(b"!")).await.unwrap();
    assert_eq!(
        open_uploads(&server),
        1,
        "one byte more: a multipart upload"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while open_upload_parts(&server) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        open_upload_parts(&server) > 0,
        "its parts go up before the commit"
    );
    writer.commit().await.unwrap();
    let mut longer = data.clone();
    longer.push(b'!');
    assert!(store.get_bytes(&key).await.unwrap() == longer);
    assert_eq!(open_uploads(&server), 0, "the upload was completed");
}

/// walvault verifies an S3 server's certificate. Through a TLS front whose
/// CA it is given (`SSL_CERT_FILE`), a segment goes up and comes back byte
/// for byte; with the system's store alone, which lacks that CA, init and
/// push fail with the storage exit code and a line naming the
/// certificate, and nothing is stored.
#[test]
fn s3_over_https_verifies_the_servers_certificate() {
    use crate::harness::tls::TlsFront;
    use crate::harness::wal::write_segment;
    use crate::harness::{fake_pgdata, run, walvault};
    use walvault::wal::WalSegmentSize;

    let dir = TestDir::new("s3-tls");
    let server = S3Server::start(dir.path(), "bucket");
    let upstream: u16 = server.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let tls = TlsFront::start(dir.path(), upstream);
    let endpoint = format!("https://localhost:{}", tls.port);
    let sysid = 7_344_444_444_444_444_444;
    let data = fake_pgdata(dir.path(), sysid, 16 << 20);
    let size = WalSegmentSize::new(16 << 20).unwrap();
    let wal = dir.subdir("wal");
    let cmd = |bin: &str, trust_ca: bool| {
        let mut c = walvault(bin);
        c.envs(server.env())
            .env("WALVAULT_S3_ENDPOINT", &endpoint)
            .env_remove("SSL_CERT_DIR");
        for proxy in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(proxy);
        }
        if trust_ca {
            c.env("SSL_CERT_FILE", &tls.ca);
        } else {
            c.env_remove("SSL_CERT_FILE");
        }
        c.args(["--repo", "s3://bucket/tls"]);
        c
    };
    let stored = || {
        walkdir(&server.root.join("bucket"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/tls/"))
            .count()
    };

    // The system's store does not know the test's CA: refused, with the
    // fix named.
    let refused = |out: &crate::harness::Ran, code: i32| {
        assert_eq!(
            out.code, code,
            "stdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains("certificate is not accepted")
                && out.stderr.contains("HINT: ")
                && out.stderr.contains("SSL_CERT_FILE"),
            "{}",
            out.stderr
        );
    };
    let out = run(cmd("walvault", false)
        .arg("init")
        .arg("--pgdata")
        .arg(&data));
    refused(&out, 5);
    assert_eq!(stored(), 0, "nothing stored");

    // Given the CA, everything works over HTTPS.
    let out = run(cmd("walvault", true).arg("init").arg("--pgdata").arg(&data));
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let seg = write_segment(&wal, sysid, 1, 3, size, 1);
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();
    let out = run(cmd("walvault-push", true).arg(&seg));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let dest = dir.path().join("restored");
    let out = run(cmd("walvault-fetch", true).arg(&name).arg(&dest));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());

    // Without it, a push is refused too and stores nothing.
    let before = stored();
    let next = write_segment(&wal, sysid, 1, 4, size, 2);
    let out = run(cmd("walvault-push", false).arg(&next));
    refused(&out, 5);
    assert_eq!(stored(), before, "nothing stored");
    // A fetch gives up at once (no retries for a setting) with 128, so
    // that recovery stops rather than ends early, and leaves no file.
    let started = std::time::Instant::now();
    let other = dir.path().join("not-restored");
    let out = run(cmd("walvault-fetch", false).arg(&name).arg(&other));
    refused(&out, 128);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!other.exists());
}

/// Every file below `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}
