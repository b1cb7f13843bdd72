//! The ChaosFS server: serves one FUSE connection from a backing directory fd on a pool of
//! threads, applies the rules, and lets them be replaced while mounted.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fs::{
    ChaosFs, CrashOptions, CrashedFile, FsConfig, FsInner, InterruptStats, OpenMode, OpenStats,
    UpdateReport,
};
use crate::fuse::{Session, Transport};
use crate::mount::Connection;
use crate::rules::{RuleSet, RuleStats};
use crate::sys;
use crate::{Error, Result};

/// How long [`Server::stop`] lets the kernel end a connection by itself before aborting it.
pub const STOP_SETTLE: Duration = Duration::from_millis(200);

/// The environment variable that turns [`Config::uring`] on by default (`1`).
pub const URING_ENV: &str = "CHAOSFS_URING";

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// FUSE serving threads (each with its own cloned `/dev/fuse` fd when possible). Default:
    /// the number of CPUs, at least 2 and at most 4. The kernel wakes idle serving threads in
    /// FIFO order, so a synchronous caller's requests rotate over all of them; more threads than
    /// CPUs only makes each round trip wake a colder thread (on 2 CPUs, 4 threads served a
    /// stat loop at ~10k requests/s, 2 threads at ~13k). Latency faults never hold a thread.
    pub n_threads: usize,
    /// Threads that run requests released from a latency fault. Default 4.
    pub delay_workers: usize,
    /// How long the kernel may cache entries and attributes of paths no rule's metadata ops can
    /// touch, when outside changes are not watched. Default 1 s.
    pub ttl: Duration,
    /// Watch the backing file system for changes made outside the mount (fanotify) and drop
    /// the kernel's cached entries and attributes as they happen; while that runs, `watched_ttl`
    /// replaces `ttl`. Default true. A watch that cannot start (not a local file system,
    /// fanotify refused) leaves `ttl` in force and says so in the log.
    pub watch: bool,
    /// Cache time of entries and attributes no rule can touch while outside changes are
    /// watched. Default 1 h.
    pub watched_ttl: Duration,
    /// Open files no rule can touch in kernel passthrough mode. Default true; false serves every
    /// file with direct I/O (every read and write reaches the server).
    pub passthrough: bool,
    /// Forward POSIX record locks and `flock` to the backing files (`FUSE_POSIX_LOCKS`,
    /// `FUSE_FLOCK_LOCKS`), so processes outside the mount see them and theirs are seen here.
    /// Default false: locks stay local to the mount. (fdswap moves a process's POSIX locks
    /// onto ChaosFS at inject, but at recover its check that the native file is free of
    /// conflicting locks would meet the server's own forwarded lock; see the crate README.)
    pub forward_locks: bool,
    /// Exchange requests with the kernel over io_uring (FUSE over io_uring, kernel 6.14+):
    /// one queue per CPU, served by a thread pinned to it, when the kernel offers it (module
    /// parameter `fuse.enable_uring`); otherwise, or if the kernel refuses the queues, the
    /// `/dev/fuse` threads serve and the log and [`Server::transport`] say why. Default false,
    /// or true when the environment variable `CHAOSFS_URING` is `1` (for test runs).
    pub uring: bool,
    /// The FUSE connection, if known: [`Server::stop`] aborts it.
    pub connection: Option<Connection>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            n_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4),
            delay_workers: 4,
            ttl: Duration::from_secs(1),
            watch: true,
            watched_ttl: Duration::from_secs(3600),
            passthrough: true,
            forward_locks: false,
            uring: std::env::var_os(URING_ENV).is_some_and(|v| v == "1"),
            connection: None,
        }
    }
}

#[derive(Default)]
struct Done {
    finished: Mutex<bool>,
    cv: Condvar,
}

/// A running ChaosFS server.
pub struct Server {
    inner: Arc<FsInner>,
    transport: Transport,
    ring_requests: Arc<std::sync::atomic::AtomicU64>,
    requests: Arc<std::sync::atomic::AtomicU64>,
    /// Outside changes are watched (the watch ends with the session).
    watching: bool,
    thread: Option<JoinHandle<io::Result<()>>>,
    done: Arc<Done>,
    connection: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("connection", &self.connection())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl Server {
    /// Serve the FUSE connection `fuse_fd` (already mounted) from `backing` (an
    /// `O_PATH | O_DIRECTORY` fd of the directory under the mount). Returns once the FUSE INIT
    /// handshake is done: from then on faults are live. Opens `/proc/self/fd` now (never the
    /// string "/proc/self" later) and raises `RLIMIT_NOFILE` to its hard limit.
    pub fn start(
        backing: OwnedFd,
        fuse_fd: OwnedFd,
        rules: RuleSet,
        cfg: Config,
    ) -> Result<Server> {
        if let Err(e) = sys::thread::raise_nofile_limit() {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
        let inner = Arc::new(FsInner::new(
            backing,
            rules,
            FsConfig {
                ttl: cfg.ttl,
                watched_ttl: cfg.watched_ttl,
                passthrough: cfg.passthrough,
                forward_locks: cfg.forward_locks,
            },
        )?);
        inner
            .scheduler()
            .start(cfg.delay_workers)
            .map_err(|e| Error::sys("start delay threads", e))?;
        // Serving threads clone the connection by opening "/dev/fuse"; where that path is
        // missing (another mount namespace), they share one fd instead.
        let clone_fd = sys::file::open(c"/dev/fuse", libc::O_RDWR).is_ok();
        let n_threads = cfg.n_threads.max(1);
        let mut session = Session::handshake(ChaosFs(inner.clone()), fuse_fd, cfg.uring)
            .map_err(|e| Error::sys("FUSE handshake", e))?;
        let transport = session.start_uring();
        let (ring_requests, requests) = session.counters();
        match &transport {
            Transport::DevFuse { why: Some(_) } => {
                tracing::warn!("FUSE transport: {transport}");
            }
            _ => tracing::info!("FUSE transport: {transport}"),
        }
        inner.set_notifier(session.notifier());
        let watcher = if cfg.watch {
            match inner.start_watch() {
                Ok(w) => {
                    tracing::info!(
                        "watching the backing file system for outside changes: entries and \
                         attributes no rule can touch are cached for {:?}",
                        cfg.watched_ttl
                    );
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot watch the backing file system for outside changes ({e}): \
                         entries and attributes are cached for {:?} only",
                        cfg.ttl
                    );
                    None
                }
            }
        } else {
            None
        };
        let done = Arc::new(Done::default());
        let watching = watcher.is_some();
        let (d, i) = (done.clone(), inner.clone());
        let thread = std::thread::Builder::new()
            .name("chaosfs-session".into())
            .spawn(move || {
                let r = session.run(n_threads, clone_fd);
                drop(watcher);
                if let Err(e) = &r {
                    tracing::warn!("FUSE session ended: {e}");
                }
                // Requests still parked can only be answered now (the kernel is gone).
                i.scheduler().shutdown();
                if let Ok(mut f) = d.finished.lock() {
                    *f = true;
                }
                d.cv.notify_all();
                r
            })
            .map_err(|e| Error::sys("spawn FUSE session thread", e))?;
        Ok(Server {
            inner,
            transport,
            ring_requests,
            requests,
            watching,
            thread: Some(thread),
            done,
            connection: Mutex::new(cfg.connection),
        })
    }

    /// Replace the rules atomically. Serves requests parked in latency faults of the old rules at
    /// once, drops the kernel's cached entries and attributes, and reports files open in
    /// passthrough mode that the new rules may touch (their reads and writes bypass the rules
    /// until reopened; a reopen gets direct I/O).
    pub fn update_rules(&self, rules: RuleSet) -> UpdateReport {
        self.inner.update_rules(rules)
    }

    /// Crash mode (docs/crash.md): cut the power. Every file is rolled back to its last durable
    /// state and every later change fails with EIO. Call it once every process that wrote
    /// through the mount is dead. `opts`: which unsynced writes survive after all (torn,
    /// reordered). What each file lost, by path.
    pub fn crash(&self, opts: CrashOptions) -> Vec<CrashedFile> {
        self.inner.crash(opts)
    }

    /// Crash mode: what a `crash` rule does when it fires, after closing the gate and before
    /// the rollback: send SIGKILL to every process that may write through the mount (without
    /// waiting: the request that fired the rule is answered only after this returns). Run at
    /// once if a rule already fired.
    pub fn on_power_cut(&self, kill: impl Fn() + Send + Sync + 'static) {
        self.inner.on_power_cut(Box::new(kill));
    }

    /// Crash mode: what the power cut of a `crash` rule dropped, per file; `None` while no
    /// `crash` rule fired.
    pub fn power_cut_report(&self) -> Option<Vec<CrashedFile>> {
        self.inner.power_cut_report()
    }

    /// Crash mode: bytes of undo state held now (saved old bytes not yet made obsolete by an
    /// fsync).
    pub fn crash_saved_bytes(&self) -> u64 {
        self.inner.crash_saved_bytes()
    }

    /// Per-rule counters of the current rules.
    pub fn stats(&self) -> Vec<RuleStats> {
        self.inner.rules().stats()
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner.rules()
    }

    /// Serve every request sleeping in a latency fault at once.
    pub fn cancel_delays(&self) {
        self.inner.scheduler().cancel_all();
    }

    /// Requests parked in a latency fault or being served after one.
    pub fn pending_delays(&self) -> usize {
        self.inner.scheduler().pending()
    }

    /// Interrupts received from the kernel and requests they ended early.
    pub fn interrupt_stats(&self) -> InterruptStats {
        self.inner.interrupt_stats()
    }

    /// Opens by mode (passthrough vs direct I/O) since start, and handles open now.
    pub fn open_stats(&self) -> OpenStats {
        self.inner.open_stats()
    }

    /// The mode the open handles of the file with `st_ino` `ino` (as seen through the mount) use,
    /// or `None` if it is not open.
    pub fn open_mode(&self, ino: u64) -> Option<OpenMode> {
        self.inner.open_mode_of(ino)
    }

    /// The POSIX locks processes hold through this mount now (with `forward_locks`), each
    /// with its holder: the kernel keeps no record of them on the ChaosFS files, so whoever
    /// moves a holder off the mount (recover) learns them here and takes them again.
    pub fn forwarded_posix_locks(&self) -> Vec<crate::ForwardedLock> {
        self.inner.forwarded_posix_locks()
    }

    /// How requests travel between the kernel and this server (`/dev/fuse` threads or
    /// per-CPU io_uring queues), and why not io_uring when it was asked for and refused.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Requests that came through the io_uring queues since start (0 over `/dev/fuse`).
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests served since start, over either transport (FORGETs and INTERRUPTs included).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether changes made outside the mount are watched (and entries and attributes no rule
    /// can touch cached for [`Config::watched_ttl`]).
    pub fn watching(&self) -> bool {
        self.watching
    }

    /// Outside changes seen by the watch that concerned a file the kernel holds.
    pub fn outside_changes(&self) -> u64 {
        self.inner.outside_changes()
    }

    /// Inodes the kernel currently holds references to.
    pub fn inode_count(&self) -> usize {
        self.inner.inode_count()
    }

    /// Tell the server its FUSE connection (for [`Server::stop`]).
    pub fn set_connection(&self, c: Connection) {
        if let Ok(mut g) = self.connection.lock() {
            *g = Some(c);
        }
    }

    /// The FUSE connection, if known.
    pub fn connection(&self) -> Option<Connection> {
        self.connection.lock().ok().and_then(|g| *g)
    }

    /// True once the kernel disconnected and every serving thread ended.
    pub fn is_finished(&self) -> bool {
        self.done.finished.lock().map(|f| *f).unwrap_or(true)
    }

    /// Wait up to `timeout` for the serving threads to end; true if they did.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut f) = self.done.finished.lock() else {
            return true;
        };
        while !*f {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            f = match self.done.cv.wait_timeout(f, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return true,
            };
        }
        true
    }

    /// Wait until the kernel disconnects (the mount is gone and unused, or the connection was
    /// aborted) and every serving thread ended.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Stop serving: answer parked requests, give the kernel [`STOP_SETTLE`] to end the
    /// connection by itself (a detached mount nobody uses any more is torn down at once), then
    /// abort the connection (if known; otherwise wait for the kernel to disconnect) and join the
    /// threads. Detach the mount first ([`crate::mount::detach`]), or accesses to it fail with
    /// ENOTCONN afterwards.
    ///
    /// The abort is only sent while our threads still serve: a connection number is the
    /// superblock's device minor, which the kernel gives to the next FUSE mount as soon as ours
    /// is gone, so aborting by number after that could kill someone else's filesystem.
    pub fn stop(mut self) -> Result<()> {
        self.cancel_delays();
        if !self.wait_timeout(STOP_SETTLE)
            && let Some(c) = self.connection()
        {
            c.abort()?;
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        match t.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::sys("FUSE session", e)),
            Err(_) => Err(Error::sys(
                "FUSE session",
                io::Error::other("serving thread panicked"),
            )),
        }
    }
}

impl Drop for Server {
    /// Dropping a server does not stop it (the threads serve until the kernel disconnects); it
    /// answers the requests parked in latency faults.
    fn drop(&mut self) {
        self.inner.scheduler().cancel_all();
    }
}
