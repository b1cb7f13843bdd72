//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can go wrong while scanning or swapping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file under `/proc` could not be read or parsed.
    #[error("reading {path}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line of a `/proc` file did not have the expected shape.
    #[error("unexpected content in {path}: {line:?}")]
    ProcFormat {
        /// The file.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
    /// The path to swap must be absolute (as the target sees it).
    #[error("path {0} is not absolute")]
    RelativePath(PathBuf),
    /// A ptrace request failed.
    #[error("ptrace {op} on thread {tid}")]
    Ptrace {
        /// The request.
        op: &'static str,
        /// The thread.
        tid: i32,
        /// The error.
        #[source]
        source: Errno,
    },
    /// Reading or writing the target's memory failed.
    #[error("remote memory of thread {tid} at {addr:#x}")]
    RemoteMemory {
        /// The thread.
        tid: i32,
        /// The remote address.
        addr: u64,
        /// The error.
        #[source]
        source: Errno,
    },
    /// A syscall injected into the target returned an error.
    #[error("injected {name} in thread {tid} returned {errno}")]
    RemoteSyscall {
        /// The thread.
        tid: i32,
        /// The syscall name.
        name: &'static str,
        /// The returned error.
        errno: Errno,
    },
    /// Another process took a POSIX lock of the target in the moment it was handed over (after
    /// the close of the old fd dropped it, before the new file had it): the batch was rolled
    /// back, but the lock could not be given back to the target if the other process still
    /// holds it. Not worth a retry: the caller must report it.
    #[error(
        "process {pid}: {step} failed with {errno}: another process took the target's lock \
         while it was handed over; rolled back, the target may have lost the lock"
    )]
    LockTaken {
        /// The process.
        pid: i32,
        /// The step.
        step: String,
        /// The errno (EAGAIN).
        errno: Errno,
    },
    /// The stub could not connect to the injector to receive the pre-opened files (seccomp,
    /// a network namespace without unix sockets): nothing changed; fdswap runs the stub again
    /// with in-stub opens.
    #[error("process {pid}: the stub could not {step} ({errno}); nothing changed")]
    HandoffRefused {
        /// The process.
        pid: i32,
        /// The step that failed.
        step: String,
        /// The errno it returned.
        errno: Errno,
    },
    /// One step of the stub failed; its batch was rolled back to the original files (the
    /// whole process when the swap was one batch: at most 253 descriptions); `kept` lists the
    /// fds of the batches committed before, which stay moved.
    #[error(
        "process {pid}: {step} failed with {errno}; rolled back{}",
        kept_note(kept)
    )]
    StubStep {
        /// The process.
        pid: i32,
        /// What the step was doing (e.g. `openat /data/x for fd 7`).
        step: String,
        /// The errno it returned (`ESTALE`: a checked value did not match the scan).
        errno: Errno,
        /// Fds that stay swapped (committed batches).
        kept: Vec<i32>,
    },
    /// The stub failed in its rollback-free final part (closing temporaries, re-taking locks).
    #[error("process {pid}: swapped, but {step} failed with {errno}")]
    StubFinal {
        /// The process.
        pid: i32,
        /// The step.
        step: String,
        /// The errno.
        errno: Errno,
    },
    /// The process (or the thread the stub ran on) exited during the swap.
    #[error("process {pid} exited during the swap")]
    Gone {
        /// The process.
        pid: i32,
    },
    /// The process executed a new program during the swap.
    #[error("process {pid} executed a new program during the swap")]
    Exec {
        /// The process.
        pid: i32,
    },
    /// A thread did not stop within the timeout (uninterruptible sleep, vfork parent, …).
    #[error("thread {tid} did not stop within {timeout_ms} ms")]
    StopTimeout {
        /// The thread.
        tid: i32,
        /// The timeout.
        timeout_ms: u64,
    },
    /// A stop that the swap cannot make sense of.
    #[error("thread {tid}: unexpected {what}")]
    UnexpectedStop {
        /// The thread.
        tid: i32,
        /// What was seen.
        what: String,
    },
    /// The thread the stub would run on catches every signal whose default action is to
    /// ignore it (a Go program does): the stub's trap would then either run one of its
    /// handlers or, as an `int3`, kill it if the injector died mid-swap. Refused before
    /// anything changed.
    #[error(
        "process {pid}: thread {tid} catches SIGURG, SIGWINCH, SIGCHLD and SIGCONT, so the swap \
         has no trap that would be harmless to it if the injector died mid-swap; not swapped, \
         nothing changed"
    )]
    NoTrapSignal {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
    },
    /// No `syscall` instruction was found in the target's vDSO or executable mappings.
    #[error("process {pid}: no syscall instruction found")]
    NoSyscallInstruction {
        /// The process.
        pid: i32,
    },
    /// The stub could not be assembled.
    #[error("assembling the stub: {0}")]
    Assemble(String),
    /// Raising the target's RLIMIT_NOFILE for the temporary descriptors failed.
    #[error("raising RLIMIT_NOFILE of process {pid}")]
    Rlimit {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: Errno,
    },
}

fn kept_note(kept: &[i32]) -> String {
    if kept.is_empty() {
        String::new()
    } else {
        format!(" except {} fds of batches committed before", kept.len())
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<procinfo::Error> for Error {
    fn from(e: procinfo::Error) -> Error {
        match e {
            procinfo::Error::Io { path, source }
            | procinfo::Error::NoSuchProcess { path, source, .. } => Error::Proc { path, source },
            procinfo::Error::Format { path, detail } => Error::ProcFormat { path, line: detail },
        }
    }
}

pub(crate) fn proc_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Proc { path, source }
}
