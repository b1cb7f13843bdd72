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

    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bundle's config.json could not be parsed.
    #[error("{}: {source}", path.display())]
    BundleConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

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

    /// The engine failed (target, mount, journal, API).
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// An error and its causes on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
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
    s.replace('\n', " ")
}
