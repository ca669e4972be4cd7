//! `walvault init --pgdata DIR`: the one command that creates a repository.
//!
//! It reads the cluster's identity (system identifier, WAL segment size,
//! major version) from `global/pg_control` and `PG_VERSION`, so it works
//! whether the cluster runs or not, and writes the repository header,
//! create-only. Run again for the same cluster it changes nothing and
//! succeeds; for another cluster it fails. Every other command refuses a
//! repository without a header.

use std::path::PathBuf;

use crate::config::{GlobalArgs, RepoLocation};
use crate::exit::Exit;
use crate::pg::control::read_control;

use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The cluster's data directory (the cluster may be running or stopped)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub pgdata: PathBuf,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &InitArgs) -> Exit {
    let settings = match super::settings(program, global) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let facts = match read_control(&args.pgdata) {
        Ok(f) => f,
        Err(e) => {
            report_error(program, &e);
            return Exit::BadInput;
        }
    };
    // Every configured repository, unless --repo-index names one.
    let indexes: Vec<usize> = match global.repo_index {
        Some(i) => vec![i],
        None => settings.repos.iter().map(|r| r.index).collect(),
    };
    for index in indexes {
        let one = settings.select(index).expect("a configured index");
        let code = init_one(program, &one, &facts, args).await;
        if code != Exit::Ok {
            return code;
        }
    }
    Exit::Ok
}

async fn init_one(
    program: &str,
    settings: &crate::config::Settings,
    facts: &crate::pg::control::ControlFacts,
    args: &InitArgs,
) -> Exit {
    if let RepoLocation::Local(root) = &settings.repo {
        // Run as root (from a setup script), hand a new repository
        // directory to the cluster's owner: PostgreSQL runs walvault-push
        // as that user.
        if !root.exists() {
            let owner = owner_when_root(&args.pgdata);
            if let Err(e) = crate::storage::local::create_dirs_durably(root, owner) {
                report_error(
                    program,
                    &format!("create repository directory \"{}\": {e}", root.display()),
                );
                return Exit::Storage;
            }
        }
    }
    let repo = match settings.open_repository() {
        Ok(r) => r,
        Err(e) => {
            report_error(program, &e);
            return Exit::Usage;
        }
    };
    let what = format!("the cluster at \"{}\"", args.pgdata.display());
    // With a secret configured, the new repository is encrypted: a fresh
    // data key, wrapped by the secret, goes into the header.
    let encryption = match &settings.encryption {
        Some(source) => match repo.read_header().await {
            Ok(None) => match crate::repo::keys::new_encryption(source) {
                Ok(e) => Some(e),
                Err(e) => {
                    report_error(program, &e);
                    return Exit::Key;
                }
            },
            Ok(Some(_)) => None,
            Err(e) => {
                report_error(program, &e);
                return super::wal::repo_exit(&e);
            }
        },
        None => None,
    };
    match repo.init(&facts.identity(), &what, encryption).await {
        Ok((header, _)) if settings.encryption.is_some() && header.encryption.is_none() => {
            report_error(
                program,
                &format!(
                    "repository {} is already initialized and is not encrypted, but an encryption key is configured\nHINT: remove the encryption setting for it, or initialize a new repository elsewhere",
                    repo.describe()
                ),
            );
            Exit::Key
        }
        Ok((header, created)) => {
            print_create_only(&header.create_only, &header.create_only_probe);
            if let Some(enc) = &header.encryption {
                println!(
                    "encryption: {} (data key wrapped by a {})",
                    enc.cipher, enc.secret
                );
            }
            println!(
                "{} {}: PostgreSQL {} cluster {}, {} WAL segments",
                if created {
                    "initialized"
                } else {
                    "already initialized for this cluster; nothing changed:"
                },
                repo.describe(),
                facts.pg_major,
                facts.system_identifier,
                super::human_bytes(facts.wal_segment_size.bytes())
            );
            Exit::Ok
        }
        Err(e) => {
            report_error(program, &e);
            super::wal::repo_exit(&e)
        }
    }
}

/// Says how create-only writes are protected on this storage, and warns
/// plainly when the server does not honour conditional writes.
pub(crate) fn print_create_only(mode: &Option<String>, probe: &Option<String>) {
    let found = probe.as_deref().unwrap_or("not probed");
    match mode.as_deref() {
        Some("head-check") => {
            println!("create-only writes: head-check ({found})");
            eprintln!("walvault: WARNING: this storage does not honour If-None-Match: *, so walvault checks with a HEAD before each create and another after it; two writers of the same name in the same instant can still both succeed, the later replacing the earlier (see README, \"S3\")");
        }
        _ => println!("create-only writes: atomic ({found})"),
    }
}

/// The data directory's owner, when walvault runs as root and the owner
/// is someone else.
fn owner_when_root(data_dir: &std::path::Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    std::fs::metadata(data_dir)
        .ok()
        .map(|m| (m.uid(), m.gid()))
        .filter(|(uid, _)| *uid != 0)
}
