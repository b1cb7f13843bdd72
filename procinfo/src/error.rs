//! The one error type of this crate.

use std::io;
use std::path::{Path, PathBuf};

/// A `/proc` file could not be read, or its text was not what the kernel writes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the file failed.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A reader given a pid found no such process (`ENOENT`/`ESRCH` on its file).
    #[error("no such process: {pid}")]
    NoSuchProcess {
        /// The process.
        pid: u32,
        /// The file that was read.
        path: PathBuf,
        /// The error reading it.
        #[source]
        source: io::Error,
    },
    /// The text has not the expected shape.
    #[error("unexpected content in {}: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong (the offending line, or a reason).
        detail: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reading `path` of process `pid` failed: `ENOENT`/`ESRCH` mean the process is gone.
pub(crate) fn pid_err(pid: u32, path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| {
        let gone = [rustix::io::Errno::NOENT, rustix::io::Errno::SRCH]
            .iter()
            .any(|e| source.raw_os_error() == Some(e.raw_os_error()));
        if gone {
            Error::NoSuchProcess {
                pid,
                path: path.to_owned(),
                source,
            }
        } else {
            Error::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}
