//! `iochaos inject`, and the injection server it starts (`iochaos __serve`, hidden).
//!
//! `inject` validates everything it can, then starts the server as a new session (it outlives
//! the CLI) with the request as its one argument and a pipe as its stdout. The server injects
//! (journal first), serves the Chaos API, and writes one line on that pipe: `ok ID` once faults
//! are live and the API answers, or `err REASON` after undoing everything. `inject` waits for
//! that line, never for a fixed time.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use engine::api::ChaosClient;
use engine::inject::{InjectRequest, TargetSpec};
use engine::journal::Journal;
use engine::mountinfo::SharedPolicy;
use engine::policy::HostNamespace;
use engine::target::ContainerRef;
use serde_json::Value;

use crate::args::{InjectArgs, SpecSource, TargetArg, Usage};
use crate::run::{Needs, check_privileges, load_spec};

/// The journal and socket directory: `/run/iochaos`, or `$IOCHAOS_RUN_DIR` (tests).
pub fn journal() -> anyhow::Result<Journal> {
    let dir = std::env::var_os("IOCHAOS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(engine::journal::DEFAULT_DIR));
    Journal::open(&dir).with_context(|| format!("opening the journal {}", dir.display()))
}

/// The spec of `source` as JSON, validated. A bad spec is a usage error (exit 2), as a bad rule
/// flag is.
pub fn spec_json(source: &SpecSource) -> anyhow::Result<Value> {
    let spec = load_spec(source)?;
    serde_json::to_value(&spec).context("encoding the spec")
}

/// What `inject` hands to the server.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeRequest {
    pub pid: Option<u32>,
    pub container: Option<(String, String, PathBuf)>,
    /// With `pid`: the container a runtime named (`docker://`, `podman://`) as (namespace, id).
    pub recorded_as: Option<(String, String)>,
    pub path: PathBuf,
    pub spec: Value,
    pub duration_ms: Option<u64>,
    pub allow_shared: bool,
    pub host_namespace: bool,
    pub run_dir: PathBuf,
}

pub fn inject(args: InjectArgs) -> anyhow::Result<i32> {
    let mut spec = spec_json(&args.spec)?;
    let spec_path = spec.get("path").and_then(Value::as_str).map(PathBuf::from);
    let path = match (&args.path, spec_path) {
        (Some(p), Some(s)) if *p != s => {
            return Err(Usage(format!(
                "--path {} and the spec's path {} differ",
                p.display(),
                s.display()
            ))
            .into());
        }
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s,
        (None, None) => {
            return Err(Usage("inject needs --path PATH (or a spec with \"path\")".into()).into());
        }
    };
    if !path.is_absolute() {
        return Err(Usage(format!(
            "the spec's path {} must be absolute (as seen inside the target)",
            path.display()
        ))
        .into());
    }
    if let Some(obj) = spec.as_object_mut() {
        // The status then shows the path in its spec, as injections by the hook and the shim do.
        obj.insert(
            "path".into(),
            Value::String(path.to_string_lossy().into_owned()),
        );
    }
    let duration_text = args.duration.clone().or_else(|| {
        spec.get("duration")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let duration = duration_text
        .as_deref()
        .map(|d| chaosfs::rules::Spec::parse_duration(d).map_err(|e| Usage(e.to_string())))
        .transpose()?;
    if let (Some(d), Some(obj)) = (&duration_text, spec.as_object_mut()) {
        obj.insert("duration".into(), Value::String(d.clone()));
    }
    check_privileges(Needs::MountAndTrace)?;
    // Until faults are live: every step wakes another thread or process (see CpuLatency).
    let _latency = engine::adapters::fdswap::CpuLatency::hold();
    let journal = journal()?;
    let (pid, container, recorded_as) = match &args.target {
        TargetArg::Pid(p) => (Some(*p), None, None),
        TargetArg::Container {
            id,
            namespace,
            state_dir,
        } => {
            let named = crate::targets::resolve(id, namespace)?;
            match crate::targets::running_pid(id, &named)? {
                Some(pid) => (Some(pid), None, Some((named.namespace, named.id))),
                None => (
                    None,
                    Some((named.id, named.namespace, state_dir.clone())),
                    None,
                ),
            }
        }
    };
    let req = ServeRequest {
        pid,
        container,
        recorded_as,
        path,
        spec,
        // At most MAX_DURATION (parse_duration checks it), so the milliseconds fit.
        duration_ms: duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        allow_shared: args.allow_shared,
        host_namespace: args.host_namespace,
        run_dir: journal.dir().to_owned(),
    };
    let progress = crate::progress::Progress::start(format!("injecting at {}", req.path.display()));
    let id = start_server(&req)?;
    drop(progress);
    if args.json {
        let status = ChaosClient::connect(&journal.socket_path(&id))
            .and_then(|c| c.status())
            .with_context(|| format!("status of injection {id}"))?;
        crate::output::print_json(&crate::output::injection_json(&status, true)?)?;
    } else {
        println!("{id}");
    }
    Ok(0)
}

/// Start the injection server and wait for its one line. Returns the injection id.
fn start_server(req: &ServeRequest) -> anyhow::Result<engine::journal::InjectionId> {
    let exe = std::env::current_exe().context("finding the iochaos executable")?;
    let stderr = match std::env::var_os("IOCHAOS_SERVER_LOG") {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .with_context(|| format!("opening {}", PathBuf::from(&p).display()))?,
        ),
        None => Stdio::null(),
    };
    let mut command = Command::new(exe);
    command
        .arg("__serve")
        .arg(serde_json::to_string(req).context("encoding the request")?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    crate::sys::new_session_in_child(&mut command);
    let mut child = command.spawn().context("starting the injection server")?;
    let out = child
        .stdout
        .take()
        .context("the injection server's readiness pipe")?;
    let line = read_ready_line(&out, child.id());
    let line = match line {
        Ok(Some(l)) => l,
        Ok(None) => return Err(server_died(&mut child, &req.run_dir)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if let Some(id) = line.strip_prefix("ok ") {
        return engine::journal::InjectionId::parse(id).context("the injection server's answer");
    }
    // The server exits right after reporting an error: reap it.
    let status = child.wait().context("waiting for the injection server")?;
    match line.strip_prefix("err ") {
        Some(reason) => bail!("{reason}"),
        None => bail!("the injection server exited ({status}) before faults were live"),
    }
}

/// Wait for the server's one line on `pipe`, watching the server itself (a pidfd) at the same
/// time: `None` when it died (or closed the pipe) without a whole line.
fn read_ready_line(pipe: &std::process::ChildStdout, pid: u32) -> anyhow::Result<Option<String>> {
    use rustix::event::{PollFd, PollFlags, poll};
    let pidfd = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("the injection server's pid")
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .context("watching the injection server (pidfd_open)")
        })?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let mut fds = [
            PollFd::new(pipe, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(std::io::Error::from(e)).context("waiting for the injection server");
            }
        }
        let pipe_ready = !fds[0].revents().is_empty();
        let exited = !fds[1].revents().is_empty();
        if pipe_ready {
            let n = rustix::io::read(pipe, &mut chunk)
                .map_err(std::io::Error::from)
                .context("reading from the injection server")?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
            }
        } else if exited {
            return Ok(None);
        }
    }
}

/// The server died before it said whether faults are live: undo what it left (its journal
/// entry, a mount it made), then say so.
fn server_died(child: &mut std::process::Child, run_dir: &std::path::Path) -> anyhow::Error {
    let pid = child.id();
    let how = match child.wait() {
        Ok(st) => match std::os::unix::process::ExitStatusExt::signal(&st) {
            Some(sig) => format!(
                "was killed by {}",
                nix::sys::signal::Signal::try_from(sig)
                    .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
            ),
            None => format!("exited ({st})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    };
    let cleanup = Journal::open(run_dir)
        .map_err(anyhow::Error::from)
        .and_then(|j| {
            let mine: Vec<_> = j
                .list()?
                .into_iter()
                .filter(|e| e.server_pid == Some(pid))
                .collect();
            for e in &mine {
                engine::inject::recover_from_journal(
                    &j,
                    &e.id,
                    &engine::adapters::fdswap::FdSwapper::default(),
                )
                .with_context(|| format!("undoing injection {}", e.id))?;
            }
            Ok(mine.len())
        });
    match cleanup {
        Ok(0) => anyhow!(
            "the injection server (pid {pid}) {how} before faults were live; it had changed nothing"
        ),
        Ok(_) => anyhow!(
            "the injection server (pid {pid}) {how} before faults were live; what it had done is undone"
        ),
        Err(e) => anyhow!(
            "the injection server (pid {pid}) {how} before faults were live, and undoing what it left failed: {}; run `iochaos recover --all`",
            one_line(e.as_ref())
        ),
    }
}

/// `iochaos __serve REQUEST`: the injection server.
pub fn serve(request: &str) -> anyhow::Result<i32> {
    let req: ServeRequest = serde_json::from_str(request).context("the server request")?;
    let journal = Journal::open(&req.run_dir).context("opening the journal")?;
    let target = match (req.pid, req.container, req.recorded_as) {
        (Some(pid), None, None) => TargetSpec::Pid(pid),
        (Some(pid), None, Some((namespace, id))) => TargetSpec::Runtime {
            pid,
            container: ContainerRef { id, namespace },
        },
        (None, Some((id, namespace, state_dir)), None) => TargetSpec::Container {
            id,
            namespace,
            state_dir,
        },
        _ => bail!("the server request needs exactly one of pid and container"),
    };
    let inject = InjectRequest {
        target,
        path: req.path,
        spec: req.spec,
        shared: if req.allow_shared {
            SharedPolicy::Allow
        } else {
            SharedPolicy::Refuse
        },
        host_namespace: if req.host_namespace {
            HostNamespace::Allow
        } else {
            HostNamespace::Refuse
        },
    };
    let duration = req.duration_ms.map(Duration::from_millis);
    engine::server::serve(&journal, &inject, duration, |r| {
        let line = match r {
            Ok(status) => format!("ok {}\n", status.id),
            Err(e) => format!("err {}\n", one_line(e)),
        };
        let mut out = std::io::stdout().lock();
        // Nobody to tell if the CLI is gone.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    })?;
    Ok(0)
}

pub use engine::error::one_line;
