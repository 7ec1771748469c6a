//! Exit codes (SPEC: Binaries): what a script driving `releasectl` can branch on.

use std::process::ExitCode;

/// How `releasectl` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done (also: stdout was closed early, as in `releasectl history | head -1`).
    Done = 0,
    /// Refused or rolled back: a smoke check failed, an SLO was breached, nothing to roll
    /// back, the active color's backends without `--force`, a conflict.
    Refused = 1,
    /// Usage or config error: bad flags, an unknown service, an invalid config on reload,
    /// an unreadable token file.
    Usage = 2,
    /// The admin API could not be reached or refused the token.
    Unreachable = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// A verb that ran to its end and was refused or rolled back (exit 1): a smoke check
/// failed, a canary was rolled back. The message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);
