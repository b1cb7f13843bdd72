//! Serving the Chaos API: the injection server implements [`ChaosService`]; [`ApiServer`] puts
//! it on a unix socket (mode 0600) with ttrpc.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use ttrpc::ConnectionDataExt;

use super::proto::{chaos as pb, chaos_ttrpc};
use super::{CrashOptions, CrashReport, RecoverReport, Status};
use crate::error::{Error, Result};

/// What an injection server does when asked over the API. Called from ttrpc's worker threads,
/// possibly concurrently.
pub trait ChaosService: Send + Sync + 'static {
    /// Where the injection stands.
    fn status(&self) -> Result<Status>;
    /// Replace the rules with the JSON spec `spec_json`; answer with the new status. A spec the
    /// rule engine rejects is [`Error::InvalidSpec`].
    fn update_rules(&self, spec_json: &str) -> Result<Status>;
    /// Undo the injection (detach, swap back). The server keeps serving until its owner calls
    /// [`ApiServer::wait_recovered`] and [`ApiServer::shutdown`], so this answer reaches the
    /// caller.
    fn recover(&self) -> Result<RecoverReport>;
    /// Crash mode: cut the power (SIGKILL every process of the target, roll the files back to
    /// their durable state), then recover. Like [`ChaosService::recover`], the server keeps
    /// serving until its owner shuts it down. Default: not supported.
    fn crash(&self, opts: CrashOptions) -> Result<CrashReport> {
        let _ = opts;
        Err(Error::Remote {
            code: ttrpc::Code::UNIMPLEMENTED,
            message: "this server cannot crash an injection".into(),
        })
    }
}

#[derive(Default)]
struct RecoverState {
    /// Set once `Recover` succeeded: a duplicate of that caller's connection, to see it close.
    done: Option<Option<OwnedFd>>,
}

struct Adapter {
    service: Arc<dyn ChaosService>,
    recovered: Arc<(Mutex<RecoverState>, Condvar)>,
}

impl chaos_ttrpc::Chaos for Adapter {
    fn status(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: pb::StatusRequest,
    ) -> ttrpc::Result<pb::StatusResponse> {
        Ok((&self.service.status()?).into())
    }

    fn update_rules(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: pb::UpdateRulesRequest,
    ) -> ttrpc::Result<pb::StatusResponse> {
        Ok((&self.service.update_rules(&req.spec_json)?).into())
    }

    fn recover(
        &self,
        ctx: &ttrpc::TtrpcContext,
        _req: pb::RecoverRequest,
    ) -> ttrpc::Result<pb::RecoverResponse> {
        let report = self.service.recover()?;
        self.recovered_by(ctx);
        Ok((&report).into())
    }

    fn crash(
        &self,
        ctx: &ttrpc::TtrpcContext,
        req: pb::CrashRequest,
    ) -> ttrpc::Result<pb::CrashResponse> {
        let report = self.service.crash(CrashOptions {
            seed: req.seeded.then_some(req.seed),
            torn: req.torn,
            reorder: req.reorder,
        })?;
        self.recovered_by(ctx);
        Ok((&report).into())
    }
}

impl Adapter {
    /// The injection was recovered by the call of `ctx`: the server may end once that caller
    /// has read the answer (closed its connection).
    fn recovered_by(&self, ctx: &ttrpc::TtrpcContext) {
        let conn = ctx
            .conn_ctx
            .data
            .get_typed::<OwnedFd>(CONNECTION)
            .and_then(|fd| fd.try_clone().ok());
        let (lock, cv) = &*self.recovered;
        if let Ok(mut st) = lock.lock() {
            st.done = Some(conn);
            cv.notify_all();
        }
    }
}

/// How long ttrpc waits to accept again after running out of fds.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The key of a connection's own duplicate of its fd in ttrpc's per-connection data.
const CONNECTION: &str = "iochaos.connection";

/// Keeps a duplicate of each accepted connection in its per-connection data, taken at accept
/// time, so that `Recover` can watch its caller hang up. The fd number a handler gets
/// (`TtrpcContext::fd`) is no such handle: ttrpc may close the connection while the handler
/// still runs (its reaper closes it once the reading side ended), and the number may then
/// name another connection or file.
#[derive(Debug)]
struct KeepConnection;

impl ttrpc::AcceptHook for KeepConnection {
    fn on_accept(&self, fd: RawFd) -> std::result::Result<ttrpc::HookOutput, ttrpc::HookError> {
        let conn = crate::sys::dup_accepted_connection(fd).map_err(ttrpc::HookError::Io)?;
        let mut data = ttrpc::ConnectionData::new();
        data.insert(CONNECTION.to_owned(), Box::new(conn));
        Ok(ttrpc::HookOutput {
            data,
            payload_transform: None,
        })
    }
}

/// A running Chaos API server. Ready (accepting) when [`ApiServer::serve`] returns.
pub struct ApiServer {
    server: Option<ttrpc::Server>,
    listener: Option<UnixListener>,
    socket: PathBuf,
    recovered: Arc<(Mutex<RecoverState>, Condvar)>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.socket)
            .finish()
    }
}

impl ApiServer {
    /// Serve `service` on the unix socket `socket` (created mode 0600). A stale socket file
    /// (nobody listening) is replaced; a live one is [`Error::InjectionExists`].
    pub fn serve(socket: &Path, service: Arc<dyn ChaosService>) -> Result<ApiServer> {
        let rpc_err = |source| Error::Rpc {
            socket: socket.to_owned(),
            source,
        };
        if socket.exists() {
            if UnixStream::connect(socket).is_ok() {
                return Err(Error::InjectionExists {
                    id: socket.display().to_string(),
                });
            }
            std::fs::remove_file(socket).map_err(|e| Error::io(socket, e))?;
        }
        let listener = UnixListener::bind(socket).map_err(|e| Error::io(socket, e))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(socket, e))?;
        let recovered = Arc::new((Mutex::new(RecoverState::default()), Condvar::new()));
        let adapter = Arc::new(Adapter {
            service,
            recovered: recovered.clone(),
        });
        // ttrpc borrows the listening fd (it never closes it); `listener` keeps ownership.
        let mut server = ttrpc::Server::new()
            .add_listener(listener.as_raw_fd())
            .map_err(rpc_err)?
            .set_accept_hook(KeepConnection)
            // Out of fds (ChaosFS holds two per file open through it), ttrpc waits this long
            // before it accepts again (10 s by default): recover frees fds, `recover` waits.
            .set_accept_retry_interval(ACCEPT_RETRY)
            .register_service(chaos_ttrpc::create_chaos(adapter));
        server.start().map_err(rpc_err)?;
        Ok(ApiServer {
            server: Some(server),
            listener: Some(listener),
            socket: socket.to_owned(),
            recovered,
        })
    }

    /// The socket served on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Block until a `Recover` call has succeeded and its caller has closed its connection
    /// (so the answer was read), or `grace` has passed since the recovery. With `timeout`,
    /// give up (false) if no recovery happened by then.
    pub fn wait_recovered(&self, timeout: Option<Duration>, grace: Duration) -> bool {
        let (lock, cv) = &*self.recovered;
        let Ok(guard) = lock.lock() else {
            return false;
        };
        let mut st = match timeout {
            None => match cv.wait_while(guard, |s| s.done.is_none()) {
                Ok(g) => g,
                Err(_) => return false,
            },
            Some(t) => match cv.wait_timeout_while(guard, t, |s| s.done.is_none()) {
                Ok((g, _)) => g,
                Err(_) => return false,
            },
        };
        let Some(conn) = st.done.as_mut() else {
            return false;
        };
        if let Some(fd) = conn.take() {
            wait_peer_closed(fd, grace);
        }
        true
    }

    /// A handle that wakes [`ApiServer::wait_recovered`] when the injection was recovered some
    /// other way (a signal, the target's exit).
    pub fn notifier(&self) -> RecoveredNotifier {
        RecoveredNotifier(self.recovered.clone())
    }

    /// Stop accepting, close connections, remove the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            shutdown_bounded(server);
        }
        self.listener = None;
        if let Err(e) = std::fs::remove_file(&self.socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove socket");
        }
    }
}

/// How long [`ApiServer::shutdown`] waits for ttrpc's own shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Shut the ttrpc server down, waiting at most [`SHUTDOWN_GRACE`]. ttrpc 0.10's sync server can
/// deadlock here: a request that arrives as the server shuts down (seen: a client sent one and
/// hung up) leaves its connection threads waiting on each other while `shutdown` joins them, and
/// an injection server stuck there never exits (found by the hook tests, 2026-11-26). Past the
/// grace period its threads are left to the process's exit.
fn shutdown_bounded(server: ttrpc::Server) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("api-shutdown".into())
        .spawn(move || {
            server.shutdown();
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            if rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
                tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "the API server's connections did not shut down; leaving them to exit"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot shut the API server down"),
    }
}

/// Wakes [`ApiServer::wait_recovered`] (see [`ApiServer::notifier`]).
#[derive(Clone)]
pub struct RecoveredNotifier(Arc<(Mutex<RecoverState>, Condvar)>);

impl std::fmt::Debug for RecoveredNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveredNotifier")
    }
}

impl RecoveredNotifier {
    /// The injection is recovered: `wait_recovered` returns true (without waiting for a caller
    /// to close its connection).
    pub fn notify(&self) {
        let (lock, cv) = &*self.0;
        if let Ok(mut st) = lock.lock()
            && st.done.is_none()
        {
            st.done = Some(None);
        }
        cv.notify_all();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait (at most `grace`) until the peer of a connected socket has closed its end.
fn wait_peer_closed(fd: OwnedFd, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(&fd, PollFlags::RDHUP | PollFlags::HUP)];
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => {
                let ev = fds[0].revents();
                if ev.intersects(
                    PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL,
                ) || ev.is_empty()
                {
                    // Closed, or timed out (empty).
                    return;
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}
