//! Containers named by the runtime that runs them (`docker://NAME`, `podman://NAME`,
//! `cri://ID`, `k8s://NAMESPACE/POD[/CONTAINER]`): asked of that runtime, they come back as their full id and init pid, and are then injected by pid.
//! containerd containers need no lookup here: their task directory names them
//! ([`crate::target::ContainerdTask`]).

#[cfg(feature = "cri")]
pub mod cri;
pub mod docker;
pub mod podman;

use crate::error::{Error, Result};

/// What a runtime says about a container: enough to inject into it by pid and to find its
/// injections again by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeContainer {
    /// `docker`, `podman` or `cri`: also the "namespace" recorded in the journal, so `status` shows
    /// `docker/ID`.
    pub runtime: &'static str,
    /// The full id (64 hex digits).
    pub id: String,
    /// The init process, when the container runs.
    pub pid: Option<u32>,
}

impl RuntimeContainer {
    /// The init pid of a running container; "not running" otherwise.
    pub fn running_pid(&self, name: &str) -> Result<u32> {
        self.pid.ok_or_else(|| Error::RuntimeContainerNotRunning {
            runtime: self.runtime,
            name: name.to_owned(),
            id: self.id.clone(),
        })
    }
}

/// The part of `docker inspect`'s and `podman container inspect`'s answer we use (both spell
/// it the same way).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Inspect {
    id: String,
    state: InspectState,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    running: bool,
    pid: i64,
}

impl Inspect {
    pub(crate) fn into_container(self, runtime: &'static str) -> RuntimeContainer {
        RuntimeContainer {
            runtime,
            id: self.id,
            pid: pid_of(self.state.running, self.state.pid),
        }
    }
}

/// Container names and id prefixes as Docker and podman accept them
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`): anything else is refused before it reaches a URL or an
/// argument list.
pub(crate) fn check_name(runtime: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(Error::InvalidContainerName {
            what: runtime,
            value: name.to_owned(),
        })
    }
}

/// The init pid a runtime reports: 0 (or less) means none.
fn pid_of(running: bool, pid: i64) -> Option<u32> {
    if running {
        u32::try_from(pid).ok().filter(|p| *p > 0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_docker_accepts_pass_others_are_refused() {
        for ok in ["web", "a1b2c3", "my_app.v2-1"] {
            check_name("docker", ok).expect(ok);
        }
        for bad in ["", "-x", "../x", "a/b", "a b", "x?y", "é"] {
            assert!(check_name("docker", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stopped_container_has_no_pid() {
        assert_eq!(pid_of(true, 42), Some(42));
        assert_eq!(pid_of(false, 42), None);
        assert_eq!(pid_of(true, 0), None);
    }
}
