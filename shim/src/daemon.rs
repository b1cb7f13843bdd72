//! The shim daemon: one ttrpc server on the socket containerd knows (fd 3). The task API is
//! forwarded, byte for byte, to runc's shim; `Create`, `Delete` and `Shutdown` are also looked
//! at: faults from the `dev.iochaos.spec` annotation are made live after runc created the
//! container and before containerd can start it, and removed when it is deleted. The Chaos API
//! is served next to the task API, per container.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engine::adapters::chaosfs::{ChaosLauncher, ChaosServer};
use engine::adapters::start::StartSwapper;
use engine::api::proto::chaos::{
    RecoverRequest, RecoverResponse, StatusRequest, StatusResponse, UpdateRulesRequest,
};
use engine::api::proto::chaos_ttrpc;
use engine::api::{ApiServer, ChaosService, RecoveredNotifier};
use engine::inject::{InjectRequest, Injection, TargetSpec, inject};
use engine::journal::{InjectionId, Journal};
use engine::mountinfo::SharedPolicy;
use nix::sys::signal::{SigSet, Signal};
use ttrpc::proto::ResponseInit;
use ttrpc::{Code, MethodHandler, Request, Response, TtrpcContext};

use crate::error::{Error, Result, one_line};
use crate::wire;

type Live = Injection<ChaosServer, StartSwapper>;

/// The task API's methods (v2; v3 has the same).
const TASK_METHODS: [&str; 17] = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
];
const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// How long a caller of `Recover` has to read the answer before the injection's socket closes.
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// How long the answer to `Shutdown` has to leave before the daemon exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// Worker threads per connection: `Wait` calls block one each.
const MAX_WORKERS: usize = 64;

/// An injection the shim made, and how to end its per-injection API server.
struct Made {
    inj: Arc<Live>,
    notifier: RecoveredNotifier,
}

#[derive(Default)]
struct State {
    /// Containers created and not deleted.
    containers: HashSet<String>,
    /// Container id → its injection.
    injections: HashMap<String, Arc<Made>>,
}

pub struct Shim {
    namespace: String,
    runc: ttrpc::Client,
    runc_address: String,
    journal: Journal,
    socket: PathBuf,
    state: Mutex<State>,
    exiting: AtomicBool,
}

/// The journal directory: `$IOCHAOS_RUN_DIR`, default `/run/iochaos` (as for `iochaos`).
pub fn journal() -> Result<Journal> {
    let dir = std::env::var_os("IOCHAOS_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from(engine::journal::DEFAULT_DIR),
            PathBuf::from,
        );
    Ok(Journal::open(dir)?)
}

fn status_response(code: Code, message: impl ToString) -> Response {
    Response::init_status(ttrpc::get_status(code, message))
}

/// Run the daemon. Call from the main thread before any other thread exists. Returns only on
/// errors before serving; afterwards the process exits from [`Shim::exit`].
pub fn serve(namespace: &str, runc_address: &str, socket: PathBuf) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| Error::io("sigprocmask", e.into()))?;
    let rpc = |source| Error::Rpc {
        address: runc_address.to_owned(),
        source,
    };
    let runc = ttrpc::Client::connect(runc_address).map_err(rpc)?;
    let shim = Arc::new(Shim {
        namespace: namespace.to_owned(),
        runc,
        runc_address: runc_address.to_owned(),
        journal: journal()?,
        socket,
        state: Mutex::new(State::default()),
        exiting: AtomicBool::new(false),
    });
    let runc_pid = shim.runc_pid()?;

    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    for service in TASK_SERVICES {
        for method in TASK_METHODS {
            methods.insert(
                format!("/{service}/{method}"),
                Box::new(Task {
                    shim: shim.clone(),
                    method,
                }),
            );
        }
    }
    methods.extend(chaos_ttrpc::create_chaos(Arc::new(Chaos {
        shim: shim.clone(),
    })));
    let mut server = ttrpc::Server::new()
        .add_listener(crate::sys::LISTENER_FD)
        .map_err(|source| Error::Rpc {
            address: shim.socket.display().to_string(),
            source,
        })?
        .set_thread_count_max(MAX_WORKERS)
        .register_service(methods);
    server.start().map_err(|source| Error::Rpc {
        address: shim.socket.display().to_string(),
        source,
    })?;
    tracing::info!(runc = %runc_address, runc_pid, "serving");

    {
        let shim = shim.clone();
        std::thread::Builder::new()
            .name("runc-shim".into())
            .spawn(move || {
                while !engine::target::wait_exit(runc_pid, Duration::from_secs(3600)) {}
                if !shim.exiting.load(Ordering::SeqCst) {
                    tracing::warn!(runc_pid, "the runc shim exited: exiting");
                }
                shim.exit(0);
            })
            .map_err(|e| Error::io("spawning a thread", e))?;
    }
    // Signals: recover everything, then go (containerd then cleans up with `delete`).
    if let Ok(sig) = signals.wait() {
        tracing::info!(signal = sig.as_str(), "exiting");
    }
    shim.exit(0)
}

impl Shim {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the cleanup paths: the state stays consistent (every
        // change is a single insert or remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runc shim's pid (task API `Connect`).
    fn runc_pid(&self) -> Result<u32> {
        let mut req = Request::new();
        req.service = TASK_SERVICES[0].into();
        req.method = "Connect".into();
        req.timeout_nano = 10_000_000_000;
        req.payload = wire::encode(&wire::ConnectRequest::new())?;
        let res = self.runc.request(req).map_err(|source| Error::Rpc {
            address: self.runc_address.clone(),
            source,
        })?;
        Ok(wire::decode::<wire::ConnectResponse>(&res.payload)?.shim_pid)
    }

    fn forward(&self, req: Request) -> Response {
        match self.runc.request(req) {
            Ok(res) => res,
            Err(ttrpc::Error::RpcStatus(s)) => Response::init_status(s),
            Err(e) => status_response(Code::UNAVAILABLE, format!("runc shim: {e}")),
        }
    }

    fn create(self: &Arc<Self>, req: Request) -> Response {
        let (id, bundle) = match wire::decode::<wire::CreateTaskRequest>(&req.payload) {
            Ok(r) => (r.id, r.bundle),
            Err(e) => return status_response(Code::INVALID_ARGUMENT, e),
        };
        // A bad annotation fails the create before runc sees it.
        let spec = match crate::spec::of_bundle(Path::new(&bundle)) {
            Ok(s) => s,
            Err(e) => return status_response(e.code(), format!("iochaos: {}", one_line(&e))),
        };
        let res = self.forward(req);
        if res.non_ok().is_some() {
            return res;
        }
        self.lock().containers.insert(id.clone());
        let Some(spec) = spec else {
            return res;
        };
        let pid = match wire::decode::<wire::CreateTaskResponse>(&res.payload) {
            Ok(r) => r.pid,
            Err(e) => return status_response(Code::INTERNAL, e),
        };
        // The container is created, its workload not started: containerd calls Start once we
        // answer. Failing here makes containerd delete it.
        match self.inject(&id, Path::new(&bundle), pid, spec) {
            Ok(inj) => {
                tracing::info!(container = %id, injection = %inj, "faults live before start");
                res
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %one_line(&e), "injection failed");
                status_response(
                    e.code(),
                    format!("iochaos: injecting into {id}: {}", one_line(&e)),
                )
            }
        }
    }

    fn inject(
        self: &Arc<Self>,
        id: &str,
        bundle: &Path,
        pid: u32,
        spec: crate::spec::Parsed,
    ) -> Result<InjectionId> {
        // containerd's task directory is <state>/io.containerd.runtime.v2.task/<ns>/<id>.
        let state_dir = bundle.strip_suffix_path(
            &Path::new("io.containerd.runtime.v2.task")
                .join(&self.namespace)
                .join(id),
        );
        let target = match state_dir {
            Some(state_dir) => TargetSpec::Container {
                id: id.to_owned(),
                namespace: self.namespace.clone(),
                state_dir,
            },
            None => TargetSpec::Pid(pid),
        };
        let req = InjectRequest {
            target,
            path: spec.path,
            spec: spec.spec,
            shared: SharedPolicy::Refuse,
            host_namespace: engine::policy::HostNamespace::Refuse,
        };
        let inj = Arc::new(inject(
            &self.journal,
            &ChaosLauncher::default(),
            StartSwapper::default(),
            &req,
        )?);
        let injection = inj.id();
        let api = match ApiServer::serve(&self.journal.socket_path(&injection), inj.clone()) {
            Ok(a) => a,
            Err(e) => {
                if let Err(r) = inj.recover() {
                    tracing::warn!(error = %r, "recovering after the API failed to start");
                }
                return Err(e.into());
            }
        };
        let made = Arc::new(Made {
            inj,
            notifier: api.notifier(),
        });
        self.lock().injections.insert(id.to_owned(), made.clone());
        let (shim, container, duration) = (self.clone(), id.to_owned(), spec.duration);
        std::thread::Builder::new()
            .name("injection".into())
            .spawn(move || {
                if !api.wait_recovered(duration, ANSWER_GRACE) {
                    recover_quietly(&container, &made, "duration over");
                }
                let mut st = shim.lock();
                if st
                    .injections
                    .get(&container)
                    .is_some_and(|m| Arc::ptr_eq(m, &made))
                {
                    st.injections.remove(&container);
                }
                drop(st);
                api.shutdown();
            })
            .map_err(|e| Error::io("spawning a thread", e))?;
        Ok(injection)
    }

    fn delete(&self, req: Request) -> Response {
        let ids = wire::decode::<wire::DeleteRequest>(&req.payload);
        let res = self.forward(req);
        let Ok(wire::DeleteRequest { id, exec_id, .. }) = ids else {
            return res;
        };
        let gone = res.non_ok().is_none_or(|s| s.code() == Code::NOT_FOUND);
        if exec_id.is_empty() && gone {
            let made = {
                let mut st = self.lock();
                st.containers.remove(&id);
                st.injections.remove(&id)
            };
            if let Some(made) = made {
                recover_quietly(&id, &made, "container deleted");
            }
        }
        res
    }

    fn shutdown(self: &Arc<Self>, req: Request) -> Response {
        // runc's shim exits on this call when it serves no container, as we do.
        let last = self.lock().containers.is_empty();
        if last {
            self.exiting.store(true, Ordering::SeqCst);
        }
        let res = self.forward(req);
        if last {
            let shim = self.clone();
            // Answer first (containerd takes a closed connection as done, too).
            let _ = std::thread::Builder::new().spawn(move || {
                std::thread::sleep(SHUTDOWN_GRACE);
                shim.exit(0);
            });
        }
        res
    }

    /// Recover every injection, remove our socket (and runc's, once it is gone), exit.
    fn exit(&self, code: i32) -> ! {
        self.exiting.store(true, Ordering::SeqCst);
        let made: Vec<(String, Arc<Made>)> = self.lock().injections.drain().collect();
        for (container, m) in made {
            recover_quietly(&container, &m, "shim exiting");
            let _ = std::fs::remove_file(self.journal.socket_path(&m.inj.id()));
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(runc) = self.runc_address.strip_prefix("unix://")
            && std::os::unix::net::UnixStream::connect(runc).is_err()
        {
            let _ = std::fs::remove_file(runc);
        }
        std::process::exit(code);
    }

    /// The injection a Chaos call is about: the container named in the metadata, or the only
    /// one.
    fn made_for(&self, ctx: &TtrpcContext) -> ttrpc::Result<(String, Arc<Made>)> {
        let st = self.lock();
        let named = ctx
            .metadata
            .get(engine::api::shim::CONTAINER_KEY)
            .and_then(|v| v.first());
        let found = match named {
            Some(c) => st.injections.get(c).map(|m| (c.clone(), m.clone())),
            None if st.injections.len() == 1 => st
                .injections
                .iter()
                .next()
                .map(|(c, m)| (c.clone(), m.clone())),
            None if st.injections.is_empty() => None,
            None => {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "this shim injected into several containers: name one in the metadata \
                         key {}",
                        engine::api::shim::CONTAINER_KEY
                    ),
                )));
            }
        };
        found.ok_or_else(|| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::NOT_FOUND,
                format!(
                    "no iochaos injection in container {}",
                    named.map_or("(any)", String::as_str)
                ),
            ))
        })
    }
}

fn recover_quietly(container: &str, made: &Made, why: &str) {
    match made.inj.recover() {
        Ok(r) => tracing::info!(
            container,
            id = %made.inj.id(),
            why,
            restored = r.restored.len(),
            failed = r.failed.len(),
            "recovered"
        ),
        Err(engine::Error::Recovered { .. }) => {}
        Err(e) => tracing::warn!(container, id = %made.inj.id(), why, error = %e, "recover failed"),
    }
    made.notifier.notify();
}

trait StripSuffixPath {
    fn strip_suffix_path(&self, suffix: &Path) -> Option<PathBuf>;
}

impl StripSuffixPath for Path {
    /// `self` without the trailing components `suffix` (None if it does not end with them).
    fn strip_suffix_path(&self, suffix: &Path) -> Option<PathBuf> {
        let mine: Vec<_> = self.components().collect();
        let theirs: Vec<_> = suffix.components().collect();
        let keep = mine.len().checked_sub(theirs.len())?;
        (mine[keep..] == theirs[..]).then(|| mine[..keep].iter().collect())
    }
}

/// One task API method.
struct Task {
    shim: Arc<Shim>,
    method: &'static str,
}

impl MethodHandler for Task {
    fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
        let res = match self.method {
            "Create" => self.shim.create(req),
            "Delete" => self.shim.delete(req),
            "Shutdown" => self.shim.shutdown(req),
            _ => self.shim.forward(req),
        };
        ctx.respond(ctx.mh.stream_id, res)
    }
}

/// The Chaos API, per container.
struct Chaos {
    shim: Arc<Shim>,
}

impl chaos_ttrpc::Chaos for Chaos {
    fn status(&self, ctx: &TtrpcContext, _: StatusRequest) -> ttrpc::Result<StatusResponse> {
        Ok((&self.shim.made_for(ctx)?.1.inj.status()?).into())
    }

    fn update_rules(
        &self,
        ctx: &TtrpcContext,
        req: UpdateRulesRequest,
    ) -> ttrpc::Result<StatusResponse> {
        Ok((&self
            .shim
            .made_for(ctx)?
            .1
            .inj
            .update_rules(&req.spec_json)?)
            .into())
    }

    fn recover(&self, ctx: &TtrpcContext, _: RecoverRequest) -> ttrpc::Result<RecoverResponse> {
        let (container, made) = self.shim.made_for(ctx)?;
        let report = made.inj.recover()?;
        tracing::info!(container, id = %made.inj.id(), "recovered over the Chaos API");
        made.notifier.notify();
        Ok((&report).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_from_bundle() {
        let b = Path::new("/run/containerd/io.containerd.runtime.v2.task/default/c1");
        let s = Path::new("io.containerd.runtime.v2.task/default/c1");
        assert_eq!(
            b.strip_suffix_path(s),
            Some(PathBuf::from("/run/containerd"))
        );
        assert_eq!(Path::new("/x/default/c1").strip_suffix_path(s), None);
        assert_eq!(Path::new("c1").strip_suffix_path(s), None);
    }
}
