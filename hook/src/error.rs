//! Errors of the hook: one line each, naming what the container asked for and why it cannot
//! have it. The runtime shows the line and fails the container's creation.

use std::path::PathBuf;

/// Everything that makes the hook refuse or fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hook was registered under a stage name the OCI spec does not know.
    #[error(
        "unknown hook stage {0:?} (expected prestart, createRuntime, createContainer, \
         startContainer, poststart or poststop)"
    )]
    UnknownStage(String),

    /// The OCI state on stdin is not valid JSON of the expected shape.
    #[error("the OCI state on stdin: {0}")]
    State(#[source] serde_json::Error),

    /// The admin configuration is invalid.
    #[error("{}: {reason}", path.display())]
    AdminConfig { path: PathBuf, reason: String },

    /// The admin switched annotation-driven faults off.
    #[error("annotation-driven faults are switched off (enabled = false in {})", config.display())]
    Disabled { config: PathBuf },

    /// The container may not be faulted.
    #[error("container {id:?} may not be faulted: {why} ({})", config.display())]
    ContainerDenied {
        id: String,
        why: String,
        config: PathBuf,
    },

    /// The path may not be faulted.
    #[error(
        "path {} may not be faulted: allowed are {} ({})",
        path.display(),
        allowed,
        config.display()
    )]
    PathDenied {
        path: PathBuf,
        allowed: String,
        config: PathBuf,
    },

    /// The annotation's spec is invalid.
    #[error("invalid {annotation} annotation: {source}", annotation = crate::ANNOTATION)]
    InvalidSpec {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The OCI state names no process at a stage that needs one.
    #[error("the OCI state has no pid of the container's init (needed at {stage})")]
    NoPid { stage: &'static str },

    /// The injection server could not be started or reported a failure.
    #[error("starting the injection server: {0}")]
    Spawn(#[source] std::io::Error),

    /// The injection server undid everything and reported why.
    #[error("{0}")]
    Server(String),

    /// The injection server exited without reporting.
    #[error("the injection server exited ({0}) before faults were live")]
    ServerExited(std::process::ExitStatus),

    /// Some injections of the container could not be removed at poststop.
    #[error("container {id:?}: {failed} injection(s) could not be removed: {first}")]
    Cleanup {
        id: String,
        failed: usize,
        first: String,
    },

    /// The hook runs without a capability an injection needs.
    #[error(
        "missing capability {cap} (needed for {why}): run the hook as root with its full capability set"
    )]
    MissingCapability {
        cap: caps::Capability,
        why: &'static str,
    },

    /// The process's capability sets could not be read.
    #[error("reading this process's capabilities: {0}")]
    Capabilities(#[source] caps::errors::CapsError),

    /// The engine failed (target, mount, journal, API).
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A file could not be read or written: the engine's error for it, shown as `PATH: CAUSE`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Engine(engine::Error::Io {
            path: path.into(),
            source,
        })
    }
}

pub use engine::error::one_line;

/// Print the hook's one-line reason where the user of the runtime sees it: our stderr, which
/// runc and podman show when a hook fails. crun sends a hook's stderr to /dev/null (unless the
/// `run.oci.hooks.stderr` annotation names a file) and reports only the exit code, so when our
/// stderr is /dev/null the line also goes to the runtime's own stderr: the parent's fd 2,
/// duplicated with `pidfd_getfd` so the write shares its file offset.
pub fn report(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    if !is_dev_null(std::path::Path::new("/proc/self/fd/2")) {
        return;
    }
    let Some(ppid) = i32::try_from(std::os::unix::process::parent_id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(ppid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let Ok(fd) = rustix::process::pidfd_getfd(&pidfd, 2, rustix::process::PidfdGetfdFlags::empty())
    else {
        return;
    };
    let mut f = std::fs::File::from(fd);
    if is_dev_null(std::path::Path::new(&format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&f)
    ))) {
        return;
    }
    // Nothing else to tell if this fails too.
    let _ = f.write_all(format!("{line}\n").as_bytes());
}

fn is_dev_null(path: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(path)
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == rustix::fs::makedev(1, 3))
}
