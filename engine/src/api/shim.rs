//! The client side of `containerd-shim-iochaos-v2`, the containerd runtime that injects at a
//! container's creation (crate `shim`, docs/shim.md): the names containerd and users see, and
//! the Chaos API of a container through its shim.
//!
//! The shim serves the Chaos API (`iochaos.v1.Chaos`) next to containerd's task API on its own
//! socket, the one the container's task directory names in `address`. One shim may serve
//! several containers (a Kubernetes pod): each call names its container in the ttrpc metadata
//! key [`CONTAINER_KEY`]. Every injection the shim makes is also journaled and served on
//! `/run/iochaos/<id>.sock` like any other, with the shim as its server process.

use std::path::Path;

use super::ChaosClient;
use crate::error::{Error, Result};
use crate::target::ContainerdTask;

/// containerd's runtime name for the shim.
pub const RUNTIME: &str = "io.containerd.iochaos.v2";
/// The shim's binary name (containerd derives it from [`RUNTIME`]).
pub const BINARY: &str = "containerd-shim-iochaos-v2";
pub use crate::annotation::ANNOTATION;
/// ttrpc metadata key naming the container a Chaos call is about.
pub const CONTAINER_KEY: &str = "iochaos-container";

/// Is `pid` a `containerd-shim-iochaos-v2` process (the server of the injections it made)?
pub fn is_shim(pid: u32) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(std::ffi::OsStr::from_bytes(argv0)).file_name() == Some(std::ffi::OsStr::new(BINARY))
}

/// The Chaos API of containerd container `namespace/id` (state directory `state_dir`) through
/// the iochaos shim that runs it, if it is an iochaos shim with an injection for that container.
/// `None`: the container runs under another runtime, or its iochaos shim injected nothing into it.
pub fn client(state_dir: &Path, namespace: &str, id: &str) -> Result<Option<ChaosClient>> {
    let task = ContainerdTask::find_in(state_dir, namespace, id)?;
    let Some(path) = task.address.strip_prefix("unix://") else {
        return Ok(None);
    };
    let c = ChaosClient::connect(Path::new(path))?.for_container(id);
    match c.status() {
        Ok(_) => Ok(Some(c)),
        Err(Error::Remote { code, .. })
            if code == ttrpc::Code::UNIMPLEMENTED || code == ttrpc::Code::NOT_FOUND =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
