//! Every exit code walvault uses, in one table.
//!
//! PostgreSQL reads an archive or restore command's exit status: 0 is
//! success; 1 to 125 is an ordinary failure (archive_command is retried;
//! for restore_command it means "not in the archive"); above 125, like death
//! by a signal, makes the archiver or the startup process stop with a FATAL
//! error. Only walvault-fetch ever uses a code above 125, and only on
//! purpose: see [`Exit::RecoveryMustStop`].

/// walvault's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// walvault-fetch: the file is not in the repository (quiet; PostgreSQL
    /// probes for files that do not exist all the time). For `status`:
    /// WARNING.
    NotFound = 1,
    /// Bad command line or configuration (clap uses 2 as well). For
    /// `status`: CRITICAL.
    Usage = 2,
    /// The input file is not what it claims to be (not WAL, truncated,
    /// unreadable, wrong name).
    BadInput = 3,
    /// A different file of the same name is already archived; nothing was
    /// overwritten.
    Conflict = 4,
    /// The repository could not be reached or failed.
    Storage = 5,
    /// A stored object failed its integrity check.
    Corrupt = 6,
    /// The file belongs to another cluster or repository format.
    WrongRepository = 7,
    /// Any other failure.
    Failed = 8,
    /// The repository has no header (`repository.json`): it was never
    /// initialized with `walvault init`, or the path, bucket or prefix is
    /// wrong, or its file system is not mounted. Nothing was written.
    NotInitialized = 9,
    /// The repository is encrypted and the key is missing or wrong, or a
    /// key is configured for a repository that is not encrypted. Nothing
    /// was read or written. (walvault-fetch outside standby mode exits
    /// with [`Exit::RecoveryMustStop`] instead, like every failure there.)
    Key = 10,
    /// walvault-fetch outside standby mode, when the repository failed or
    /// returned a corrupt object: "missing" (1..125) would let PostgreSQL end
    /// recovery early at the wrong point, so this stops recovery instead
    /// (PostgreSQL treats a status above 125 as fatal).
    RecoveryMustStop = 128,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit a code stands for (an unknown one is [`Exit::Failed`]).
    pub fn from_code(code: u8) -> Exit {
        [
            Exit::Ok,
            Exit::NotFound,
            Exit::Usage,
            Exit::BadInput,
            Exit::Conflict,
            Exit::Storage,
            Exit::Corrupt,
            Exit::WrongRepository,
            Exit::Failed,
            Exit::NotInitialized,
            Exit::Key,
            Exit::RecoveryMustStop,
        ]
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or(Exit::Failed)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}
