//! The stages: inject at `createRuntime` (or `prestart`), clean up at `poststop`, nothing
//! elsewhere.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use engine::adapters::start::StartSwapper;
use engine::annotation::ContainerSpec;
use engine::api::ChaosClient;
use engine::inject::recover_from_journal;
use engine::journal::{Entry, Journal};
use engine::target::OCI_NAMESPACE;
use engine::target::ProcStat;

use crate::config::HookConfig;
use crate::error::{Error, Result, one_line};
use crate::oci::{Action, Container, Stage, read_state};
use crate::server::{self, ServeRequest};

/// Where the hook finds its files. Runtimes run hooks with the environment of the hook's
/// registration only (config.json `hooks.*.env`, hooks.d `hook.env`), so that is where tests
/// set these.
#[derive(Debug, Clone)]
pub struct Env {
    /// `$IOCHAOS_HOOK_CONFIG`, default `/etc/iochaos/hook.toml`.
    pub config: PathBuf,
    /// `$IOCHAOS_RUN_DIR`, default `/run/iochaos` (the journal and sockets, as for `iochaos`).
    pub run_dir: PathBuf,
    /// `$IOCHAOS_SERVER_LOG`: the injection server's stderr (overrides `server_log`).
    pub server_log: Option<PathBuf>,
}

impl Env {
    pub fn from_env() -> Env {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            config: var("IOCHAOS_HOOK_CONFIG")
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH)),
            run_dir: var("IOCHAOS_RUN_DIR")
                .unwrap_or_else(|| PathBuf::from(engine::journal::DEFAULT_DIR)),
            server_log: var("IOCHAOS_SERVER_LOG"),
        }
    }
}

/// What the hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: a stage without work, or a container without the annotation.
    Nothing,
    /// Faults are live; the injection id.
    Injected(String),
    /// Already injected by an earlier stage of the same creation.
    AlreadyInjected(String),
    /// Injections removed at poststop.
    Removed(usize),
}

/// Run the hook for `stage`. Stages without work return at once (the binary drains stdin
/// for them first: crun fails when a hook leaves its state unread).
pub fn run(stage: Stage, stdin: impl Read, env: &Env) -> Result<Outcome> {
    match stage.action() {
        Action::Nothing => Ok(Outcome::Nothing),
        Action::Inject => {
            let mut c = Container::new(read_state(stdin)?);
            let Some(spec) = c.annotation(crate::ANNOTATION)? else {
                return Ok(Outcome::Nothing);
            };
            inject(stage, &mut c, &spec, env)
        }
        Action::Cleanup => {
            let mut c = Container::new(read_state(stdin)?);
            if c.annotation(crate::ANNOTATION)?.is_none() {
                return Ok(Outcome::Nothing);
            }
            cleanup(c.id(), env)
        }
    }
}

/// The annotation's spec, validated (the shim's parser: [`engine::annotation::parse`]).
pub fn parse_spec(text: &str) -> Result<ContainerSpec> {
    engine::annotation::parse(text).map_err(|e| Error::InvalidSpec { source: e.into() })
}

fn inject(stage: Stage, c: &mut Container, spec: &str, env: &Env) -> Result<Outcome> {
    let cfg = HookConfig::load(&env.config)?;
    let annotations = c.annotations()?;
    cfg.check_container(c.id(), &annotations)?;
    let parsed = parse_spec(spec)?;
    cfg.check_path(&parsed.path)?;
    crate::privileges::require(crate::privileges::INJECT)?;
    let Some(pid) = c.pid() else {
        return Err(Error::NoPid {
            stage: stage.name(),
        });
    };
    let journal = Journal::open(&env.run_dir)?;
    // Registered on both createRuntime and prestart: the first one injects.
    let start_time = ProcStat::read(pid).map_err(engine::Error::from)?.start_time;
    if let Some(e) = journal
        .list()?
        .into_iter()
        .find(|e| is_ours(e, c.id()) && e.target.pid == pid && e.target.start_time == start_time)
    {
        return Ok(Outcome::AlreadyInjected(e.id.to_string()));
    }
    let rootfs = c.rootfs()?;
    let req = ServeRequest {
        container_id: c.id().to_owned(),
        pid,
        rootfs,
        path: parsed.path,
        spec: parsed.spec,
        duration_ms: parsed
            .duration
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        allow_shared: cfg.allow_shared_mounts,
        allowed_paths: cfg.allowed_paths.clone(),
        config: cfg.source.clone(),
        run_dir: journal.dir().to_owned(),
    };
    let log = env.server_log.as_ref().or(cfg.server_log.as_ref());
    let id = server::start(&req, log)?;
    tracing::info!(container = %c.id(), %id, "injected");
    Ok(Outcome::Injected(id.to_string()))
}

/// An entry a hook made for container `id`.
fn is_ours(e: &Entry, id: &str) -> bool {
    e.target
        .container
        .as_ref()
        .is_some_and(|c| c.id == id && c.namespace == OCI_NAMESPACE)
}

/// True while some process the entry names still runs (same pid and start time).
fn target_alive(e: &Entry) -> bool {
    std::iter::once((e.target.pid, e.target.start_time))
        .chain(e.pids.iter().map(|p| (p.pid, p.start_time)))
        .any(|(pid, st)| ProcStat::read(pid).is_ok_and(|s| s.start_time == st && s.state != 'Z'))
}

/// How long a server has to answer `Recover`.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a recovered server has to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn cleanup(container_id: &str, env: &Env) -> Result<Outcome> {
    if !env.run_dir.exists() {
        return Ok(Outcome::Removed(0));
    }
    let journal = Journal::open(&env.run_dir)?;
    let mut removed = 0;
    let mut failed = Vec::new();
    for e in journal
        .list()?
        .into_iter()
        .filter(|e| is_ours(e, container_id))
    {
        if target_alive(&e) {
            // Another container with the same id (another runtime root) that still runs.
            tracing::info!(id = %e.id, "target still running, left alone");
            continue;
        }
        match remove(&journal, &e) {
            Ok(()) => removed += 1,
            Err(err) => failed.push(format!("{}: {}", e.id, one_line(&err))),
        }
    }
    // Servers that recovered by themselves (they saw the container exit and removed their
    // journal entry) may still be shutting down: wait for them, so nothing is left once the
    // runtime has deleted the container.
    for pid in servers_of(container_id, journal.dir()) {
        if !engine::target::wait_exit(pid, EXIT_TIMEOUT) {
            tracing::warn!(pid, "server did not exit: SIGTERM");
            terminate(pid);
        }
    }
    if let Some(first) = failed.first() {
        return Err(Error::Cleanup {
            id: container_id.to_owned(),
            failed: failed.len(),
            first: first.clone(),
        });
    }
    Ok(Outcome::Removed(removed))
}

/// Recover one injection whose container is gone: through its server when it answers (it may
/// be recovering by itself already, having seen the container exit), then from the journal if
/// anything is left; wait for the server to exit.
fn remove(journal: &Journal, e: &Entry) -> Result<()> {
    let server = e.server_pid.filter(|p| *p > 0 && server_alive(*p));
    if let Some(pid) = server {
        if let Ok(client) = ChaosClient::connect(&journal.socket_path(&e.id))
            && let Err(err) = client.recover()
        {
            tracing::debug!(id = %e.id, error = %err, "recover over the API");
        }
        if !engine::target::wait_exit(pid, RECOVER_TIMEOUT + EXIT_TIMEOUT) {
            tracing::warn!(id = %e.id, pid, "server did not exit: SIGTERM");
            terminate(pid);
        }
    }
    match journal.read(&e.id) {
        Ok(_) => {
            recover_from_journal(journal, &e.id, &StartSwapper::default())?;
        }
        Err(engine::Error::NoSuchInjection { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    // A socket left by a killed server.
    let _ = std::fs::remove_file(journal.socket_path(&e.id));
    Ok(())
}

/// SIGTERM makes a server recover and exit; wait for it.
fn terminate(pid: u32) {
    // A number that is no pid must not become a negative one (a process group for kill(2)).
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(raw, rustix::process::Signal::TERM);
    engine::target::wait_exit(pid, EXIT_TIMEOUT);
}

/// The request of the injection server `pid`, if it is one (not a process that reused the
/// pid): `iochaos-hook __serve REQUEST`.
fn server_request(pid: u32) -> Option<ServeRequest> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    if args.nth(1)? != server::SERVE_ARG.as_bytes() {
        return None;
    }
    serde_json::from_slice(args.next()?).ok()
}

fn server_alive(pid: u32) -> bool {
    server_request(pid).is_some()
}

/// Injection servers of container `id` with journal `run_dir` whose container init is gone.
fn servers_of(id: &str, run_dir: &std::path::Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            server_request(*pid).is_some_and(|r| {
                r.container_id == id
                    && r.run_dir == run_dir
                    && !ProcStat::read(r.pid).is_ok_and(|s| s.state != 'Z')
            })
        })
        .collect()
}
