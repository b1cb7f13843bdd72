//! Talking to an injection server's Chaos API.

use std::net::Shutdown;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::proto::{chaos as pb, chaos_ttrpc};
use super::{CrashOptions, CrashReport, RecoverReport, Status};
use crate::error::{Error, Result};

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one injection server, or to the iochaos shim running a container (then
/// every call names that container in the ttrpc metadata, see [`ChaosClient::for_container`]).
#[derive(Clone)]
pub struct ChaosClient {
    inner: chaos_ttrpc::ChaosClient,
    socket: PathBuf,
    timeout: Duration,
    container: Option<String>,
    _hangup: Arc<Hangup>,
}

/// Ends the connection when the last clone of a client goes. ttrpc's own client closes its
/// socket only when its reader thread next wakes up, up to 10 ms later (it polls with that
/// timeout), and an injection server that was asked to recover waits for its caller to hang up
/// before it exits.
struct Hangup(UnixStream);

impl Drop for Hangup {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

impl std::fmt::Debug for ChaosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosClient")
            .field("socket", &self.socket)
            .field("container", &self.container)
            .finish()
    }
}

impl ChaosClient {
    /// Connect to the server listening on `socket` (e.g. `/run/iochaos/<id>.sock`).
    pub fn connect(socket: &Path) -> Result<ChaosClient> {
        let rpc_err = |source| Error::Rpc {
            socket: socket.to_owned(),
            source,
        };
        let io_err = |what: &'static str| {
            move |e: std::io::Error| rpc_err(ttrpc::Error::Socket(format!("{what}: {e}")))
        };
        let stream = UnixStream::connect(socket).map_err(io_err("connect"))?;
        let hangup = Hangup(stream.try_clone().map_err(io_err("dup"))?);
        // ttrpc owns (and closes) the connected fd from here on.
        let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(rpc_err)?;
        Ok(ChaosClient {
            inner: chaos_ttrpc::ChaosClient::new(client),
            socket: socket.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            container: None,
            _hangup: Arc::new(hangup),
        })
    }

    /// Name container `id` in every call (metadata key [`super::shim::CONTAINER_KEY`]): one
    /// iochaos shim may serve several containers.
    pub fn for_container(mut self, id: &str) -> ChaosClient {
        self.container = Some(id.to_owned());
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Set the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ChaosClient {
        self.timeout = timeout;
        self
    }

    fn ctx(&self) -> ttrpc::context::Context {
        let mut ctx = ttrpc::context::with_timeout(
            i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX),
        );
        if let Some(container) = &self.container {
            ctx.add(super::shim::CONTAINER_KEY.to_owned(), container.clone());
        }
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

    /// `Status`.
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

    /// `Recover`.
    pub fn recover(&self) -> Result<RecoverReport> {
        let r = self
            .inner
            .recover(self.ctx(), &pb::RecoverRequest::new())
            .map_err(|e| self.err(e))?;
        Ok(r.into())
    }

    /// `Crash` (crash mode, docs/crash.md).
    pub fn crash(&self, opts: CrashOptions) -> Result<CrashReport> {
        let req = pb::CrashRequest {
            seed: opts.seed.unwrap_or_default(),
            seeded: opts.seed.is_some(),
            torn: opts.torn,
            reorder: opts.reorder,
            ..Default::default()
        };
        let r = self
            .inner
            .crash(self.ctx(), &req)
            .map_err(|e| self.err(e))?;
        Ok(r.into())
    }
}
