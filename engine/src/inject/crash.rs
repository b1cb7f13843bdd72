//! Crash: cut the power on a crash-mode injection (docs/crash.md). Every process of the
//! target is killed with SIGKILL, then (nothing left to write) the filesystem rolls every file
//! back to its last durable state, then the injection is recovered as usual.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde_json::Value;

use crate::api::{CrashOptions, CrashReport, RecoverReport};
use crate::error::{Error, Result};
use crate::target::{NsId, processes_in_mnt_ns};

use super::{FsServer, Injection, Swapper};

/// How long the killed processes have to be gone (a process in uninterruptible sleep on
/// another file system may take a while; one stuck longer is reported).
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);

impl<F: FsServer, S: Swapper> Injection<F, S> {
    /// Kill every process of the target at once, roll the files back, recover.
    pub(super) fn crash_live(&self, opts: CrashOptions) -> Result<CrashReport> {
        // Torn or reordered writes need a seed: one is drawn (and reported) if none is given.
        let seed = opts
            .seed
            .or_else(|| (opts.torn > 0 || opts.reorder).then(random_seed));
        let st = self.lock()?;
        let id = st.entry.id.to_string();
        if !st
            .entry
            .spec
            .get("crash_mode")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(Error::NotCrashMode { id });
        }
        let (Some(server), Some(guard)) = (st.server.as_ref(), st.guard.as_ref()) else {
            return Err(Error::Recovered { id });
        };
        // Nothing may be held in a latency fault while the processes die.
        server.quiesce();
        let killed = kill_all(guard.ns().id)?;
        let base = Path::new(&st.entry.path);
        let files = server
            .crash(chaosfs::CrashOptions {
                torn: opts.torn,
                reorder: opts.reorder,
                seed: seed.unwrap_or_default(),
            })
            .into_iter()
            .map(|mut f| {
                f.path = base.join(&f.path).display().to_string();
                f
            })
            .collect();
        tracing::info!(id, killed = killed.len(), "crash: files rolled back");
        drop(st);
        // The target-exit watch of the server may have recovered first: nothing left to do.
        let recovered = match self.recover_live() {
            Ok(r) => r,
            Err(Error::Recovered { .. }) => RecoverReport::default(),
            Err(e) => return Err(e),
        };
        Ok(CrashReport {
            killed,
            files,
            recovered,
            seed,
        })
    }
}

/// A seed from the process's random hasher keys (no generator of our own to seed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::hash::RandomState::new().build_hasher().finish()
}

/// SIGKILL every process of mount namespace `ns` (through pidfds, so no recycled pid is hit)
/// and wait until they are all gone; again for any forked meanwhile. The processes killed.
fn kill_all(ns: NsId) -> Result<Vec<u32>> {
    let me = std::process::id();
    let deadline = Instant::now() + DEATH_TIMEOUT;
    let mut killed = Vec::new();
    loop {
        let pids: Vec<u32> = processes_in_mnt_ns(ns)?
            .iter()
            .map(|p| p.pid)
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() {
            return Ok(killed);
        }
        let fds = signal_all(&pids);
        for (p, _) in &fds {
            if !killed.contains(p) {
                killed.push(*p);
            }
        }
        for (_, fd) in &fds {
            wait_exit(fd, deadline);
        }
        if Instant::now() >= deadline {
            let left: Vec<u32> = processes_in_mnt_ns(ns)?.iter().map(|p| p.pid).collect();
            if !left.is_empty() {
                return Err(Error::Unkillable { pids: left });
            }
        }
    }
}

/// SIGKILL `pids`: every pidfd is opened first, then they are signalled back to back (the
/// "same instant"). The processes signalled, with their pidfds.
fn signal_all(pids: &[u32]) -> Vec<(u32, OwnedFd)> {
    let fds: Vec<(u32, OwnedFd)> = pids
        .iter()
        .filter_map(|&p| {
            let pid = Pid::from_raw(i32::try_from(p).ok()?)?;
            pidfd_open(pid, PidfdFlags::empty()).ok().map(|fd| (p, fd))
        })
        .collect();
    fds.into_iter()
        .filter(|(_, fd)| pidfd_send_signal(fd, Signal::KILL).is_ok())
        .collect()
}

/// SIGKILL every process of mount namespace `ns` but this one, without waiting for them:
/// what a `crash` rule does when it cuts the power (the request that fired it is answered
/// once this returns, so its caller never sees the answer). The processes signalled.
pub fn kill_now(ns: NsId) -> Result<Vec<u32>> {
    let me = std::process::id();
    let pids: Vec<u32> = processes_in_mnt_ns(ns)?
        .iter()
        .map(|p| p.pid)
        .filter(|&p| p != me)
        .collect();
    Ok(signal_all(&pids).into_iter().map(|(p, _)| p).collect())
}

/// Wait until the process of `pidfd` has exited, or `deadline`.
fn wait_exit(pidfd: &OwnedFd, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}
