//! podman containers through `podman container inspect` (podman has no daemon to ask by
//! default; its CLI reads the same store the API service would).

use std::process::Command;

use super::{Inspect, RuntimeContainer, check_name};
use crate::error::{Error, Result};

/// The container podman knows as `name` (a name, a full id or a unique id prefix).
pub fn inspect(name: &str) -> Result<RuntimeContainer> {
    check_name("podman container", name)?;
    let out = Command::new("podman")
        .args(["container", "inspect", "--", name])
        .output()
        .map_err(|e| Error::RuntimeEndpoint {
            runtime: "podman",
            endpoint: "podman".into(),
            reason: format!("cannot run podman: {e}"),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("podman container inspect failed")
            .trim()
            .trim_start_matches("Error: ")
            .to_owned();
        return Err(Error::RuntimeLookup {
            runtime: "podman",
            name: name.to_owned(),
            message,
        });
    }
    let mut all: Vec<Inspect> =
        serde_json::from_slice(&out.stdout).map_err(|e| Error::RuntimeEndpoint {
            runtime: "podman",
            endpoint: "podman".into(),
            reason: format!("unexpected output of podman container inspect: {e}"),
        })?;
    let c = match (all.pop(), all.is_empty()) {
        (Some(c), true) => c,
        _ => {
            return Err(Error::RuntimeLookup {
                runtime: "podman",
                name: name.to_owned(),
                message: "not exactly one container".into(),
            });
        }
    };
    Ok(c.into_container("podman"))
}
