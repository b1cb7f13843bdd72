//! Test and benchmark helper: a process holding many kinds of files under a directory, with
//! threads blocked in read, futex, nanosleep, epoll_wait and accept, that reports whether those
//! calls came back early or with EINTR. Also `swap`, a minimal swapper process (to SIGKILL).
//!
//! ```text
//! fdswap-testee serve DIR [--full] [--fds N] [--threads T] [--sleep-ms MS] [--unshare]
//!     [--churn] [--fd-churn] [--own-tables] [--vfork-ms MS] [--varied] [--nofile N] [--no-socket]
//!     (--varied: file k of --fds is written k % 13 bytes, opened O_APPEND when k % 3 == 1
//!     and O_CLOEXEC when k % 3 == 2; --nofile: RLIMIT_NOFILE soft and hard N, else both the
//!     hard limit; --no-socket: a seccomp filter makes socket(2) fail with EPERM; stdin
//!     command `socket` answers "SOCKET ok|ERRNO"; --block-all: every thread blocks every
//!     signal, as dash does around vfork; --catch-all: handlers for SIGURG, SIGWINCH,
//!     SIGCHLD and SIGCONT, as a Go program has)
//!     prints "FD name n" lines then "READY" (once its threads are blocked); stdin
//!     commands: write, wake, ping, quit, open-null (opens /dev/null at the lowest free fd),
//!     close FD
//! fdswap-testee swap PID PATH [--from-mnt M] [--pause-at-trap MS] [--trap-signal N] [--no-handoff]
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static FUTEX: AtomicU32 = AtomicU32::new(0);
static FUTEX_TIMED: AtomicU32 = AtomicU32::new(0);

fn say(out: &Mutex<()>, line: &str) {
    let _g = out.lock();
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// The threads `serve` starts announce themselves (their tid) right before their blocking
/// call; `serve` says READY only once each of them is blocked in a system call, so a test
/// never sees a thread still starting (glibc's new thread runs with every signal blocked until
/// it reaches its start routine) or a setup line after READY.
type Started = std::sync::mpsc::Sender<rustix::thread::Pid>;

/// Each thread drops its sender here: once every thread has announced itself, the receiver
/// sees the channel end.
fn announce(started: Started) {
    let _ = started.send(rustix::thread::gettid());
}

/// Wait until each announced thread sits in a system call (`/proc/self/task/TID/syscall` no
/// longer says "running"). No timeout: a testee that never gets ready makes the test's own
/// wait for READY fail, naming what it saw.
fn wait_blocked(started: Started, announced: &std::sync::mpsc::Receiver<rustix::thread::Pid>) {
    drop(started);
    for tid in announced.iter() {
        let path = format!("/proc/self/task/{}/syscall", tid.as_raw_nonzero());
        loop {
            match fs::read_to_string(&path) {
                Ok(s) if s.starts_with("running") => std::thread::yield_now(),
                // Blocked in a system call, or gone (a thread that already returned).
                _ => break,
            }
        }
    }
}

/// A duration as a timespec (the testee's timeouts are far inside time_t's range).
fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    }
}

/// A `struct flock` short field from its small `F_*`/`SEEK_*` constant.
fn short(v: i32) -> i16 {
    i16::try_from(v).expect("F_* and SEEK_* constants fit a short")
}

/// A write lock on bytes 0–99, the one the testee holds on `lock.db`.
fn write_lock_0_100() -> libc::flock {
    libc::flock {
        l_type: short(libc::F_WRLCK),
        l_whence: short(libc::SEEK_SET),
        l_start: 0,
        l_len: 100,
        l_pid: 0,
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn futex_wait(word: &AtomicU32, timeout: Option<Duration>) -> (i64, i32) {
    let ts = timeout.map(timespec);
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; `tsp` is null or
    // points to a timespec on this stack frame.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            0u32,
            tsp,
        )
    };
    (r, if r < 0 { errno() } else { 0 })
}

fn futex_wake(word: &AtomicU32) {
    word.store(1, Ordering::SeqCst);
    // SAFETY: integer arguments and a live futex word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

fn open(path: &Path, flags: i32, mode: u32) -> File {
    OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .append(flags & libc::O_APPEND != 0)
        .custom_flags(flags & !(libc::O_ACCMODE | libc::O_APPEND))
        .create(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// What `serve` was asked for.
#[derive(Default)]
struct ServeArgs {
    dir: PathBuf,
    full: bool,
    churn: bool,
    fd_churn: bool,
    varied: bool,
    nofile: Option<u64>,
    no_socket: bool,
    block_all: bool,
    catch_all: bool,
    vfork_ms: u64,
    own_tables: bool,
    nfds: usize,
    nthreads: usize,
    sleep_ms: u64,
}

impl ServeArgs {
    fn parse(args: &[String]) -> ServeArgs {
        let mut a = ServeArgs {
            dir: PathBuf::from(&args[0]),
            sleep_ms: 1500,
            ..ServeArgs::default()
        };
        let mut it = args[1..].iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().expect("a value").clone();
            match arg.as_str() {
                "--full" => a.full = true,
                "--churn" => a.churn = true,
                "--fd-churn" => a.fd_churn = true,
                "--varied" => a.varied = true,
                "--no-socket" => a.no_socket = true,
                "--block-all" => a.block_all = true,
                "--catch-all" => a.catch_all = true,
                "--nofile" => a.nofile = Some(value().parse().expect("--nofile N")),
                "--own-tables" => a.own_tables = true,
                "--vfork-ms" => a.vfork_ms = value().parse().expect("--vfork-ms MS"),
                "--fds" => a.nfds = value().parse().expect("--fds N"),
                "--threads" => a.nthreads = value().parse().expect("--threads T"),
                "--sleep-ms" => a.sleep_ms = value().parse().expect("--sleep-ms MS"),
                "--unshare" => {
                    fdswap::enter_private_mount_namespace().expect("private mount namespace");
                }
                a => panic!("unknown argument {a}"),
            }
        }
        a
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Catch every signal whose default action is to ignore it (a Go program catches them all).
fn catch_harmless_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [
        Signal::SIGURG,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
        Signal::SIGCONT,
    ] {
        // SAFETY: the handler does nothing (async-signal-safe), and no other handler of these
        // signals is installed that this one would displace.
        unsafe { sigaction(s, &act) }.expect("sigaction");
    }
}

fn report_fd(out: &Mutex<()>, name: &str, fd: RawFd) {
    say(out, &format!("FD {name} {fd}"));
}

/// Map `len` bytes of `path` (created at that size) read-write with `flags`.
fn map_file(path: &Path, len: u64, flags: i32) -> *mut u8 {
    let f = open(path, libc::O_RDWR, 0o644);
    f.set_len(len).expect("size the mapped file");
    let size = usize::try_from(len).expect("a small mapping");
    // SAFETY: a fresh mapping of a file we own; nothing else uses that range.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn serve(args: &[String]) {
    let a = ServeArgs::parse(args);
    set_nofile(a.nofile);
    if a.no_socket {
        forbid_socket();
    }
    if a.catch_all {
        catch_harmless_signals();
    }
    if a.block_all {
        // Before any thread starts: they all inherit it.
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::all()),
            None,
        )
        .expect("block every signal");
    }
    let out = Arc::new(Mutex::new(()));
    let (started, announced) = std::sync::mpsc::channel();
    let keep = open_many(&a.dir, a.nfds, a.varied, &out);
    let (full, wakers) = if a.full {
        let full = open_full(&a.dir, &out);
        (Some(full), spawn_blockers(&out, a.sleep_ms, &started))
    } else {
        (None, Vec::new())
    };
    if a.own_tables {
        spawn_own_table(&a.dir, &out, &started);
    }
    if a.vfork_ms > 0 {
        spawn_vfork(a.vfork_ms, &started);
    }
    if a.churn {
        spawn_churn();
    }
    for _ in 0..a.nthreads {
        let started = started.clone();
        std::thread::spawn(move || {
            announce(started);
            loop {
                let _ = futex_wait(&FUTEX, None);
                if FUTEX.load(Ordering::SeqCst) != 0 {
                    break;
                }
            }
        });
    }
    if a.fd_churn {
        spawn_fd_churn();
    }
    wait_blocked(started, &announced);
    say(&out, "READY");
    commands(&out, full.as_ref(), wakers);
    for fd in keep {
        // SAFETY: fds we own.
        unsafe { libc::close(fd) };
    }
    // Make the stdout pipe see EOF cleanly.
    // SAFETY: fd 1 is ours to close at exit.
    let _ = unsafe { File::from_raw_fd(libc::dup(1)) };
}

/// A seccomp filter (this thread and those it creates): `socket(2)` fails with EPERM, like
/// a container profile that allows no sockets.
fn forbid_socket() {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let code = |c: u32| u16::try_from(c).expect("BPF opcodes fit 16 bits");
    let ld = code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
    let jeq = code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
    let ret = code(libc::BPF_RET | libc::BPF_K);
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let nr = u32::try_from(libc::SYS_socket).expect("a syscall number");
    let eperm = u32::try_from(libc::EPERM).expect("an errno");
    let mut filter = [
        insn(ld, 0, 0, 0), // seccomp_data.nr
        insn(jeq, 0, 1, nr),
        insn(ret, 0, 0, SECCOMP_RET_ERRNO | eperm),
        insn(ret, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("a short filter"),
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: integer arguments; then `prog` points to a valid filter program that lives
    // across the call (the kernel copies it).
    let r = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "seccomp filter: {}", std::io::Error::last_os_error());
}

/// Like many servers: use the hard limit of open files (or `n`, soft and hard).
fn set_nofile(n: Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = n.or(getrlimit(Resource::Nofile).maximum);
    let want = Rlimit {
        current: hard,
        maximum: hard,
    };
    if let Err(e) = setrlimit(Resource::Nofile, want) {
        eprintln!("setrlimit NOFILE {hard:?}: {e}");
    }
}

/// `n` files `many/f*`, kept open (`varied`: with different offsets and flags).
fn open_many(dir: &Path, n: usize, varied: bool, out: &Mutex<()>) -> Vec<RawFd> {
    let mut keep = Vec::new();
    if n > 0 {
        let many = dir.join("many");
        fs::create_dir_all(&many).expect("mkdir many");
        for k in 0..n {
            let flags = match k % 3 {
                1 if varied => libc::O_RDWR | libc::O_APPEND,
                2 if varied => libc::O_RDWR | libc::O_CLOEXEC,
                _ => libc::O_RDWR,
            };
            let mut f = open(&many.join(format!("f{k}")), flags, 0o644);
            if varied {
                f.write_all(&vec![b'x'; k % 13]).expect("write many");
                if flags & libc::O_CLOEXEC == 0 {
                    // std opens everything close-on-exec.
                    // SAFETY: F_SETFD with an integer argument on an fd we own.
                    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) };
                    assert_eq!(r, 0, "F_SETFD");
                }
            }
            keep.push(f.into_raw_fd());
        }
        report_fd(out, "many_first", keep[0]);
    }
    keep
}

/// The files of `--full`: what `write` touches.
struct Full {
    a_fd: RawFd,
    lock_fd: RawFd,
    shared_map: *mut u8,
}

/// Every kind of fd and mapping the swap moves or leaves alone, and the cwd.
fn open_full(dir: &Path, out: &Mutex<()>) -> Full {
    let a = open(&dir.join("a.txt"), libc::O_RDWR | libc::O_APPEND, 0o644);
    (&a).write_all(b"hello").expect("write a");
    let a_fd = a.into_raw_fd();
    report_fd(out, "append", a_fd);
    // SAFETY: dup of an fd we own; the result is a new fd we own.
    let dup = unsafe { libc::dup(a_fd) };
    report_fd(out, "append_dup", dup);
    let mut b = open(&dir.join("b.txt"), libc::O_RDWR, 0o644);
    b.write_all(b"0123456789").expect("write b");
    drop(b);
    let mut b = open(&dir.join("b.txt"), libc::O_RDONLY, 0o644);
    let mut three = [0u8; 3];
    b.read_exact(&mut three).expect("read b");
    report_fd(out, "readonly_pos3", b.into_raw_fd());
    let c = open(
        &dir.join("c.txt"),
        libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        0o644,
    );
    report_fd(out, "cloexec_nonblock", c.into_raw_fd());
    {
        let mut d = open(&dir.join("d.bin"), libc::O_RDWR, 0o644);
        d.write_all(&vec![7u8; 8192]).expect("write d");
    }
    let d = open(&dir.join("d.bin"), libc::O_RDWR | libc::O_DIRECT, 0o644);
    report_fd(out, "direct", d.into_raw_fd());
    let l = open(&dir.join("lock.db"), libc::O_RDWR, 0o644);
    (&l).write_all(&[0u8; 200]).expect("write lock.db");
    let fl = write_lock_0_100();
    // SAFETY: `fl` is a valid flock struct for F_SETLK on an fd we own.
    let r = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(r, 0, "F_SETLK");
    let lock_fd = l.into_raw_fd();
    report_fd(out, "locked", lock_fd);
    let shared_map = map_file(&dir.join("shared.map"), 8192, libc::MAP_SHARED);
    say(out, &format!("MAP shared {:x}", shared_map as usize));
    let private = map_file(&dir.join("private.map"), 4096, libc::MAP_PRIVATE);
    say(out, &format!("MAP private {:x}", private as usize));
    let del = open(&dir.join("deleted.txt"), libc::O_RDWR, 0o644);
    fs::remove_file(dir.join("deleted.txt")).expect("unlink");
    report_fd(out, "deleted", del.into_raw_fd());
    let dfd = File::open(dir).expect("open dir");
    report_fd(out, "dir", dfd.into_raw_fd());
    std::env::set_current_dir(dir).expect("chdir");

    Full {
        a_fd,
        lock_fd,
        shared_map,
    }
}

/// Threads blocked in read, futex, timed futex, nanosleep, epoll_wait and accept; returns what
/// wakes each.
fn spawn_blockers(
    out: &Arc<Mutex<()>>,
    sleep_ms: u64,
    started: &Started,
) -> Vec<Box<dyn FnOnce()>> {
    let mut wakers: Vec<Box<dyn FnOnce()>> = Vec::new();
    let (mut rp, wp) = std::io::pipe().expect("pipe");
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        announce(s);
        let r = rp.read(&mut b);
        say(
            &o,
            &format!(
                "T read {}",
                match r {
                    Ok(n) => format!("ok {n}"),
                    Err(e) => format!("err {e}"),
                }
            ),
        );
    });
    let wp = Arc::new(Mutex::new(wp));
    let w2 = wp.clone();
    wakers.push(Box::new(move || {
        let _ = w2.lock().map(|mut w| w.write_all(b"x"));
    }));
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        announce(s);
        let (r, e) = futex_wait(&FUTEX, None);
        say(&o, &format!("T futex {r} {e}"));
    });
    wakers.push(Box::new(|| futex_wake(&FUTEX)));
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        announce(s);
        let t0 = Instant::now();
        let (r, e) = futex_wait(&FUTEX_TIMED, Some(Duration::from_millis(sleep_ms)));
        say(
            &o,
            &format!("T futex_timed {r} {e} {}", t0.elapsed().as_millis()),
        );
    });
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        announce(s);
        let t0 = Instant::now();
        let ts = timespec(Duration::from_millis(sleep_ms));
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both pointers are to timespecs on this stack frame.
        let r = unsafe { libc::nanosleep(&ts, &mut rem) };
        let e = if r < 0 { errno() } else { 0 };
        say(
            &o,
            &format!("T nanosleep {r} {e} {}", t0.elapsed().as_millis()),
        );
    });
    let (ep_r, ep_w) = std::io::pipe().expect("pipe");
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        // SAFETY: epoll_create1 has no pointer arguments.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: `ev` is a valid epoll_event; the fds are open.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ep_r.as_raw_fd(), &mut ev) };
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        announce(s);
        // SAFETY: `evs` has room for 4 events.
        let r = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
        let e = if r < 0 { errno() } else { 0 };
        say(&o, &format!("T epoll {r} {e}"));
    });
    let ep_w = Arc::new(Mutex::new(ep_w));
    wakers.push(Box::new(move || {
        let _ = ep_w.lock().map(|mut w| w.write_all(b"x"));
    }));
    let sock = std::env::temp_dir().join(format!("fdswap-testee-{}.sock", std::process::id()));
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        announce(s);
        let r = listener.accept();
        say(
            &o,
            &format!("T accept {}", if r.is_ok() { "ok" } else { "err" }),
        );
    });
    wakers.push(Box::new(move || {
        let _ = UnixStream::connect(&sock);
        let _ = fs::remove_file(&sock);
    }));
    wakers
}

/// A thread with its own fd table and cwd (unshare CLONE_FILES|CLONE_FS), holding a file.
fn spawn_own_table(dir: &Path, out: &Arc<Mutex<()>>, started: &Started) {
    let d = dir.to_owned();
    let (o, s) = (out.clone(), started.clone());
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES | nix::sched::CloneFlags::CLONE_FS)
            .expect("unshare files+fs");
        let sub = d.join("own");
        fs::create_dir_all(&sub).expect("mkdir own");
        let f = open(&sub.join("own.txt"), libc::O_RDWR, 0o644);
        std::env::set_current_dir(&sub).expect("chdir own");
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        say(&o, &format!("OWN {tid} {}", f.as_raw_fd()));
        announce(s);
        loop {
            let _ = futex_wait(&FUTEX_TIMED, None);
            let _ = &f;
        }
    });
}

/// A thread stuck in vfork() until its child exits: it cannot stop meanwhile. It announces
/// itself right before the vfork, so READY comes once it sits in it (a swap started before
/// the vfork would find every thread stoppable).
fn spawn_vfork(vfork_ms: u64, started: &Started) {
    let started = started.clone();
    std::thread::spawn(move || {
        let ts = timespec(Duration::from_millis(vfork_ms));
        announce(started);
        // vfork is the point: a parent thread that cannot stop.
        #[allow(deprecated)]
        // SAFETY: the child only makes raw syscalls (nanosleep, _exit) on its own stack
        // variables, which is what vfork permits in practice.
        let child = unsafe { libc::vfork() };
        if child == 0 {
            // SAFETY: see above.
            unsafe {
                libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, 0usize);
                libc::_exit(0);
            }
        }
        if child > 0 {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
        }
    });
}

/// Threads come and go, and the process forks, all the time.
fn spawn_churn() {
    std::thread::spawn(|| {
        loop {
            let h = std::thread::spawn(|| {
                let f = File::open("/dev/null");
                std::thread::sleep(Duration::from_micros(500));
                drop(f);
            });
            let _ = h.join();
        }
    });
    std::thread::spawn(|| {
        loop {
            // SAFETY: the child only calls _exit, which is async-signal-safe.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // SAFETY: async-signal-safe exit in the forked child.
                unsafe { libc::_exit(0) };
            }
            if child > 0 {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Opens and closes an fd all the time: the lowest free fd number comes and goes.
fn spawn_fd_churn() {
    std::thread::spawn(|| {
        loop {
            let f = File::open("/dev/null").expect("/dev/null");
            std::thread::sleep(Duration::from_millis(1));
            drop(f);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Answer the test's commands on stdin until `quit` or EOF.
fn commands(out: &Mutex<()>, full: Option<&Full>, mut wakers: Vec<Box<dyn FnOnce()>>) {
    let (a_fd, lock_fd, shared_map) = full.map_or((-1, -1, std::ptr::null_mut()), |f| {
        (f.a_fd, f.lock_fd, f.shared_map)
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "ping" => say(out, "PONG"),
            "socket" => match std::os::unix::net::UnixDatagram::unbound() {
                Ok(_) => say(out, "SOCKET ok"),
                Err(e) => say(
                    out,
                    &format!(
                        "SOCKET {}",
                        match e.raw_os_error() {
                            Some(libc::EPERM) => "EPERM".to_owned(),
                            _ => e.to_string(),
                        }
                    ),
                ),
            },
            "write" => {
                // SAFETY: writes to fds we own.
                let r1 = unsafe { libc::write(a_fd, b"W".as_ptr().cast(), 1) };
                // SAFETY: as above; the lock file is open read-write.
                let r2 = unsafe { libc::pwrite(lock_fd, b"L".as_ptr().cast(), 1, 0) };
                if !shared_map.is_null() {
                    // SAFETY: the shared mapping is live and 8192 bytes long.
                    unsafe { *shared_map.add(100) = b'M' };
                }
                let fl = write_lock_0_100();
                let mut probe = fl;
                // SAFETY: valid flock for F_GETLK on an open fd.
                unsafe { libc::fcntl(lock_fd, libc::F_GETLK, &mut probe) };
                let mut buf = [0u8; 64];
                let cwd = fs::read_to_string("a.txt").map(|s| s.len()).unwrap_or(0);
                let _ = &mut buf;
                say(out, &format!("OK write {r1} {r2} cwd_a_len={cwd}"));
            }
            "wake" => {
                for w in wakers.drain(..) {
                    w();
                }
                futex_wake(&FUTEX);
                say(out, "WOKE");
            }
            "quit" => break,
            "open-null" => {
                // Takes the lowest free fd number (fills a gap in the table).
                let fd = File::open("/dev/null").expect("/dev/null").into_raw_fd();
                say(out, &format!("OPENED {fd}"));
            }
            l if l.starts_with("close ") => {
                let fd: RawFd = l["close ".len()..].parse().expect("close FD");
                // SAFETY: the test asks to close an fd of ours it no longer needs (it leaves a
                // gap in the table); nothing here uses that fd afterwards.
                let r = unsafe { libc::close(fd) };
                say(out, &format!("CLOSED {r}"));
            }
            _ => say(out, "?"),
        }
    }
}

fn swap(args: &[String]) {
    let pid: i32 = args[0].parse().expect("PID");
    let path = PathBuf::from(&args[1]);
    let mut opts = fdswap::ScanOptions::new(path);
    let mut so = fdswap::SwapOptions::default();
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--from-mnt" => {
                i += 1;
                opts.from_mnt = Some(args[i].parse().expect("mount id"));
            }
            "--pause-at-trap" => {
                i += 1;
                so.pause_at_trap = Some(Duration::from_millis(args[i].parse().expect("ms")));
            }
            "--trap-signal" => {
                i += 1;
                so.force_trap_signal = Some(args[i].parse().expect("signal number"));
            }
            "--no-handoff" => so.handoff = false,
            a => panic!("unknown argument {a}"),
        }
        i += 1;
    }
    match fdswap::swap(&[pid], &opts, &so) {
        Ok(r) => {
            println!(
                "swapped {} skipped {} pause {:?} total {:?} open {:?}",
                r.swapped().count(),
                r.skipped().count(),
                r.max_pause(),
                r.total,
                r.processes.iter().map(|p| p.open_mode).collect::<Vec<_>>()
            );
            if let Some(e) = r.first_error() {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("swap") => swap(&args[1..]),
        _ => {
            eprintln!("usage: fdswap-testee serve DIR [...] | swap PID PATH [...]");
            std::process::exit(2);
        }
    }
}
