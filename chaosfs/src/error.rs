//! Errors of the chaosfs library.

use std::io;

/// Everything that can go wrong while validating rules or serving a mount.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JSON spec could not be parsed (syntax, unknown field, wrong type).
    #[error("invalid spec: {0}")]
    SpecJson(#[source] serde_json::Error),
    /// The spec parsed but a value is out of range or inconsistent.
    #[error("invalid spec: {0}")]
    SpecInvalid(String),
    /// A command-line rule flag is malformed.
    #[error("invalid rule flags: {0}")]
    Shorthand(String),
    /// A system call failed; `what` names it.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}
