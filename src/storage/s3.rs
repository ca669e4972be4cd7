//! The S3 backend, through aws-sdk-s3, for AWS and S3-compatible servers.
//!
//! - Streaming puts: an object of up to `single_put_max` bytes (32 MiB, more
//!   than a compressed 16 MiB WAL segment) is buffered and sent with one
//!   PutObject; a larger one as a multipart upload with a bounded number of
//!   parts in flight, so memory stays at about
//!   `max(single_put_max, (parts_in_flight + 1) * part_size)` whatever the
//!   object's size. One request instead of up to six (create, parts, a HEAD
//!   for create-only, complete) matters for WAL: s3s-fs, for one,
//!   copies the parts into the object again at completion.
//!   An object becomes visible only when PutObject or
//!   CompleteMultipartUpload succeeds: S3 never shows a partial object.
//! - Create-only puts send `If-None-Match: *`. Where a server answers that it
//!   does not implement conditional writes (501), the backend falls back to a
//!   HEAD before the write, which is not atomic against a concurrent writer.
//!   A server that refuses a create-only PUT before reading its body may
//!   close the connection under it: a PUT that gets no answer is reported
//!   as `AlreadyExists` when a HEAD then finds the key taken.
//! - Throttling, 5xx, timeouts and connection failures are retried with
//!   exponential backoff by the SDK's standard retry strategy. Every
//!   request has a connect timeout, a read timeout and stalled-stream
//!   protection (`s3_timeout_secs`, default 20 s), so a stalled server
//!   fails a push instead of holding archive_command, plus per-attempt and
//!   per-request backstop timeouts long enough for a slow moving upload.
//! - Credentials: static `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` are used
//!   directly; otherwise the profile files, web identity and container
//!   providers, and the EC2 instance metadata service only on EC2 (or when
//!   `AWS_EC2_METADATA_DISABLED=false` asks for it), so that a machine with
//!   no credentials fails at once instead of stalling on metadata probes.
//!   The region likewise never comes from instance metadata.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::{
    CreateOnly, CreateOnlyProbe, Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode,
    Result, StorageError,
};

/// Settings for the S3 backend, resolved by `config`.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub part_size_bytes: usize,
    /// Objects up to this size go up in one PutObject, larger ones as a
    /// multipart upload (the effective threshold is never below the part
    /// size).
    pub single_put_max_bytes: usize,
    pub parts_in_flight: usize,
    /// Attempts per request, including the first.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Longest wait for an answer, and longest time a request or response
    /// body may stop moving, before the attempt fails (and is retried). A
    /// stalled server thus fails a push within about a minute of retries.
    /// Attempts and whole requests have backstop timeouts of
    /// [`S3Settings::ATTEMPT_TIMEOUT_FACTOR`] and, retries included,
    /// twice that, so a slow but moving upload is never cut.
    pub request_timeout: Duration,
    /// Access key id and secret from the config file; `None` uses the
    /// standard AWS chain.
    pub static_credentials: Option<(String, String)>,
}

impl S3Settings {
    pub const DEFAULT_PART_SIZE: usize = 8 << 20;
    pub const DEFAULT_SINGLE_PUT_MAX: usize = 32 << 20;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
    /// One attempt may take this many request timeouts for each 8 MiB of
    /// the largest request, a part or a single PUT (8 MiB at 30 KiB/s): a
    /// backstop, since stalls are caught sooner.
    pub const ATTEMPT_TIMEOUT_FACTOR: u32 = 15;

    /// The backstop timeout of one attempt (see
    /// [`S3Settings::ATTEMPT_TIMEOUT_FACTOR`]): 20 minutes by default,
    /// for a single PUT of 32 MiB.
    pub fn attempt_timeout(&self) -> Duration {
        let largest = self.part_size_bytes.max(self.single_put_max_bytes);
        let eights = u32::try_from(largest.div_ceil(8 << 20))
            .unwrap_or(u32::MAX)
            .max(1);
        self.request_timeout * Self::ATTEMPT_TIMEOUT_FACTOR.saturating_mul(eights)
    }
    pub const OPERATION_TIMEOUT_FACTOR: u32 = 2;

    /// Parses `s3://bucket/prefix`.
    pub fn from_url(url: &str) -> Result<S3Settings> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| StorageError::Config(format!("\"{url}\" is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::Config(format!(
                "repository URL \"{url}\" names no bucket\nHINT: use s3://BUCKET/PREFIX"
            )));
        }
        Ok(S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            part_size_bytes: Self::DEFAULT_PART_SIZE,
            single_put_max_bytes: Self::DEFAULT_SINGLE_PUT_MAX,
            parts_in_flight: 4,
            max_attempts: 4,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            static_credentials: None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    /// Built on first use: building it loads the system's certificate
    /// store (several milliseconds), which a call that never reaches S3
    /// (an asynchronous push whose file the worker has stored) must not
    /// pay. Shared by clones (a writer clones the store), so one process
    /// builds one client.
    client: std::sync::Arc<std::sync::OnceLock<Client>>,
    settings: S3Settings,
    /// Set when the repository header records that this server does not
    /// honour `If-None-Match: *` ([`CreateOnly::HeadCheck`]).
    head_check: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl S3Store {
    /// A listing under `full_prefix`, page by page (with `delimiter`, the
    /// names one level down come as common prefixes); the SDK's paginator
    /// follows the continuation tokens.
    fn list_pages(
        &self,
        full_prefix: &str,
        delimiter: Option<&str>,
    ) -> aws_sdk_s3::operation::list_objects_v2::paginator::ListObjectsV2Paginator {
        self.client()
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(full_prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .into_paginator()
    }

    /// The repository's prefix in the bucket (`""` or `"prefix/"`), and
    /// `rel` below it: what a listing asks the server for.
    fn listing_prefix(&self, rel: &str) -> (String, String) {
        let base = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        };
        let full = format!("{base}{rel}");
        (base, full)
    }

    /// Completes a one-part multipart upload over an existing object with
    /// `If-None-Match: *`, for [`ObjectStore::probe_create_only`].
    async fn probe_multipart(&self, object_key: &str) -> Result<&'static str> {
        let key = Key(object_key.to_string());
        let upload = self
            .client()
            .create_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(object_key)
            .send()
            .await
            .map_err(|e| map_err("probe", &key, e))?;
        let Some(id) = upload.upload_id() else {
            return Err(StorageError::Remote {
                op: "probe",
                key: object_key.to_string(),
                message: "CreateMultipartUpload returned no upload id".to_string(),
                transient: false,
            });
        };
        let abort = || async {
            let _ = self
                .client()
                .abort_multipart_upload()
                .bucket(&self.settings.bucket)
                .key(object_key)
                .upload_id(id)
                .send()
                .await;
        };
        let part = match self
            .client()
            .upload_part()
            .bucket(&self.settings.bucket)
            .key(object_key)
            .upload_id(id)
            .part_number(1)
            .body(ByteStream::from_static(b"walvault create-only probe 3"))
            .send()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                abort().await;
                return Err(map_err("probe", &key, e));
            }
        };
        let done = CompletedPart::builder()
            .part_number(1)
            .set_e_tag(part.e_tag().map(str::to_string))
            .build();
        let completed = self
            .client()
            .complete_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(object_key)
            .upload_id(id)
            .if_none_match("*")
            .multipart_upload(CompletedMultipartUpload::builder().parts(done).build())
            .send()
            .await;
        let status = http_status;
        Ok(match completed {
            Ok(_) => "overwrote the object (ignored)",
            Err(e) if status(&e) == Some(412) => {
                abort().await;
                "refused the second create (honoured)"
            }
            Err(e) if status(&e) == Some(501) => {
                abort().await;
                "answered 501 (not implemented)"
            }
            Err(e) => {
                abort().await;
                return Err(map_err("probe", &key, e));
            }
        })
    }

    /// Builds the client. No network traffic happens here.
    pub fn new(settings: S3Settings) -> Result<S3Store> {
        if settings.part_size_bytes < 5 << 20 {
            return Err(StorageError::Config(format!(
                "S3 part size {} is below the 5 MiB minimum of S3",
                settings.part_size_bytes
            )));
        }
        Ok(S3Store {
            client: Default::default(),
            head_check: Default::default(),
            settings,
        })
    }

    /// The SDK client, built on first use (no network traffic happens
    /// here either).
    fn client(&self) -> &Client {
        self.client.get_or_init(|| build_client(&self.settings))
    }

    fn object_key(&self, key: &Key) -> String {
        if self.settings.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.settings.prefix, key)
        }
    }
}

/// The SDK client for `settings`.
fn build_client(settings: &S3Settings) -> Client {
    let region = settings
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string());
    let retry = RetryConfig::standard()
        .with_max_attempts(settings.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5));
    // Stalls are caught by the read timeout (no answer) and by
    // stalled-stream protection (a body that stops moving, up or
    // down), each after `request_timeout`. The attempt and operation
    // timeouts are backstops sized for the largest request (a part or
    // a single PUT) on a slow link, so they never cut a slow but
    // moving upload.
    let attempt = settings.attempt_timeout();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.request_timeout)
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt * S3Settings::OPERATION_TIMEOUT_FACTOR)
        .build();
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(credentials_provider(settings.static_credentials.clone()))
        .retry_config(retry)
        .timeout_config(timeouts)
        .stalled_stream_protection(
            aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
                .upload_enabled(true)
                .download_enabled(true)
                .grace_period(settings.request_timeout)
                .build(),
        )
        .force_path_style(settings.path_style)
        // walvault checksums every object itself; S3-compatible servers
        // differ in their support of the newer flexible checksums.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    let set = |names: &[&str]| names.iter().any(|n| std::env::var_os(n).is_some());
    let trust = plan_trust(
        settings.endpoint.as_deref(),
        set(&["SSL_CERT_FILE", "SSL_CERT_DIR"]),
        set(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]),
        |p| Path::new(p).is_file(),
    );
    builder = builder.http_client(http_client(trust));
    Client::from_conf(builder.build())
}

/// The certificates the S3 client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trust {
    /// None: a plain `http://` endpoint, reached without a proxy (which
    /// could be `https://`), has no TLS to verify.
    Nothing,
    /// The system's store as rustls-native-certs loads it: the files
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` name when either is set, else
    /// the system's bundle and its directory of certificates.
    Native,
    /// One bundle file, the system's. Debian's directory holds the same
    /// certificates as its bundle, so reading both (as `Native` does
    /// without the variables) parses each one twice and opens about 290
    /// files: 6–7 ms of every call that reaches S3. A certificate that is
    /// only in the directory (hashed there by hand, not added with
    /// `update-ca-certificates`) needs `SSL_CERT_DIR`.
    Bundle(&'static str),
}

/// Where Linux distributions keep the bundle of their trusted
/// certificates (what OpenSSL reads as its default file). Elsewhere (a
/// Mac's keychain) the native store is the system's.
#[cfg(target_os = "linux")]
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
#[cfg(not(target_os = "linux"))]
const SYSTEM_BUNDLES: [&str; 0] = [];

/// What the client trusts for `endpoint` (`None`: AWS, over HTTPS), with
/// `SSL_CERT_FILE` or `SSL_CERT_DIR` set or not, and a proxy for plain
/// HTTP set or not, on a machine where `exists` tells which files there
/// are.
fn plan_trust(
    endpoint: Option<&str>,
    env_set: bool,
    proxied: bool,
    exists: impl Fn(&str) -> bool,
) -> Trust {
    let plain = endpoint.is_some_and(|e| {
        e.get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
    });
    if plain && !proxied {
        return Trust::Nothing;
    }
    if env_set {
        return Trust::Native;
    }
    SYSTEM_BUNDLES
        .into_iter()
        .find(|p| exists(p))
        .map_or(Trust::Native, Trust::Bundle)
}

/// Whether every entry of a PEM bundle is a certificate rustls takes as
/// a trust anchor, and there is one at least: aws-smithy-http-client
/// panics on the first one it cannot parse.
fn bundle_is_clean(pem: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let Ok(cert) = cert else { return false };
        if roots.add(cert).is_err() {
            return false;
        }
    }
    !roots.is_empty()
}

/// The SDK's default HTTPS client (rustls over aws-lc, proxies from the
/// environment), trusting `trust`: what aws-smithy-runtime's
/// `default_https_client` builds (1.16), with a trust store of ours.
fn http_client(trust: Trust) -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, TrustStore};
    let store = match trust {
        Trust::Nothing => TrustStore::empty(),
        Trust::Native => TrustStore::default(),
        // Unreadable now (it existed a moment ago), or with an entry the
        // client would panic on (rustls-native-certs skips those): the
        // system's store as rustls-native-certs finds it.
        Trust::Bundle(path) => match std::fs::read(path) {
            Ok(pem) if bundle_is_clean(&pem) => TrustStore::empty().with_pem_certificate(pem),
            _ => TrustStore::default(),
        },
    };
    let context = tls::TlsContext::builder()
        .with_trust_store(store)
        .build()
        .expect("a TLS context with a trust store builds");
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = aws_smithy_http_client::ConnectorBuilder::default()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Whether this looks like an EC2 instance, where instance metadata can
/// hold credentials. Reading two small sysfs files costs microseconds; a
/// metadata probe elsewhere costs seconds.
fn on_ec2() -> bool {
    match std::env::var("AWS_EC2_METADATA_DISABLED").as_deref() {
        Ok("true") | Ok("TRUE") | Ok("1") => return false,
        Ok("false") | Ok("FALSE") | Ok("0") => return true,
        _ => {}
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    read("/sys/class/dmi/id/sys_vendor").contains("Amazon")
        || read("/sys/class/dmi/id/board_vendor").contains("Amazon")
        || read("/sys/hypervisor/uuid").starts_with("ec2")
}

fn credentials_provider(configured: Option<(String, String)>) -> SharedCredentialsProvider {
    if let Some((id, secret)) = configured {
        return SharedCredentialsProvider::new(Credentials::new(
            id,
            secret,
            None,
            None,
            "walvault config",
        ));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return SharedCredentialsProvider::new(Credentials::new(
            id,
            secret,
            env("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    use aws_config::meta::credentials::CredentialsProviderChain;
    let mut chain = CredentialsProviderChain::first_try(
        "profile",
        aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
    )
    .or_else(
        "web-identity",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder().build(),
    )
    .or_else(
        "container",
        aws_config::ecs::EcsCredentialsProvider::builder().build(),
    );
    if on_ec2() {
        let imds = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(1))
            .max_attempts(2)
            .build();
        chain = chain.or_else(
            "instance-metadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .imds_client(imds)
                .build(),
        );
    }
    SharedCredentialsProvider::new(chain)
}

/// An error and its sources on one line, each cause once: the SDK's own
/// Display of a connection failure is spread over several levels.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string().replace('\n', "; ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// The HTTP status of a failed request, when there was a response.
fn http_status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Maps an SDK error to a storage error: 404 is NotFound, 412 is
/// AlreadyExists (a failed `If-None-Match: *`), throttling, 5xx, timeouts
/// and connection failures are transient.
fn map_err<E>(op: &'static str, key: &Key, err: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    // A missing bucket is a misconfigured repository, never a missing
    // object: fetch must not answer "not in the archive" for it.
    if err.as_service_error().and_then(|e| e.code()) == Some("NoSuchBucket") {
        return StorageError::Remote {
            op,
            key: key.to_string(),
            message:
                "NoSuchBucket: the bucket does not exist (check the repository URL and endpoint)"
                    .to_string(),
            transient: false,
        };
    }
    match status {
        Some(404) if op != "list" => return StorageError::NotFound { key: key.clone() },
        Some(412) => return StorageError::AlreadyExists { key: key.clone() },
        _ => {}
    }
    let code = err
        .as_service_error()
        .and_then(|e| e.code())
        .map(str::to_string);
    if matches!(code.as_deref(), Some("NoSuchKey") | Some("NotFound")) {
        return StorageError::NotFound { key: key.clone() };
    }
    let chain = error_chain(&err);
    if matches!(err, SdkError::DispatchFailure(_))
        && chain.to_ascii_lowercase().contains("credential")
    {
        return StorageError::Config(format!(
            "no S3 credentials found ({})\nHINT: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, use an AWS profile, or set s3_access_key_id and s3_secret_access_key in the config file",
            chain
        ));
    }
    // rustls's words for a certificate it does not accept (an unknown
    // CA, another host name, expired): a setting to fix, not an outage
    // to wait out.
    if matches!(err, SdkError::DispatchFailure(_)) && chain.contains("invalid peer certificate") {
        return StorageError::Config(format!(
            "the S3 server's certificate is not accepted ({chain})\nHINT: for a server whose certificate your own CA signed, set SSL_CERT_FILE to that CA's PEM file or add the CA to the system's store; check that s3_endpoint names the host the certificate is for"
        ));
    }
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => matches!(status, Some(s) if s == 429 || s == 409 || s >= 500),
    };
    let mut message = match (&code, status) {
        (Some(code), Some(status)) => format!("{code} (HTTP {status})"),
        (None, Some(status)) => format!("HTTP {status}"),
        _ => chain,
    };
    if let Some(text) = err.as_service_error().and_then(|e| e.message()) {
        message.push_str(": ");
        message.push_str(text);
    }
    StorageError::Remote {
        op,
        key: key.to_string(),
        message,
        transient,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        let out = self
            .client()
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| map_err("get", key, e))?;
        Ok(Box::pin(out.body.into_async_read()))
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let res = self
            .client()
            .get_object()
            .bucket(&self.settings.bucket)
            .key(self.object_key(key))
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            // The range starts past the end: nothing to read.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(map_err("get", key, e)),
        };
        let data = out.body.collect().await.map_err(|e| StorageError::Remote {
            op: "read",
            key: key.to_string(),
            message: e.to_string(),
            transient: true,
        })?;
        let data = data.into_bytes();
        // Servers that ignore Range send everything: cut it ourselves.
        if data.len() as u64 > len {
            let start = (offset as usize).min(data.len());
            let end = (start + len as usize).min(data.len());
            return Ok(data.slice(start..end));
        }
        Ok(data)
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let out = self
            .client()
            .head_object()
            .bucket(&self.settings.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| map_err("head", key, e))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size_bytes: out.content_length().unwrap_or(0).max(0) as u64,
            modified_unix_secs: out.last_modified().map(|t| t.secs()).unwrap_or(0),
        })
    }

    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key: key.clone(),
            object_key: self.object_key(key),
            mode,
            buf: BytesMut::new(),
            upload_id: None,
            in_flight: VecDeque::new(),
            done_parts: Vec::new(),
            next_part: 1,
        }))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        super::list_sorted(self, prefix).await
    }

    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        let (base, full_prefix) = self.listing_prefix(prefix);
        let list_key = Key(full_prefix.clone());
        let mut pages = self.list_pages(&full_prefix, None).send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("list", &list_key, e))?;
            for object in page.contents() {
                let Some(name) = object.key() else { continue };
                let Some(rel) = name.strip_prefix(&base) else {
                    continue;
                };
                // Objects that are not walvault keys (someone else's files
                // under the prefix) are skipped, never misread.
                let Ok(key) = Key::new(rel) else { continue };
                each(ObjectMeta {
                    key,
                    size_bytes: object.size().unwrap_or(0).max(0) as u64,
                    modified_unix_secs: object.last_modified().map(|t| t.secs()).unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let (_, full_prefix) = self.listing_prefix(prefix);
        let list_key = Key(full_prefix.clone());
        let mut out = Vec::new();
        let mut pages = self.list_pages(&full_prefix, Some("/")).send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("list", &list_key, e))?;
            for common in page.common_prefixes() {
                let Some(name) = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(&full_prefix))
                    .and_then(|p| p.strip_suffix('/'))
                else {
                    continue;
                };
                if Key::new(format!("{prefix}{name}")).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        match self
            .client()
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(self.object_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err("delete", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn use_create_only(&self, mode: CreateOnly) {
        self.head_check.store(
            mode == CreateOnly::HeadCheck,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn probe_features(&self) -> Vec<super::selftest::Finding> {
        use super::selftest::{Finding, Verdict};
        let mut out = Vec::new();
        let s = &self.settings;
        out.push(Finding::new(
            "URL style",
            Verdict::Info,
            if s.path_style {
                format!("path style (s3_path_style = true): {}/{}", s.endpoint.as_deref().unwrap_or("https://s3.amazonaws.com"), s.bucket)
            } else {
                format!("virtual-host style: https://{}.<endpoint>; set s3_path_style = true for servers that need path style", s.bucket)
            },
        ));
        // Ranged reads as the server answers them, before walvault cuts.
        let key = format!(
            "{}probe/range-{}",
            if s.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", s.prefix)
            },
            std::process::id()
        );
        let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let put = self
            .client()
            .put_object()
            .bucket(&s.bucket)
            .key(&key)
            .body(ByteStream::from(body.clone()))
            .send()
            .await;
        if put.is_ok() {
            let got = self
                .client()
                .get_object()
                .bucket(&s.bucket)
                .key(&key)
                .range("bytes=100-199")
                .send()
                .await;
            out.push(match got {
                Ok(o) => match o.body.collect().await.map(|b| b.into_bytes()) {
                    Ok(b) if b.len() == 100 && b[..] == body[100..200] => {
                        Finding::new("range requests", Verdict::Pass, "the server sends the range asked for")
                    }
                    Ok(b) => Finding::new(
                        "range requests",
                        Verdict::Warn,
                        format!("the server ignored a range of 100 bytes and sent {}: walvault cuts it, but reads of block maps cost whole objects", b.len()),
                    ),
                    Err(e) => Finding::new("range requests", Verdict::Fail, e.to_string()),
                },
                Err(e) => Finding::new("range requests", Verdict::Fail, e.to_string()),
            });
            let _ = self
                .client()
                .delete_object()
                .bucket(&s.bucket)
                .key(&key)
                .send()
                .await;
        }
        let versioning = self
            .client()
            .get_bucket_versioning()
            .bucket(&s.bucket)
            .send()
            .await;
        out.push(match versioning {
            Ok(v) => match v.status() {
                Some(status) => Finding::new(
                    "versioning",
                    Verdict::Info,
                    format!("{}: deleted objects stay as old versions until a lifecycle rule removes them, so expire frees no space without one", status.as_str()),
                ),
                None => Finding::new("versioning", Verdict::Info, "off"),
            },
            Err(e) => Finding::new(
                "versioning",
                Verdict::Info,
                format!("unknown: the server did not say ({})", http_status(&e).map(|c| c.to_string()).unwrap_or_else(|| "no answer".to_string())),
            ),
        });
        let lock = self
            .client()
            .get_object_lock_configuration()
            .bucket(&s.bucket)
            .send()
            .await;
        out.push(match lock {
            Ok(l) => Finding::new(
                "object lock",
                Verdict::Info,
                format!(
                    "{}: locked objects cannot be deleted until their retention ends, so expire fails on them",
                    l.object_lock_configuration()
                        .and_then(|c| c.object_lock_enabled())
                        .map(|e| e.as_str().to_string())
                        .unwrap_or_else(|| "configured".to_string())
                ),
            ),
            Err(e) => Finding::new(
                "object lock",
                Verdict::Info,
                format!("off or unknown (the server answered {})", http_status(&e).map(|c| c.to_string()).unwrap_or_else(|| "nothing".to_string())),
            ),
        });
        out
    }

    async fn probe_create_only(&self) -> Result<CreateOnlyProbe> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let key = Key::new(format!("probe/create-only-{}-{n}", std::process::id()))?;
        let object_key = self.object_key(&key);
        let status_of = http_status;
        let single = |body: &'static [u8]| {
            self.client()
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&object_key)
                .if_none_match("*")
                .body(ByteStream::from_static(body))
                .send()
        };
        let cleanup = || async {
            let _ = self.delete(&key).await;
        };
        // 1. The first create must succeed (with the header, or without it
        // where the server does not implement it).
        let first = single(b"walvault create-only probe 1").await;
        if let Err(e) = &first {
            if status_of(e) != Some(501) {
                let err = map_err("probe", &key, first.unwrap_err());
                cleanup().await;
                return Err(err);
            }
            self.client()
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&object_key)
                .body(ByteStream::from_static(b"walvault create-only probe 1"))
                .send()
                .await
                .map_err(|e| map_err("probe", &key, e))?;
        }
        // 2. A second single-PUT create of the same key.
        let put = match single(b"walvault create-only probe 2").await {
            Err(e) if status_of(&e) == Some(412) => "refused the second create (honoured)",
            Err(e) if status_of(&e) == Some(501) => "answered 501 (not implemented)",
            Ok(_) => "overwrote the object (ignored)",
            Err(e) => {
                let err = map_err("probe", &key, e);
                cleanup().await;
                return Err(err);
            }
        };
        // 3. A multipart create of the same key.
        let multipart = match self.probe_multipart(&object_key).await {
            Ok(found) => found,
            Err(e) => {
                cleanup().await;
                return Err(e);
            }
        };
        cleanup().await;
        let honoured = |s: &str| s.ends_with("(honoured)");
        Ok(CreateOnlyProbe {
            mode: if honoured(put) && honoured(multipart) {
                CreateOnly::Atomic
            } else {
                CreateOnly::HeadCheck
            },
            put: put.to_string(),
            multipart: multipart.to_string(),
        })
    }

    async fn remove_abandoned(&self, min_age: Duration, key_prefixes: &[&str]) -> Result<usize> {
        let prefix = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        };
        let cutoff = std::time::SystemTime::now()
            .checked_sub(min_age)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut removed = 0;
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = self
                .client()
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                // Servers without ListMultipartUploads: nothing to find
                // here; a bucket lifecycle rule has to do it.
                Err(e) if http_status(&e) == Some(501) => {
                    tracing::warn!(repo = %self.describe(), "this S3 server cannot list multipart uploads, so walvault cannot abort those a killed process left; add a lifecycle rule (AbortIncompleteMultipartUpload) to the bucket");
                    return Ok(removed);
                }
                Err(e) => {
                    return Err(map_err(
                        "list",
                        &Key::new("multipart").expect("valid key"),
                        e,
                    ))
                }
            };
            for upload in page.uploads() {
                let started = upload
                    .initiated()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok());
                let (Some(key), Some(id), Some(started)) =
                    (upload.key(), upload.upload_id(), started)
                else {
                    continue;
                };
                // Only the repository's own keys: the bucket may hold
                // other applications' uploads.
                let rest = key.strip_prefix(&prefix).unwrap_or("");
                let ours = key_prefixes.iter().any(|p| rest.starts_with(p));
                if started > cutoff || !ours {
                    continue;
                }
                let aborted = self
                    .client()
                    .abort_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
                if aborted.is_ok() {
                    removed += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(removed);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_marker.is_none() {
                return Ok(removed);
            }
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "s3 \"s3://{}/{}\"",
            self.settings.bucket, self.settings.prefix
        );
        if let Some(endpoint) = &self.settings.endpoint {
            s.push_str(&format!(" at {endpoint}"));
        }
        s
    }
}

type PartTask = JoinHandle<Result<CompletedPart>>;

struct S3Writer {
    store: S3Store,
    key: Key,
    object_key: String,
    mode: PutMode,
    buf: BytesMut,
    upload_id: Option<String>,
    in_flight: VecDeque<PartTask>,
    done_parts: Vec<CompletedPart>,
    next_part: i32,
}

impl S3Writer {
    fn client(&self) -> &Client {
        self.store.client()
    }

    fn bucket(&self) -> &str {
        &self.store.settings.bucket
    }

    async fn start_multipart(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let out = self
            .client()
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(&self.object_key)
            .send()
            .await
            .map_err(|e| map_err("start multipart upload", &self.key, e))?;
        let id = out
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Remote {
                op: "start multipart upload",
                key: self.key.to_string(),
                message: "the server returned no upload id".to_string(),
                transient: false,
            })?;
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    async fn send_part(&mut self, data: Bytes) -> Result<()> {
        let upload_id = self.start_multipart().await?;
        while self.in_flight.len() >= self.store.settings.parts_in_flight.max(1) {
            self.finish_oldest_part().await?;
        }
        let part_number = self.next_part;
        self.next_part += 1;
        let client = self.client().clone();
        let bucket = self.bucket().to_string();
        let object_key = self.object_key.clone();
        let key = self.key.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(object_key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| map_err("upload part", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    async fn finish_oldest_part(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            let part = task.await.map_err(|e| StorageError::Remote {
                op: "upload part",
                key: self.key.to_string(),
                message: e.to_string(),
                transient: false,
            })??;
            self.done_parts.push(part);
        }
        Ok(())
    }

    async fn abort_upload(&mut self) {
        for task in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(id) = self.upload_id.take() {
            let _ = self
                .client()
                .abort_multipart_upload()
                .bucket(self.bucket())
                .key(&self.object_key)
                .upload_id(id)
                .send()
                .await;
        }
    }

    /// The fallback for servers without conditional writes: not atomic
    /// against a concurrent writer, but never overwrites what it can see.
    async fn exists(&self) -> Result<bool> {
        match self.store.head(&self.key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn head_check(&self) -> bool {
        self.store
            .head_check
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn put_single(&mut self, data: Bytes) -> Result<()> {
        let create = self.mode.is_create();
        let request = |conditional: bool| {
            let mut req = self
                .client()
                .put_object()
                .bucket(self.bucket())
                .key(&self.object_key)
                .body(ByteStream::from(data.clone()));
            if conditional {
                req = req.if_none_match("*");
            }
            req
        };
        if create && self.head_check() {
            if self.exists().await? {
                return Err(StorageError::AlreadyExists {
                    key: self.key.clone(),
                });
            }
            let out = request(true).send().await.or_else(|e| {
                match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(501) => Err(None),
                    _ => Err(Some(e)),
                }
            });
            let etag = match out {
                Ok(out) => out.e_tag().map(str::to_string),
                Err(Some(e)) => return Err(map_err("put", &self.key, e)),
                Err(None) => request(false)
                    .send()
                    .await
                    .map_err(|e| map_err("put", &self.key, e))?
                    .e_tag()
                    .map(str::to_string),
            };
            return self.check_still_ours(etag).await;
        }
        match request(create).send().await {
            Ok(_) => Ok(()),
            Err(e) if create && e.raw_response().map(|r| r.status().as_u16()) == Some(501) => {
                if self.exists().await? {
                    return Err(StorageError::AlreadyExists {
                        key: self.key.clone(),
                    });
                }
                request(false)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| map_err("put", &self.key, e))
            }
            // A server may refuse a create-only PUT as soon as it has read
            // the headers and close the connection while the body is still
            // being sent (s3s-fs does): the client sees a broken pipe, not
            // the 412. If the key now holds an object, that is what the
            // failure was; the caller compares what is stored (a push) or
            // fails (a backup). Nothing was overwritten either way.
            Err(e) if create && e.raw_response().is_none() => {
                if self.exists().await? {
                    return Err(StorageError::AlreadyExists {
                        key: self.key.clone(),
                    });
                }
                Err(map_err("put", &self.key, e))
            }
            Err(e) => Err(map_err("put", &self.key, e)),
        }
    }

    /// The head-check fallback's second half: the object under the key is
    /// the one this writer just stored (same ETag), or a concurrent writer
    /// replaced it, which is reported as the key already existing.
    async fn check_still_ours(&self, etag: Option<String>) -> Result<()> {
        let Some(etag) = etag else {
            return Ok(());
        };
        let head = self
            .client()
            .head_object()
            .bucket(self.bucket())
            .key(&self.object_key)
            .send()
            .await
            .map_err(|e| map_err("head", &self.key, e))?;
        let norm = |e: &str| e.trim().trim_matches('"').to_ascii_lowercase();
        if head.e_tag().map(norm) == Some(norm(&etag)) {
            Ok(())
        } else {
            Err(StorageError::AlreadyExists {
                key: self.key.clone(),
            })
        }
    }

    async fn complete(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let last = self.buf.split().freeze();
            self.send_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.finish_oldest_part().await?;
        }
        let upload_id = self.start_multipart().await?;
        let create = self.mode.is_create();
        // Servers that ignore If-None-Match on completion would overwrite:
        // refuse what we can see first.
        if create && self.exists().await? {
            return Err(StorageError::AlreadyExists {
                key: self.key.clone(),
            });
        }
        let mut parts = std::mem::take(&mut self.done_parts);
        parts.sort_by_key(|p| p.part_number());
        let mut req = self
            .client()
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(&self.object_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if create {
            req = req.if_none_match("*");
        }
        let head_check = self.head_check();
        match req.clone().send().await {
            Ok(out) if create && head_check => {
                self.upload_id = None;
                return self.check_still_ours(out.e_tag().map(str::to_string)).await;
            }
            Ok(_) => {}
            // No conditional completion on this server: the HEAD above is
            // the documented fallback (not atomic against a racing writer).
            Err(e) if create && e.raw_response().map(|r| r.status().as_u16()) == Some(501) => {
                let out = req
                    .set_if_none_match(None)
                    .send()
                    .await
                    .map_err(|e| map_err("complete multipart upload", &self.key, e))?;
                if head_check {
                    self.upload_id = None;
                    return self.check_still_ours(out.e_tag().map(str::to_string)).await;
                }
            }
            Err(e) => return Err(map_err("complete multipart upload", &self.key, e)),
        }
        self.upload_id = None;
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&chunk);
        // Copied: the chunk's buffer can go back to its owner (the spare
        // output buffers) before the part is sent.
        drop(chunk);
        let part_size = self.store.settings.part_size_bytes;
        if self.upload_id.is_none() && self.buf.len() <= self.store.settings.single_put_max_bytes {
            // Still small enough for one PutObject at commit.
            return Ok(());
        }
        while self.buf.len() >= part_size {
            let part = self.buf.split_to(part_size).freeze();
            if let Err(e) = self.send_part(part).await {
                self.abort_upload().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let result = if self.upload_id.is_none() && self.in_flight.is_empty() {
            let data = self.buf.split().freeze();
            self.put_single(data).await
        } else {
            self.complete().await
        };
        if result.is_err() {
            self.abort_upload().await;
        }
        result
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }

    fn held_bytes(&self) -> Option<usize> {
        // Parts in flight are at most a part each.
        Some(self.buf.len() + self.in_flight.len() * self.store.settings.part_size_bytes)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // An upload dropped mid-way: abort it in the background so the parts
        // do not linger (a bucket lifecycle rule catches what this misses).
        for task in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(id) = self.upload_id.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let req = self
                    .client()
                    .abort_multipart_upload()
                    .bucket(self.bucket())
                    .key(&self.object_key)
                    .upload_id(id);
                handle.spawn(async move {
                    let _ = req.send().await;
                });
            }
        }
    }
}

/// The least an IAM policy must allow walvault on this repository (the
/// bucket and, under it, the prefix).
pub fn plan_iam_policy(s: &S3Settings) -> String {
    let objects = if s.prefix.is_empty() {
        format!("arn:aws:s3:::{}/*", s.bucket)
    } else {
        format!("arn:aws:s3:::{}/{}/*", s.bucket, s.prefix)
    };
    let list_condition = if s.prefix.is_empty() {
        String::new()
    } else {
        format!(
            ",\n      \"Condition\": {{\"StringLike\": {{\"s3:prefix\": [\"{}/*\"]}}}}",
            s.prefix
        )
    };
    format!(
        "{{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n    {{\n      \"Effect\": \"Allow\",\n      \"Action\": [\"s3:ListBucket\"],\n      \"Resource\": \"arn:aws:s3:::{bucket}\"{list_condition}\n    }},\n    {{\n      \"Effect\": \"Allow\",\n      \"Action\": [\"s3:ListBucketMultipartUploads\"],\n      \"Resource\": \"arn:aws:s3:::{bucket}\"\n    }},\n    {{\n      \"Effect\": \"Allow\",\n      \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\", \"s3:AbortMultipartUpload\", \"s3:ListMultipartUploadParts\"],\n      \"Resource\": \"{objects}\"\n    }}\n  ]\n}}",
        bucket = s.bucket
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening a store builds no client: building one loads the system's
    /// certificate store, which the asynchronous push's fast answer (its
    /// file already stored) must not pay for.
    #[test]
    fn the_client_is_built_on_first_use() {
        let store = S3Store::new(S3Settings::from_url("s3://b/p").unwrap()).unwrap();
        assert!(store.client.get().is_none());
        assert!(
            store.describe().contains("s3://b/p"),
            "{}",
            store.describe()
        );
        assert!(store.client.get().is_none());
        // A clone made before first use (a writer's) shares the client.
        let clone = store.clone();
        let _ = clone.client();
        assert!(store.client.get().is_some());
    }

    /// Plain HTTP loads no certificates; the variables keep their
    /// meaning; otherwise the system's bundle alone, and the whole native
    /// store where there is no known bundle.
    #[test]
    fn trust_is_planned_from_the_endpoint_the_variables_and_the_bundle() {
        let debian = |p: &str| p == "/etc/ssl/certs/ca-certificates.crt";
        let redhat = |p: &str| p == "/etc/pki/tls/certs/ca-bundle.crt";
        let none = |_: &str| false;
        let plan = |endpoint, env_set, proxied, exists: &dyn Fn(&str) -> bool| {
            plan_trust(endpoint, env_set, proxied, exists)
        };
        assert_eq!(
            plan(Some("http://127.0.0.1:9000"), true, false, &debian),
            Trust::Nothing
        );
        assert_eq!(
            plan(Some("HTTP://minio:9000"), false, false, &debian),
            Trust::Nothing
        );
        // A proxy may speak TLS itself.
        assert_eq!(
            plan(Some("http://minio:9000"), false, true, &debian),
            Trust::Bundle("/etc/ssl/certs/ca-certificates.crt")
        );
        assert_eq!(
            plan(Some("https://minio:9000"), true, false, &debian),
            Trust::Native
        );
        assert_eq!(
            plan(Some("https://minio:9000"), false, false, &debian),
            Trust::Bundle("/etc/ssl/certs/ca-certificates.crt")
        );
        assert_eq!(
            plan(None, false, false, &redhat),
            Trust::Bundle("/etc/pki/tls/certs/ca-bundle.crt")
        );
        assert_eq!(plan(None, false, false, &none), Trust::Native);
        assert_eq!(
            plan(Some("httpx://odd"), false, false, &none),
            Trust::Native
        );
    }

    /// The bundle is handed over only when the client can take all of it.
    #[test]
    fn only_a_clean_bundle_is_handed_over() {
        let system = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
            .expect("Debian's bundle (package ca-certificates)");
        assert!(bundle_is_clean(&system));
        assert!(!bundle_is_clean(b""));
        // A local CA appended with a damaged body.
        let mut damaged = system.clone();
        damaged.extend_from_slice(
            b"-----BEGIN CERTIFICATE-----\nMIIBnotbase64!!\n-----END CERTIFICATE-----\n",
        );
        assert!(!bundle_is_clean(&damaged));
        // Well-formed base64 that is no certificate.
        let mut not_a_cert = system;
        not_a_cert.extend_from_slice(
            b"-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(!bundle_is_clean(&not_a_cert));
    }

    /// The attempt backstop grows with the largest request, so a slow
    /// but moving single PUT is never cut sooner than a part was.
    #[test]
    fn the_attempt_backstop_covers_the_largest_request() {
        let mut s = S3Settings::from_url("s3://b/p").unwrap();
        assert_eq!(s.attempt_timeout(), Duration::from_secs(20 * 15 * 4));
        s.single_put_max_bytes = 5 << 20;
        assert_eq!(s.attempt_timeout(), Duration::from_secs(20 * 15));
        s.part_size_bytes = 20 << 20;
        assert_eq!(s.attempt_timeout(), Duration::from_secs(20 * 15 * 3));
    }
}
