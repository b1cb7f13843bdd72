//! The injection server: one process per injection. It injects (journal first), serves the
//! Chaos API on `/run/iochaos/<id>.sock`, tells its starter when faults are live, and recovers
//! when asked over the API, when `duration` is over, on SIGTERM/SIGINT/SIGHUP, or when every
//! process of the target has exited; then it exits.

use std::sync::Arc;
use std::time::Duration;

// nix: rustix has no safe signal mask or sigwait (only its unsafe `runtime` calls).
use nix::sys::signal::{SigSet, Signal};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::adapters::chaosfs::{ChaosLauncher, ChaosServer};
use crate::adapters::fdswap::FdSwapper;
use crate::api::{ApiServer, ChaosService, Status};
use crate::error::{Error, Result};
use crate::inject::{InjectRequest, Injection, Swapper, inject};
use crate::journal::Journal;
use crate::target::{NsId, processes_in_mnt_ns};

type Live<S> = Injection<ChaosServer, S>;

/// How long the server waits, after a `Recover` answer, for the caller to read it.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Run an injection server for `req` until the injection is recovered. `ready` is called once:
/// with the status when faults are live and the API answers, or with the error that stopped the
/// injection (nothing is left changed then). Call it from the main thread before any other
/// thread exists: the signals it handles are blocked here, for every thread created later.
pub fn serve(
    journal: &Journal,
    req: &InjectRequest,
    duration: Option<Duration>,
    ready: impl FnOnce(std::result::Result<&Status, &Error>),
) -> Result<()> {
    serve_with(journal, req, duration, FdSwapper::default(), ready)
}

/// [`serve`] with another [`Swapper`] (start-time injection: [`crate::adapters::start::StartSwapper`]).
pub fn serve_with<S: Swapper>(
    journal: &Journal,
    req: &InjectRequest,
    duration: Option<Duration>,
    swapper: S,
    ready: impl FnOnce(std::result::Result<&Status, &Error>),
) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| Error::sys("blocking signals", std::io::Error::from(e)))?;

    let inj: Arc<Live<S>> = match inject(journal, &ChaosLauncher::default(), swapper, req) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    // Spec `low_latency`: idle CPUs poll while the faults are live (until this returns).
    let _low_latency = req
        .spec
        .get("low_latency")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
        .then(fdswap::CpuLatency::hold);
    let api = match ApiServer::serve(&journal.socket_path(&inj.id()), inj.clone()) {
        Ok(a) => a,
        Err(e) => {
            recover_quietly(&inj, "the API could not start");
            ready(Err(&e));
            return Err(e);
        }
    };
    match inj.status() {
        Ok(st) => ready(Ok(&st)),
        Err(e) => {
            recover_quietly(&inj, "status failed");
            ready(Err(&e));
            return Err(e);
        }
    }

    let notifier = api.notifier();
    {
        let (inj, notifier) = (inj.clone(), notifier.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = signals.wait() {
                    recover_quietly(&inj, sig.as_str());
                    notifier.notify();
                }
            })
            .map_err(|e| Error::sys("spawning the signal thread", e))?;
    }
    if let Some(ns) = inj.mnt_ns() {
        let (inj, notifier) = (inj.clone(), notifier.clone());
        std::thread::Builder::new()
            .name("target-exit".into())
            .spawn(move || {
                if wait_ns_empty(ns) {
                    recover_quietly(&inj, "every process of the target exited");
                    notifier.notify();
                }
            })
            .map_err(|e| Error::sys("spawning the target watch thread", e))?;
    }
    if !api.wait_recovered(duration, ANSWER_GRACE) {
        recover_quietly(&inj, "duration over");
    }
    api.shutdown();
    Ok(())
}

fn recover_quietly<S: Swapper>(inj: &Live<S>, why: &str) {
    match inj.recover() {
        Ok(r) => tracing::info!(
            id = %inj.id(),
            why,
            restored = r.restored.len(),
            failed = r.failed.len(),
            "recovered"
        ),
        Err(Error::Recovered { .. }) => {}
        Err(e) => tracing::warn!(id = %inj.id(), why, error = %e, "recover failed"),
    }
}

/// Block until no process is left in the mount namespace `ns` (true), or watching fails
/// (false). Waits on pidfds, never polls on a timer.
fn wait_ns_empty(ns: NsId) -> bool {
    loop {
        let procs = match processes_in_mnt_ns(ns) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the target");
                return false;
            }
        };
        if procs.is_empty() {
            return true;
        }
        let fds: Vec<_> = procs
            .iter()
            .filter_map(|p| {
                let pid = Pid::from_raw(i32::try_from(p.pid).ok()?)?;
                pidfd_open(pid, PidfdFlags::empty()).ok()
            })
            .collect();
        if fds.is_empty() {
            continue;
        }
        let mut polls: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        loop {
            match rustix::event::poll(&mut polls, None) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the target");
                    return false;
                }
            }
        }
    }
}
