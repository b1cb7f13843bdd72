//! Errors of the engine library: one enum, one line each, naming the problem.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while finding a target, entering it, mounting, journaling or
/// talking over the Chaos API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pid does not exist (or exited while we looked at it).
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },

    /// No containerd task directory for this container.
    #[error("unknown container {id:?} in containerd namespace {namespace:?} (no {})", dir.display())]
    UnknownContainer {
        id: String,
        namespace: String,
        dir: PathBuf,
    },

    /// A container id or namespace that cannot name a task directory.
    #[error("invalid container {what} {value:?}")]
    InvalidContainerName { what: &'static str, value: String },

    /// The container's task exists but its init process is gone.
    #[error(
        "container {id:?} (containerd namespace {namespace:?}) is not running: init pid {pid} exited"
    )]
    ContainerNotRunning {
        id: String,
        namespace: String,
        pid: u32,
    },

    /// A runtime (Docker, podman) could not be asked: no socket, no binary, or an answer we
    /// could not read.
    #[error("{runtime} at {endpoint}: {reason}")]
    RuntimeEndpoint {
        runtime: &'static str,
        endpoint: String,
        reason: String,
    },

    /// The runtime does not know the container (unknown, or an ambiguous id prefix): its words.
    #[error("{runtime} container {name:?}: {message}")]
    RuntimeLookup {
        runtime: &'static str,
        name: String,
        message: String,
    },

    /// The runtime knows the container but it does not run.
    #[error("{runtime} container {name:?} (id {id}) is not running")]
    RuntimeContainerNotRunning {
        runtime: &'static str,
        name: String,
        id: String,
    },

    /// A file under /proc, the task directory or the journal could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file had content we could not parse.
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    /// A JSON file (config.json, journal entry) could not be parsed or written.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A system call failed; `what` names the call and its object.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The user's path is not absolute.
    #[error("path {path:?} must be absolute (as seen inside the target)")]
    RelativePath { path: PathBuf },

    /// The user's path does not resolve inside the target's root.
    #[error("path {} in the target: {source}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The path resolved to something that is not a directory.
    #[error("path {} in the target is not a directory", path.display())]
    NotADirectory { path: PathBuf },

    /// No mount in the target's mountinfo contains the path (should not happen on Linux).
    #[error("no mount of pid {pid} contains {}", path.display())]
    NoMount { pid: u32, path: PathBuf },

    /// The path lies in a shared mount: a mount there would propagate to its peers.
    #[error(
        "{} lies in mount {} (id {mnt_id}) that is shared with peer group {group}: \
         a mount there would propagate to its peers (for example the host's volume directory); \
         refusing (allow shared mounts explicitly to inject anyway)",
        path.display(),
        mount_point.display()
    )]
    SharedMount {
        path: PathBuf,
        mount_point: PathBuf,
        mnt_id: u64,
        group: u64,
    },

    /// The mount we would detach is not the one we made (something was stacked on top or it
    /// was replaced).
    #[error(
        "the mount on {} is not ours (expected mount id {expected}, found {found}); not detaching",
        path.display()
    )]
    MountNotOurs {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// An injection id that is not of the form the journal writes.
    #[error("invalid injection id {id:?}")]
    InvalidId { id: String },

    /// `crash` of an injection that keeps no undo log (docs/crash.md).
    #[error(
        "injection {id} is not in crash mode: nothing to roll back (inject with --crash-mode, \
         spec \"crash_mode\": true)"
    )]
    NotCrashMode { id: String },

    /// `crash`: processes of the target still alive after SIGKILL.
    #[error("crash: processes {pids:?} of the target are still alive after SIGKILL")]
    Unkillable { pids: Vec<u32> },

    /// No journal entry for this id.
    #[error("no injection {id}")]
    NoSuchInjection { id: String },

    /// A journal entry with this id exists already.
    #[error("injection {id} exists already")]
    InjectionExists { id: String },

    /// The path is already injected in this mount namespace.
    #[error("{} is already injected in this target (injection {id}); recover it first", path.display())]
    AlreadyInjected { id: String, path: PathBuf },

    /// PID 1 and iochaos's own ancestors are never targets.
    #[error("pid {pid} {why}: refusing to inject into it")]
    ProtectedProcess { pid: u32, why: &'static str },

    /// The target is in the host's mount namespace (that of PID 1).
    #[error(
        "pid {pid} is in the host's mount namespace (that of pid 1): the mount would be seen by \
         every host process and every one of them scanned and stopped; refusing (iochaos inject \
         --host-namespace to inject anyway)"
    )]
    HostNamespace { pid: u32 },

    /// The path is one iochaos never injects (see [`crate::policy`]).
    #[error("path {} {reason}: refusing to inject there", path.display())]
    PathRefused { path: PathBuf, reason: String },

    /// The path is inside, or contains, a path injected in the same mount namespace.
    #[error(
        "{} {relation} {}, injected already in this target (injection {id}): ChaosFS cannot \
         be stacked; recover that first",
        path.display(),
        other.display()
    )]
    NestedInjection {
        path: PathBuf,
        relation: &'static str,
        other: PathBuf,
        id: String,
    },

    /// The journal directory (or a parent) could be changed by someone other than root.
    #[error("journal directory {}: {reason}; refusing to trust it", path.display())]
    UntrustedRunDir { path: PathBuf, reason: String },

    /// The filesystem server (ChaosFS) failed to start, update or stop.
    #[error("ChaosFS: {0}")]
    Filesystem(#[from] chaosfs::Error),

    /// The filesystem server was handed a device it does not serve (ChaosFS serves
    /// `/dev/fuse`, not a tmpfs).
    #[error("ChaosFS: ChaosFS serves a FUSE device, not a tmpfs")]
    NotFuseDevice,

    /// Moving the target's fds failed (fdswap).
    #[error("swapping fds: {0}")]
    Swap(#[from] fdswap::Error),

    /// One process of the target could not be moved onto ChaosFS (fdswap rolled it back).
    #[error("swapping the fds of pid {pid}: {source}")]
    SwapProcess {
        pid: u32,
        #[source]
        source: fdswap::Error,
    },

    /// The injection was already recovered.
    #[error("injection {id} is recovered already")]
    Recovered { id: String },

    /// The spec given to the Chaos API was rejected by the rule engine.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The Chaos API transport failed (connect, send, receive, serve).
    #[error("Chaos API at {}: {source}", socket.display())]
    Rpc {
        socket: PathBuf,
        #[source]
        source: ttrpc::Error,
    },

    /// The injection server answered with an error.
    #[error("injection server: {message}")]
    Remote { code: ttrpc::Code, message: String },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The ttrpc status code this error is reported with over the Chaos API.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Error::InvalidSpec(_)
            | Error::RelativePath { .. }
            | Error::InvalidId { .. }
            | Error::InvalidContainerName { .. } => ttrpc::Code::INVALID_ARGUMENT,
            Error::NoSuchProcess { .. }
            | Error::UnknownContainer { .. }
            | Error::NoSuchInjection { .. }
            | Error::Resolve { .. } => ttrpc::Code::NOT_FOUND,
            Error::InjectionExists { .. }
            | Error::AlreadyInjected { .. }
            | Error::NestedInjection { .. } => ttrpc::Code::ALREADY_EXISTS,
            Error::Recovered { .. } | Error::NotCrashMode { .. } => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            Error::SharedMount { .. }
            | Error::ProtectedProcess { .. }
            | Error::HostNamespace { .. }
            | Error::PathRefused { .. }
            | Error::UntrustedRunDir { .. }
            | Error::NotADirectory { .. }
            | Error::ContainerNotRunning { .. }
            | Error::MountNotOurs { .. } => ttrpc::Code::FAILED_PRECONDITION,
            Error::Remote { code, .. } => *code,
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

/// Errors cross the Chaos API once, here: the code from [`Error::code`], the message is the
/// error's one line (with its causes).
impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), with_causes(&e)))
    }
}

/// An error and its causes on one line (what the CLI, the hook and the shim print).
pub fn one_line(e: &dyn std::error::Error) -> String {
    with_causes(e).replace('\n', " ")
}

/// An error followed by each of its causes that its message does not already hold.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_from_chaosfs_and_fdswap_keep_their_line_and_can_be_matched() {
        let fs = Error::from(chaosfs::Error::Sys {
            what: "open /dev/fuse".into(),
            source: io::Error::from_raw_os_error(2),
        });
        assert!(matches!(&fs, Error::Filesystem(chaosfs::Error::Sys { .. })));
        assert_eq!(
            one_line(&fs),
            "ChaosFS: open /dev/fuse: No such file or directory (os error 2)"
        );
        assert_eq!(fs.code(), ttrpc::Code::INTERNAL);

        let swap = Error::SwapProcess {
            pid: 7,
            source: fdswap::Error::Gone { pid: 7 },
        };
        assert!(matches!(
            &swap,
            Error::SwapProcess {
                source: fdswap::Error::Gone { .. },
                ..
            }
        ));
        assert_eq!(
            one_line(&swap),
            "swapping the fds of pid 7: process 7 exited during the swap"
        );
        let swap = Error::from(fdswap::Error::Gone { pid: 8 });
        assert_eq!(
            one_line(&swap),
            "swapping fds: process 8 exited during the swap"
        );
        assert_eq!(swap.code(), ttrpc::Code::INTERNAL);
    }
}
