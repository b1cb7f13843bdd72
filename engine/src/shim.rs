//! The client side of `containerd-shim-iochaos-v2`, the containerd runtime that injects at a
//! container's creation (crate `shim`, docs/shim.md): the names containerd and users see, and
//! the Chaos API of a container through its shim.
//!
//! The shim serves the Chaos API (`iochaos.v1.Chaos`) next to containerd's task API on its own
//! socket, the one the container's task directory names in `address`. One shim may serve
//! several containers (a Kubernetes pod): each call names its container in the ttrpc metadata
//! key [`CONTAINER_KEY`]. Every injection the shim makes is also journaled and served on
//! `/run/iochaos/<id>.sock` like any other, with the shim as its server process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::proto::{chaos as pb, chaos_ttrpc};
use crate::api::{RecoverReport, Status};
use crate::error::{Error, Result};
use crate::target::ContainerdTask;

/// containerd's runtime name for the shim.
pub const RUNTIME: &str = "io.containerd.iochaos.v2";
/// The shim's binary name (containerd derives it from [`RUNTIME`]).
pub const BINARY: &str = "containerd-shim-iochaos-v2";
/// The OCI annotation carrying the JSON spec to inject at creation.
pub const ANNOTATION: &str = "dev.iochaos.spec";
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

/// The Chaos API of one container, through the iochaos shim that runs it.
#[derive(Clone)]
pub struct ShimClient {
    inner: chaos_ttrpc::ChaosClient,
    container: String,
    socket: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient")
            .field("container", &self.container)
            .field("socket", &self.socket)
            .finish()
    }
}

impl ShimClient {
    /// The shim of containerd container `namespace/id` (state directory `state_dir`), if it is
    /// an iochaos shim with an injection for that container. `None`: the container runs under
    /// another runtime, or its iochaos shim injected nothing into it.
    pub fn find(state_dir: &Path, namespace: &str, id: &str) -> Result<Option<ShimClient>> {
        let task = ContainerdTask::find_in(state_dir, namespace, id)?;
        let Some(path) = task.address.strip_prefix("unix://") else {
            return Ok(None);
        };
        let socket = PathBuf::from(path);
        let client = ttrpc::Client::connect(&task.address).map_err(|source| Error::Rpc {
            socket: socket.clone(),
            source,
        })?;
        let c = ShimClient {
            inner: chaos_ttrpc::ChaosClient::new(client),
            container: id.to_owned(),
            socket,
            timeout: crate::api::client::DEFAULT_TIMEOUT,
        };
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

    /// The shim's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Set the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ShimClient {
        self.timeout = timeout;
        self
    }

    fn ctx(&self) -> ttrpc::context::Context {
        let mut ctx = ttrpc::context::with_timeout(
            i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX),
        );
        ctx.add(CONTAINER_KEY.to_owned(), self.container.clone());
        ctx
    }

    fn err(&self, e: ttrpc::Error) -> Error {
        match e {
            ttrpc::Error::RpcStatus(s) => Error::Remote {
                code: s.code(),
                message: s.message().to_owned(),
            },
            source => Error::Rpc {
                socket: self.socket.clone(),
                source,
            },
        }
    }

    /// `Status` of the container's injection.
    pub fn status(&self) -> Result<Status> {
        let r = self
            .inner
            .status(self.ctx(), &pb::StatusRequest::new())
            .map_err(|e| self.err(e))?;
        Status::try_from(r)
    }

    /// `UpdateRules` with a JSON spec.
    pub fn update_rules(&self, spec_json: &str) -> Result<Status> {
        let req = pb::UpdateRulesRequest {
            spec_json: spec_json.to_owned(),
            ..Default::default()
        };
        let r = self
            .inner
            .update_rules(self.ctx(), &req)
            .map_err(|e| self.err(e))?;
        Status::try_from(r)
    }

    /// `Recover`: the container keeps running, without faults.
    pub fn recover(&self) -> Result<RecoverReport> {
        let r = self
            .inner
            .recover(self.ctx(), &pb::RecoverRequest::new())
            .map_err(|e| self.err(e))?;
        Ok(r.into())
    }
}
