//! The injection server: one process per injection. It injects (journal first), serves the
//! Chaos API on `/run/iochaos/<id>.sock`, tells its starter when faults are live, and recovers
//! when asked over the API, when `duration` is over, on SIGTERM/SIGINT/SIGHUP, or when every
//! process of the target has exited; then it exits.

use std::os::fd::OwnedFd;
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
    // ChaosFS holds about two fds per file the target has open through it: all we may have.
    crate::fdlimit::raise_soft_limit();

    let inj: Arc<Live<S>> = match inject(journal, &ChaosLauncher::default(), swapper, req) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    // Crash mode: a `crash` rule kills the target (then the target-exit watch recovers).
    if let Err(e) = inj.kill_on_power_cut() {
        tracing::warn!(error = %e, "crash rules cannot kill the target");
    }
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

/// How often the target is scanned while no pidfd of it can be opened (the server out of fds).
const NO_PIDFD_RESCAN: Duration = Duration::from_millis(100);

/// Block until no process is left in the mount namespace `ns` (true), or watching fails
/// (false). Waits on pidfds; while none can be opened, scans again every
/// [`NO_PIDFD_RESCAN`].
fn wait_ns_empty(ns: NsId) -> bool {
    let open = |pid: u32| {
        let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
        pidfd_open(pid, PidfdFlags::empty()).ok()
    };
    let scan =
        || processes_in_mnt_ns(ns).map(|procs| procs.iter().map(|p| p.pid).collect::<Vec<_>>());
    wait_all_exited(scan, open, || std::thread::sleep(NO_PIDFD_RESCAN))
}

/// The loop of [`wait_ns_empty`]: `scan` lists the processes, `open` gives a pidfd of one,
/// `pause` waits before the next scan when not one pidfd could be opened.
fn wait_all_exited(
    mut scan: impl FnMut() -> Result<Vec<u32>>,
    open: impl Fn(u32) -> Option<OwnedFd>,
    mut pause: impl FnMut(),
) -> bool {
    loop {
        let pids = match scan() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the target");
                return false;
            }
        };
        if pids.is_empty() {
            return true;
        }
        let fds: Vec<OwnedFd> = pids.into_iter().filter_map(&open).collect();
        if fds.is_empty() {
            // Out of fds (or every process just exited): never spin on the scan.
            pause();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// No pidfd can be opened (the server out of fds): the loop waits between scans instead
    /// of scanning again at once (it spun on `/proc` before), and still ends when the
    /// processes are gone.
    #[test]
    fn without_pidfds_the_watch_pauses_between_scans() {
        let events = std::cell::RefCell::new(Vec::new());
        let mut left = 3;
        let scan = || {
            events.borrow_mut().push("scan");
            left -= 1;
            Ok(if left > 0 { vec![1234] } else { Vec::new() })
        };
        let ended = wait_all_exited(scan, |_| None, || events.borrow_mut().push("pause"));
        assert!(ended);
        assert_eq!(
            events.into_inner(),
            ["scan", "pause", "scan", "pause", "scan"]
        );
    }
}
