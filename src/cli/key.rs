//! `walvault key rotate`: wraps the repository's data key with a new
//! secret. The data is not re-encrypted: whoever held the old secret and
//! a copy of the old header (or the data key itself) can still read
//! everything; rotation protects against an old secret leaking later,
//! once the old header is gone.

use crate::exit::Exit;
use crate::repo::keys::{self, SecretSource};
use crate::storage::{PutMode, StorageError};

use super::logging::report_error;
use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Wrap the data key with a new secret (the configured secret opens it
    /// first). The new passphrase comes from WALVAULT_NEW_ENCRYPTION_PASSPHRASE,
    /// never from the command line.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The new secret is a key file (at least 32 random bytes, mode 600)
    #[arg(long, value_name = "FILE", conflicts_with = "new_key_command")]
    pub new_key_file: Option<std::path::PathBuf>,
    /// The new secret is printed by this command (a secret manager)
    #[arg(long, value_name = "COMMAND")]
    pub new_key_command: Option<String>,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &KeyArgs) -> Exit {
    let KeyCommand::Rotate(rotate) = &args.command;
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let new = match (&rotate.new_key_file, &rotate.new_key_command) {
        (Some(f), _) => SecretSource::KeyFile(f.clone()),
        (None, Some(c)) => SecretSource::Command(c.clone()),
        (None, None) => match std::env::var("WALVAULT_NEW_ENCRYPTION_PASSPHRASE") {
            Ok(p) if !p.is_empty() => SecretSource::Passphrase(zeroize::Zeroizing::new(p)),
            _ => {
                report_error(program, &"no new secret given\nHINT: pass --new-key-file FILE or --new-key-command CMD, or set WALVAULT_NEW_ENCRYPTION_PASSPHRASE");
                return Exit::Usage;
            }
        },
    };
    let Some(old) = settings.encryption.clone() else {
        report_error(program, &"no current key is configured\nHINT: configure the secret the repository was initialized (or last rotated) with");
        return Exit::Key;
    };
    let mut header = match repo.require_header().await {
        Ok(h) => h,
        Err(e) => {
            report_error(program, &e);
            return super::wal::repo_exit(&e);
        }
    };
    let Some(enc) = header.encryption.clone() else {
        report_error(
            program,
            &format!(
                "repository {} is not encrypted; there is no key to rotate",
                repo.describe()
            ),
        );
        return Exit::Key;
    };
    let describe = repo.describe();
    let rotated = match tokio::task::spawn_blocking(move || {
        keys::rotate(&enc, &old, &new, &describe)
    })
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            report_error(program, &e);
            return match e {
                StorageError::Key(_) => Exit::Key,
                _ => Exit::Failed,
            };
        }
        Err(e) => {
            report_error(program, &format!("key rotation failed: {e}"));
            return Exit::Failed;
        }
    };
    header.encryption = Some(rotated.clone());
    let mut json = serde_json::to_vec_pretty(&header).expect("header serializes");
    json.push(b'\n');
    // One atomic put: the header holds the old wrapping or the new one.
    if let Err(e) = repo
        .store()
        .put_bytes(
            &crate::repo::layout::header_key(),
            bytes::Bytes::from(json),
            PutMode::Overwrite,
        )
        .await
    {
        report_error(program, &e);
        return Exit::Storage;
    }
    // Read back: the header now opens with the new secret (a concurrent
    // header rewrite, such as `check --storage`, would show here).
    let check = match repo.require_header().await {
        Ok(h) => h.encryption,
        Err(e) => {
            report_error(program, &e);
            return super::wal::repo_exit(&e);
        }
    };
    if check.as_ref() != Some(&rotated) {
        report_error(program, &"the repository header changed while the key was rotated (another walvault rewrote it); nothing is lost, as the old or the new secret opens it\nHINT: run walvault key rotate again, and keep the old secret until it succeeds");
        return Exit::Failed;
    }
    println!(
        "rotated: repository {} now opens with the new {}; configure it everywhere walvault runs (archive_command, restore_command, timers) before the old one is removed",
        repo.describe(),
        rotated.secret
    );
    Exit::Ok
}
