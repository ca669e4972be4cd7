//! The storage conformance suite against a real S3-compatible server.

use walvault::storage::conformance;
use walvault::storage::s3::{S3Settings, S3Store};
use walvault::storage::ObjectStore;

use crate::harness::{s3, S3Server, TestDir};

pub fn store_for(server: &S3Server, url: &str) -> S3Store {
    let mut settings = S3Settings::from_url(url).expect("s3 url");
    settings.endpoint = Some(server.endpoint.clone());
    settings.path_style = true;
    settings.region = Some("us-east-1".to_string());
    settings.static_credentials = Some((s3::ACCESS_KEY.to_string(), s3::SECRET_KEY.to_string()));
    S3Store::new(settings).expect("s3 store")
}

#[tokio::test]
async fn s3_store_conforms() {
    let dir = TestDir::new("s3-conformance");
    let server = S3Server::start(dir.path(), "bucket");
    let store = store_for(&server, "s3://bucket/some/prefix");
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
