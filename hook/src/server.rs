//! The injection server of a hook-started injection: `iochaos-hook __serve REQUEST`, started
//! by the hook in a new session (it outlives the hook and the runtime), stdin and stderr away
//! from the runtime's pipes (a runtime waits for the hook's output to close), stdout a pipe on
//! which it writes one line: `ok ID` once faults are live and the Chaos API answers, or
//! `err REASON` after undoing everything. The hook waits for that line, never for a time.
//!
//! The server is [`engine::server::serve_with`], the same as `iochaos inject` runs: same
//! journal entry, same socket, so `iochaos status/update/recover` work on it. It recovers by
//! itself when every process of the container has exited, on SIGTERM, when the spec's
//! `duration` is over, or when asked over the API.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use engine::adapters::start::StartSwapper;
use engine::inject::{InjectRequest, TargetSpec};
use engine::journal::{InjectionId, Journal};
use engine::mountinfo::SharedPolicy;
use engine::resolve::resolve_dir_in_root;
use engine::target::Target;
use serde_json::Value;

use crate::config::check_path;
use crate::error::{Error, Result, one_line};

/// The argument that makes `iochaos-hook` the injection server.
pub const SERVE_ARG: &str = "__serve";

/// What the hook hands to its server (one JSON argument).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeRequest {
    pub container_id: String,
    pub pid: u32,
    /// The container's rootfs, absolute, as the runtime names it.
    pub rootfs: PathBuf,
    /// The spec's path, as the container sees it.
    pub path: PathBuf,
    pub spec: Value,
    pub duration_ms: Option<u64>,
    pub allow_shared: bool,
    /// The admin's allowed path prefixes, checked again on the resolved path.
    pub allowed_paths: Option<Vec<PathBuf>>,
    /// The admin config's path (for messages).
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

/// Start the server and wait for its line. Returns the injection id.
pub fn start(req: &ServeRequest, log: Option<&PathBuf>) -> Result<InjectionId> {
    let exe = std::env::current_exe().map_err(Error::Spawn)?;
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, e))?,
        ),
        None => Stdio::null(),
    };
    let request = serde_json::to_string(req).map_err(|e| Error::Spawn(e.into()))?;
    let mut command = Command::new(exe);
    command
        .arg(SERVE_ARG)
        .arg(request)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    crate::sys::new_session_in_child(&mut command);
    let mut child = command.spawn().map_err(Error::Spawn)?;
    let Some(out) = child.stdout.take() else {
        return Err(Error::Spawn(std::io::Error::other("no readiness pipe")));
    };
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(Error::Spawn)?;
    let line = line.trim_end();
    if let Some(id) = line.strip_prefix("ok ") {
        // The server lives on in its own session; nobody reaps it but init.
        drop(child);
        return Ok(InjectionId::parse(id)?);
    }
    // The server exits right after reporting an error (or has died): reap it.
    let status = child.wait().map_err(Error::Spawn)?;
    match line.strip_prefix("err ") {
        Some(reason) => Err(Error::Server(reason.to_owned())),
        None => Err(Error::ServerExited(status)),
    }
}

/// `iochaos-hook __serve REQUEST`: the injection server. Call from the main thread, before any
/// other thread exists.
pub fn serve(request: &str) -> anyhow::Result<()> {
    let req: ServeRequest = serde_json::from_str(request)?;
    let report = |line: String| {
        let mut out = std::io::stdout().lock();
        // Nobody to tell if the hook is gone.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    };
    let prepared = prepare(&req);
    let (journal, inject) = match prepared {
        Ok(p) => p,
        Err(e) => {
            report(format!("err {}\n", one_line(&e)));
            return Err(e.into());
        }
    };
    let duration = req.duration_ms.map(Duration::from_millis);
    engine::server::serve_with(&journal, &inject, duration, StartSwapper::default(), |r| {
        report(match r {
            Ok(status) => format!("ok {}\n", status.id),
            Err(e) => format!("err {}\n", one_line(e)),
        })
    })?;
    Ok(())
}

/// Resolve the path inside the container and check it against the admin's prefixes (a
/// symlink must not lead out of them).
fn prepare(req: &ServeRequest) -> Result<(Journal, InjectRequest)> {
    let journal = Journal::open(&req.run_dir)?;
    let target = Target::from_oci_create(req.pid, &req.rootfs, &req.container_id)?;
    let canonical = resolve_dir_in_root(target.root_fd(), &req.path)?.path;
    drop(target);
    if let Some(allowed) = &req.allowed_paths
        && canonical != req.path
    {
        check_path(allowed, &req.config, &canonical).map_err(|_| Error::PathDenied {
            path: PathBuf::from(format!(
                "{} (resolved to {})",
                req.path.display(),
                canonical.display()
            )),
            allowed: allowed
                .iter()
                .map(|p| format!("{} and below", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
            config: req.config.clone(),
        })?;
    }
    Ok((
        journal,
        InjectRequest {
            target: TargetSpec::OciCreate {
                pid: req.pid,
                rootfs: req.rootfs.clone(),
                id: req.container_id.clone(),
            },
            path: canonical,
            spec: req.spec.clone(),
            shared: if req.allow_shared {
                SharedPolicy::Allow
            } else {
                SharedPolicy::Refuse
            },
            // Never from an annotation: a container is not the host.
            host_namespace: engine::policy::HostNamespace::Refuse,
        },
    ))
}
