//! The shim's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("malformed task API message: {0}")]
    Wire(String),
    #[error("spawning {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} {action} exited with {status}: {output}")]
    RuncShim {
        binary: String,
        action: &'static str,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("ttrpc {address}: {source}")]
    Rpc {
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("annotation {}: {reason}", engine::api::shim::ANNOTATION)]
    Annotation { reason: String },
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A file could not be read or written: the engine's error for it, shown as `PATH: CAUSE`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Engine(engine::Error::Io {
            path: path.into(),
            source,
        })
    }

    /// A JSON file could not be parsed: `PATH: CAUSE`.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Error {
        Error::Engine(engine::Error::Json {
            path: path.into(),
            source,
        })
    }

    /// The ttrpc status code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Error::Usage(_) | Error::Wire(_) | Error::Annotation { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::Engine(e) => e.code(),
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

pub use engine::error::one_line;

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), one_line(&e)))
    }
}
