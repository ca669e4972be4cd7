//! Encryption keys of a repository (see [`crate::storage::crypt`]).
//!
//! `walvault init` with a secret configured makes a random 32-byte data
//! key and stores it in the repository header wrapped (XChaCha20-Poly1305)
//! by a key-encryption key derived from the secret:
//!
//! - a passphrase (`encryption_passphrase`, or `WALVAULT_ENCRYPTION_PASSPHRASE`)
//!   through Argon2id (19 MiB, 2 passes, 1 lane, 16-byte random salt), the
//!   OWASP minimum: about 35 ms per walvault process on the benchmark
//!   machine;
//! - a key file (`encryption_key_file`) or the output of a command
//!   (`encryption_key_command`, for a secret manager), which must hold at
//!   least 32 bytes of random data, through BLAKE3's key derivation (no
//!   stretching: a key is not a password).
//!
//! The header never holds the data key in the clear, nor the secret.
//! `walvault key rotate` wraps the same data key with a new secret.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::storage::crypt::{DataKey, KeyProvider};
use crate::storage::StorageError;

pub const CIPHER: &str = "xchacha20poly1305-stream-64k";
const WRAP_AAD: &[u8] = b"walvault data key, version 1";
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;
const KEY_CONTEXT: &str = "walvault 2026-12-01 key-encryption key from a key file or command";
/// Shortest key file or command output accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// Where the user's secret comes from.
#[derive(Clone)]
pub enum SecretSource {
    Passphrase(Zeroizing<String>),
    KeyFile(PathBuf),
    Command(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Passphrase(_) => f.write_str("Passphrase(..)"),
            SecretSource::KeyFile(p) => write!(f, "KeyFile({})", p.display()),
            SecretSource::Command(_) => f.write_str("Command(..)"),
        }
    }
}

impl SecretSource {
    fn kind(&self) -> &'static str {
        match self {
            SecretSource::Passphrase(_) => "passphrase",
            _ => "key",
        }
    }

    fn describe(&self) -> String {
        match self {
            SecretSource::Passphrase(_) => "the configured passphrase".to_string(),
            SecretSource::KeyFile(p) => format!("key file \"{}\"", p.display()),
            SecretSource::Command(_) => "the output of encryption_key_command".to_string(),
        }
    }

    /// The secret's bytes.
    fn read(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        match self {
            SecretSource::Passphrase(p) => {
                if p.is_empty() {
                    return Err("the encryption passphrase is empty".to_string());
                }
                Ok(Zeroizing::new(p.as_bytes().to_vec()))
            }
            SecretSource::KeyFile(path) => {
                check_private(path)?;
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
                    format!("read encryption key file \"{}\": {e}", path.display())
                })?);
                long_enough(trim_newline(bytes), &self.describe())
            }
            SecretSource::Command(cmd) => {
                let out = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| format!("run encryption_key_command: {e}"))?;
                if !out.status.success() {
                    return Err(format!("encryption_key_command failed ({})", out.status));
                }
                long_enough(trim_newline(Zeroizing::new(out.stdout)), &self.describe())
            }
        }
    }
}

fn trim_newline(mut bytes: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

fn long_enough(bytes: Zeroizing<Vec<u8>>, what: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{what} holds {} bytes; a key needs at least {MIN_KEY_BYTES} bytes of random data\nHINT: make one with: head -c 32 /dev/urandom | base64 > KEYFILE; chmod 600 KEYFILE",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Refuses a secret file that the group or others may read.
pub fn check_private(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("\"{}\": {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "\"{}\" holds a secret but its mode is {mode:03o}, readable beyond its owner\nHINT: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// The `encryption` block of the repository header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionHeader {
    /// [`CIPHER`].
    pub cipher: String,
    /// "passphrase" (Argon2id) or "key" (key file or command, BLAKE3).
    pub secret: String,
    /// Argon2id's memory (KiB), passes and lanes, for a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2id: Option<[u32; 3]>,
    /// Hex, 16 bytes.
    pub salt: String,
    /// Hex: the 24-byte nonce, then the sealed 32-byte data key and tag.
    pub wrapped_key: String,
}

fn key_error(msg: String) -> StorageError {
    StorageError::Key(msg)
}

fn random<const N: usize>() -> Result<[u8; N], StorageError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| StorageError::Config(format!("no random numbers: {e}")))?;
    Ok(b)
}

fn derive_kek(
    source: &SecretSource,
    secret: &[u8],
    salt: &[u8],
    argon: Option<[u32; 3]>,
) -> Result<Zeroizing<[u8; 32]>, StorageError> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match source {
        SecretSource::Passphrase(_) => {
            let [m, t, p] = argon.unwrap_or([ARGON2_M_KIB, ARGON2_T, ARGON2_P]);
            // The header is not trusted to set the cost: a huge one would
            // stop every archive_command, a tiny one is not ours.
            if !(ARGON2_M_KIB..=1 << 20).contains(&m)
                || !(ARGON2_T..=16).contains(&t)
                || !(1..=16).contains(&p)
            {
                return Err(key_error(format!(
                    "the repository header asks for Argon2id with {m} KiB, {t} passes and {p} lanes, outside what walvault accepts ({ARGON2_M_KIB} KiB to 1 GiB, {ARGON2_T} to 16 passes, 1 to 16 lanes)"
                )));
            }
            let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| {
                key_error(format!("invalid Argon2id parameters in the header: {e}"))
            })?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(secret, salt, &mut kek[..])
                .map_err(|e| key_error(format!("derive the key from the passphrase: {e}")))?;
        }
        _ => {
            let mut material = Zeroizing::new(salt.to_vec());
            material.extend_from_slice(secret);
            *kek = blake3::derive_key(KEY_CONTEXT, &material);
        }
    }
    Ok(kek)
}

/// A new data key, wrapped by `source`'s secret.
pub fn new_encryption(source: &SecretSource) -> Result<EncryptionHeader, StorageError> {
    let data_key = Zeroizing::new(random::<32>()?);
    wrap(source, &data_key)
}

fn wrap(source: &SecretSource, data_key: &[u8; 32]) -> Result<EncryptionHeader, StorageError> {
    let secret = source.read().map_err(key_error)?;
    let salt = random::<16>()?;
    let argon =
        matches!(source, SecretSource::Passphrase(_)).then_some([ARGON2_M_KIB, ARGON2_T, ARGON2_P]);
    let kek = derive_kek(source, &secret, &salt, argon)?;
    let nonce = random::<24>()?;
    let sealed = XChaCha20Poly1305::new((&*kek).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: data_key,
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| key_error("wrap the data key".to_string()))?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&sealed);
    Ok(EncryptionHeader {
        cipher: CIPHER.to_string(),
        secret: source.kind().to_string(),
        argon2id: argon,
        salt: hex::encode(salt),
        wrapped_key: hex::encode(wrapped),
    })
}

/// Unwraps the data key of `header` with `source`'s secret.
pub fn unwrap(
    header: &EncryptionHeader,
    source: &SecretSource,
    repo: &str,
) -> Result<DataKey, StorageError> {
    if header.cipher != CIPHER {
        return Err(StorageError::Config(format!(
            "repository {repo} uses cipher \"{}\", which this walvault does not know\nHINT: upgrade walvault",
            header.cipher
        )));
    }
    if header.secret != source.kind() {
        let wants = if header.secret == "passphrase" {
            "encryption_passphrase (or WALVAULT_ENCRYPTION_PASSPHRASE)"
        } else {
            "encryption_key_file or encryption_key_command"
        };
        return Err(key_error(format!(
            "repository {repo} is encrypted with a {}, but {} is configured\nHINT: set {wants}",
            header.secret,
            source.describe()
        )));
    }
    let secret = source.read().map_err(key_error)?;
    let bad = |what: &str| {
        key_error(format!(
            "the repository header's encryption block is damaged: {what}"
        ))
    };
    let salt = hex::decode(&header.salt).map_err(|_| bad("salt"))?;
    let wrapped = hex::decode(&header.wrapped_key).map_err(|_| bad("wrapped_key"))?;
    if wrapped.len() != 24 + 32 + 16 {
        return Err(bad("wrapped_key length"));
    }
    let kek = derive_kek(source, &secret, &salt, header.argon2id)?;
    let opened = XChaCha20Poly1305::new((&*kek).into())
        .decrypt(
            XNonce::from_slice(&wrapped[..24]),
            Payload {
                msg: &wrapped[24..],
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| {
            key_error(format!(
                "{} does not open repository {repo}: wrong passphrase or key\nHINT: configure the secret this repository was initialized (or last rotated) with",
                source.describe()
            ))
        })?;
    let opened = Zeroizing::new(opened);
    let mut key = [0u8; 32];
    key.copy_from_slice(&opened);
    Ok(DataKey(key))
}

/// Re-wraps the data key of `header` (opened with `old`) with `new`.
pub fn rotate(
    header: &EncryptionHeader,
    old: &SecretSource,
    new: &SecretSource,
    repo: &str,
) -> Result<EncryptionHeader, StorageError> {
    let key = unwrap(header, old, repo)?;
    wrap(new, &key.0)
}

/// The data key of a repository, found from its header with the
/// configured secret.
#[derive(Debug)]
pub struct RepoKeys {
    pub source: Option<SecretSource>,
    pub repo: String,
}

#[async_trait]
impl KeyProvider for RepoKeys {
    async fn data_key(&self, header: Option<&[u8]>) -> Result<Option<DataKey>, StorageError> {
        let Some(header) = header else {
            // No header: a plain repository before `init` may be read as
            // one, never with a key configured (a deleted header must not
            // turn an encrypted repository into a plain one).
            return match &self.source {
                None => Ok(None),
                Some(_) => Err(key_error(format!(
                    "repository {} has no header (repository.json), but an encryption key is configured: refusing to read or write it unencrypted\nHINT: run walvault init for a new repository, or check the path, bucket and prefix",
                    self.repo
                ))),
            };
        };
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            encryption: Option<EncryptionHeader>,
        }
        // An unreadable header is never taken for a plain one.
        let probe = serde_json::from_slice::<Probe>(header).map_err(|e| StorageError::Corrupt {
            key: "repository.json".to_string(),
            reason: format!("the header's encryption block cannot be read: {e}"),
        })?;
        match (probe.encryption, &self.source) {
            (None, None) => Ok(None),
            (None, Some(source)) => Err(key_error(format!(
                "repository {} is not encrypted, but {} is configured\nHINT: remove the encryption setting for this repository, or initialize a new, encrypted one",
                self.repo,
                source.describe()
            ))),
            (Some(_), None) => Err(key_error(format!(
                "repository {} is encrypted and no key is configured\nHINT: set encryption_passphrase (or WALVAULT_ENCRYPTION_PASSPHRASE), encryption_key_file or encryption_key_command",
                self.repo
            ))),
            (Some(enc), Some(source)) => {
                let (enc, source, repo) = (enc, source.clone(), self.repo.clone());
                // Argon2id takes tens of milliseconds of CPU.
                tokio::task::spawn_blocking(move || unwrap(&enc, &source, &repo))
                    .await
                    .map_err(|e| key_error(format!("key derivation failed: {e}")))?
                    .map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(p: &str) -> SecretSource {
        SecretSource::Passphrase(Zeroizing::new(p.to_string()))
    }

    #[tokio::test]
    async fn headers_decide_and_are_not_trusted() {
        let keyed = RepoKeys {
            source: Some(pass("correct horse")),
            repo: "r".into(),
        };
        let plain = RepoKeys {
            source: None,
            repo: "r".into(),
        };
        assert!(
            keyed.data_key(None).await.is_err(),
            "no header with a key: refused"
        );
        assert!(plain.data_key(None).await.unwrap().is_none());
        assert!(keyed.data_key(Some(b"{not json")).await.is_err());
        let mut enc = new_encryption(&pass("correct horse")).unwrap();
        let header = serde_json::json!({ "format": "walvault", "encryption": enc }).to_string();
        assert!(keyed
            .data_key(Some(header.as_bytes()))
            .await
            .unwrap()
            .is_some());
        assert!(
            plain.data_key(Some(header.as_bytes())).await.is_err(),
            "encrypted, no key"
        );
        enc.argon2id = Some([u32::MAX, u32::MAX, 1]);
        let huge = serde_json::json!({ "encryption": enc }).to_string();
        let err = keyed.data_key(Some(huge.as_bytes())).await.unwrap_err();
        assert!(
            err.to_string().contains("outside what walvault accepts"),
            "{err}"
        );
    }

    #[test]
    fn wrap_unwrap_and_rotate() {
        let header = new_encryption(&pass("correct horse")).unwrap();
        let json = serde_json::to_string(&header).unwrap();
        assert!(!json.contains("correct horse"));
        let key = unwrap(&header, &pass("correct horse"), "r").unwrap();
        let err = unwrap(&header, &pass("zq-not-the-one"), "r").unwrap_err();
        assert!(matches!(err, StorageError::Key(_)), "{err}");
        assert!(
            !err.to_string().contains("zq-not"),
            "no secret in errors: {err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef0123\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key_file = SecretSource::KeyFile(file.clone());
        let err = rotate(&header, &pass("correct horse"), &key_file, "r").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let rotated = rotate(&header, &pass("correct horse"), &key_file, "r").unwrap();
        assert_eq!(
            unwrap(&rotated, &key_file, "r").unwrap().0,
            key.0,
            "same data key"
        );
        assert!(
            unwrap(&rotated, &pass("correct horse"), "r").is_err(),
            "the old secret no longer opens it"
        );
        std::fs::write(&file, "short").unwrap();
        assert!(unwrap(&rotated, &key_file, "r")
            .unwrap_err()
            .to_string()
            .contains("at least 32"));
        let cmd = SecretSource::Command(format!("cat {}", dir.path().join("missing").display()));
        assert!(unwrap(&rotated, &cmd, "r").is_err());
    }
}
