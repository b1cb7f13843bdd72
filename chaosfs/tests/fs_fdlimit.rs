//! The server's fd table is not its callers': many opens of one file cost the server one fd, and
//! a server that does run out of fds answers ENFILE and keeps serving.
//!
//! The server runs in this test process, whose soft `RLIMIT_NOFILE` the tests lower after the
//! mount (the server raises it to the hard limit at start; lowering it again afterwards is how a
//! test gets a server with a low limit without privileges). The callers are child processes
//! (this binary again, running [`child`]) that raise their own soft limit to the hard one. A
//! binary of its own, tests one at a time: the limit is the whole process's.

mod fs_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use chaosfs::Config;
use chaosfs::rules::RuleSet;
use fs_support::*;

/// The server's (this process's) soft fd limit while a test runs.
const SERVER_LIMIT: u64 = 512;
/// The soft limit set before mounting: the server raises it to the hard one.
const LOW_SOFT: u64 = 128;
/// Opens per caller in the two-caller test: each caller is well under its own limit, both
/// together are over the server's.
const OPENS: usize = 300;
/// Files of the flood test: more than the server can hold open.
const FLOOD_FILES: usize = 1000;
/// Files a caller holds open at once in the big test, and the server's (soft = hard) fd limit
/// there: at two fds per open file the server could not hold them.
const MANY_FILES: usize = 10_000;
const MANY_LIMIT: u64 = 20_000;

const CHILD_ENV: &str = "CHAOSFS_FDLIMIT_CHILD";
/// Lines of the child protocol carry this tag (the test harness prints lines of its own).
const TAG: &str = "FDLIMIT ";

static SERIAL: Mutex<()> = Mutex::new(());

fn getrlimit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit to a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

/// Set the soft fd limit of this process (the hard one stays).
fn set_soft_limit(soft: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: getrlimit().1,
    };
    // SAFETY: setrlimit reads one struct rlimit from a live local.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(r, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A mount with `n` files `f0`.. created natively, served with a soft fd limit of
/// [`SERVER_LIMIT`]; checks the server raised its soft limit to the hard one at start.
fn mount_files(cfg: Config, n: usize) -> TestMount {
    let hard = getrlimit().1;
    assert!(
        hard >= 4 * (FLOOD_FILES as u64),
        "the tests need a hard fd limit of at least {} (have {hard})",
        4 * FLOOD_FILES
    );
    set_soft_limit(LOW_SOFT);
    let m = mount_with(RuleSet::empty(), cfg, |d| {
        for i in 0..n {
            std::fs::write(d.join(format!("f{i}")), b"data").expect("create");
        }
    });
    assert_eq!(
        getrlimit(),
        (hard, hard),
        "the server raises its soft fd limit to the hard one"
    );
    set_soft_limit(SERVER_LIMIT);
    m
}

/// A caller process running [`child`] with `args`.
struct Caller {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Caller {
    fn spawn(args: &[String]) -> Caller {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "--exact",
                "child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, args.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn caller");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Caller { child, out }
    }

    /// The next protocol line of the child.
    fn line(&mut self) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            let n = self.out.read_line(&mut l).expect("read child");
            assert!(n > 0, "caller exited without reporting");
            // The harness may have started the line ("test child ... ").
            if let Some(at) = l.find(TAG) {
                return l[at + TAG.len()..].trim_end().to_owned();
            }
        }
    }

    /// Let the child close its files and exit; its exit must be a success.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().expect("wait caller");
        assert!(st.success(), "caller failed: {st}");
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        // Panicking test: do not leave the caller holding files on the mount.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Open `paths` in order, keeping them open, until one fails: `"opened N errno E"` (E 0 if all
/// opened). Then, if `probe`, read one byte from the first file opened (through its open fd)
/// and report `"read OK"` or `"read errno E"`. Then wait for stdin to close.
fn open_many(paths: &[String], probe: bool) {
    let mut files = Vec::new();
    let mut err = 0;
    for p in paths {
        match std::fs::File::open(p) {
            Ok(f) => files.push(f),
            Err(e) => {
                err = e.raw_os_error().unwrap_or(-1);
                break;
            }
        }
    }
    println!("{TAG}opened {} errno {err}", files.len());
    if probe {
        let mut b = [0u8; 1];
        match files
            .first()
            .map(|f| std::os::unix::fs::FileExt::read_at(f, &mut b, 0))
        {
            Some(Ok(1)) => println!("{TAG}read OK"),
            Some(Ok(n)) => println!("{TAG}read short {n}"),
            Some(Err(e)) => println!("{TAG}read errno {}", e.raw_os_error().unwrap_or(-1)),
            None => println!("{TAG}read nothing open"),
        }
    }
    std::io::stdout().flush().expect("flush");
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    drop(files);
}

/// Open `dir/f0`.. `dir/f{n-1}` and keep them all open, then read each back through its own fd
/// and compare it with what [`content`] wrote: `"opened N errno E"`, then `"wrong W"` (files
/// whose bytes differ). Then wait for stdin to close.
fn hold_and_read(dir: &std::path::Path, n: usize) {
    let mut files = Vec::new();
    let mut err = 0;
    for i in 0..n {
        match std::fs::File::open(dir.join(format!("f{i}"))) {
            Ok(f) => files.push(f),
            Err(e) => {
                err = e.raw_os_error().unwrap_or(-1);
                break;
            }
        }
    }
    println!("{TAG}opened {} errno {err}", files.len());
    let wrong = files
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            let mut b = vec![0u8; 64];
            let got = std::os::unix::fs::FileExt::read_at(*f, &mut b, 0).map(|k| b[..k].to_vec());
            got.ok().as_deref() != Some(content(*i).as_slice())
        })
        .count();
    println!("{TAG}wrong {wrong}");
    std::io::stdout().flush().expect("flush");
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    drop(files);
}

/// The bytes of file `f{i}` in the big test (each file its own).
fn content(i: usize) -> Vec<u8> {
    format!("file {i}\n").into_bytes()
}

/// The caller side (only when started by a test with [`CHILD_ENV`]), with its soft fd limit
/// raised to the hard one: `same PATH N` opens PATH N times; `flood PATH...` opens each PATH
/// once. Not a test of its own: ignored, so it is never counted as one that passed; the tests
/// start it with `--ignored`.
#[test]
#[ignore = "not a test: the caller process the fs_fdlimit tests start"]
fn child() {
    let args = std::env::var(CHILD_ENV).expect("started by a test, with its arguments");
    let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
    set_soft_limit(getrlimit().1);
    match args.first().map(String::as_str) {
        Some("same") => {
            let n: usize = args[2].parse().expect("count");
            open_many(&vec![args[1].clone(); n], false);
        }
        Some("flood") => open_many(&args[1..], true),
        Some("hold") => {
            let n: usize = args[2].parse().expect("count");
            hold_and_read(std::path::Path::new(&args[1]), n);
        }
        other => panic!("unknown child mode {other:?}"),
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .count()
}

fn two_callers_open_one_file_many_times(cfg: Config) {
    let _serial = serial();
    let m = mount_files(cfg, 1);
    let path = m.join("f0").display().to_string();
    let fds_before = fd_count();
    let args = ["same".to_owned(), path, OPENS.to_string()];
    let mut a = Caller::spawn(&args);
    assert_eq!(a.line(), format!("opened {OPENS} errno 0"), "first caller");
    let mut b = Caller::spawn(&args);
    assert_eq!(
        b.line(),
        format!("opened {OPENS} errno 0"),
        "second caller (each caller is under its own limit; the server is not a shared one)"
    );
    // The server holds one fd for all those opens (plus the file's O_PATH fd).
    let held = fd_count().saturating_sub(fds_before);
    assert!(
        held <= 8,
        "the server holds {held} more fds for {} opens of one file",
        2 * OPENS
    );
    a.finish();
    b.finish();
    assert!(!m.server().is_finished());
    m.unmount();
}

#[test]
fn two_callers_open_one_file_more_often_than_the_server_limit_passthrough() {
    two_callers_open_one_file_many_times(Config::default());
}

#[test]
fn two_callers_open_one_file_more_often_than_the_server_limit_direct_io() {
    two_callers_open_one_file_many_times(direct_io());
}

/// Poll `f` until it succeeds (the kernel releases the flood's files asynchronously after the
/// caller exits); the last error if it never does.
fn eventually<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let mut last = None;
    for _ in 0..200_000 {
        match f() {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        std::thread::yield_now();
    }
    panic!("never succeeded: {last:?}");
}

fn flood(cfg: Config) {
    let _serial = serial();
    let m = mount_files(cfg, FLOOD_FILES);
    let mut args = vec!["flood".to_owned()];
    args.extend((0..FLOOD_FILES).map(|i| m.join(&format!("f{i}")).display().to_string()));
    // A directory stream opened before the flood, read while the server is out of fds.
    let mut listing = std::fs::read_dir(m.path()).expect("opendir");
    let mut c = Caller::spawn(&args);
    let opened = c.line();
    let (n, err) = opened
        .strip_prefix("opened ")
        .and_then(|s| s.split_once(" errno "))
        .map(|(n, e)| {
            (
                n.parse::<usize>().unwrap_or(0),
                e.parse::<i32>().unwrap_or(0),
            )
        })
        .unwrap_or_else(|| panic!("bad report {opened:?}"));
    assert!(
        (1..FLOOD_FILES).contains(&n),
        "the flood must reach the server's limit before its own: {opened}"
    );
    assert_eq!(
        err,
        libc::ENFILE,
        "the caller sees ENFILE when the server is out of fds (got {})",
        std::io::Error::from_raw_os_error(err)
    );
    // Files open before the limit still serve, while the server's table is full.
    assert_eq!(c.line(), "read OK");
    assert!(std::fs::metadata(m.join("f0")).is_ok(), "stat while full");
    let mut names = 0;
    for e in listing.by_ref() {
        e.expect("readdir while full");
        names += 1;
    }
    assert_eq!(names, FLOOD_FILES, "a listing while full names every file");
    c.finish();
    // Once the caller's files are released, the mount serves new opens and lookups again.
    assert!(!m.server().is_finished(), "the session ended");
    let last = format!("f{}", FLOOD_FILES - 1);
    assert_eq!(
        eventually(|| std::fs::read(m.join(&last))),
        b"data",
        "read after the flood"
    );
    eventually(|| std::fs::write(m.join("new"), b"x"));
    assert_eq!(std::fs::read(m.backing("new")).expect("read backing"), b"x");
    assert!(!m.server().is_finished(), "the session ended");
    m.unmount();
}

#[test]
fn server_out_of_fds_answers_enfile_and_keeps_serving_passthrough() {
    flood(Config::default());
}

#[test]
fn server_out_of_fds_answers_enfile_and_keeps_serving_direct_io() {
    flood(direct_io());
}

/// A caller that only looks files up (a `find`) makes the kernel cache entries the server holds
/// an `O_PATH` fd for. Out of fds, the server has the kernel drop the entries of files nobody has
/// open: a lookup may fail with ENFILE, and succeeds again once the kernel has forgotten them.
#[test]
fn lookups_of_more_files_than_the_server_limit_succeed() {
    let _serial = serial();
    let m = mount_files(Config::default(), FLOOD_FILES);
    let mut enfile = 0;
    for i in 0..FLOOD_FILES {
        let p = m.join(&format!("f{i}"));
        let st = eventually(|| {
            std::fs::symlink_metadata(&p).inspect_err(|e| {
                assert_eq!(e.raw_os_error(), Some(libc::ENFILE), "stat {}", p.display());
                enfile += 1;
            })
        });
        assert_eq!(st.len(), 4);
    }
    assert!(
        enfile > 0,
        "{FLOOD_FILES} lookups never reached the server's limit of {SERVER_LIMIT} fds"
    );
    assert!(!m.server().is_finished(), "the session ended");
    m.unmount();
}

/// A caller holds [`MANY_FILES`] different files open through the mount while the server's fd
/// limit (soft and hard) is [`MANY_LIMIT`]: every open succeeds and every file reads back its
/// own bytes, because an open file costs the server one fd (its node's fd is the open file's),
/// not two (an `O_PATH` fd per node plus the open fd).
fn many_files_under_a_limit_of_twice_as_many(cfg: Config) {
    let _serial = serial();
    let lim = libc::rlimit {
        rlim_cur: MANY_LIMIT,
        rlim_max: MANY_LIMIT,
    };
    // SAFETY: setrlimit reads one struct rlimit from a live local.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        r,
        0,
        "RLIMIT_NOFILE {MANY_LIMIT}: {}",
        std::io::Error::last_os_error()
    );
    let m = mount_with(RuleSet::empty(), cfg, |d| {
        for i in 0..MANY_FILES {
            std::fs::write(d.join(format!("f{i}")), content(i)).expect("create");
        }
    });
    assert_eq!(getrlimit(), (MANY_LIMIT, MANY_LIMIT));
    let fds_before = fd_count();
    let dir = m.path().display().to_string();
    let mut c = Caller::spawn(&["hold".to_owned(), dir, MANY_FILES.to_string()]);
    assert_eq!(
        c.line(),
        format!("opened {MANY_FILES} errno 0"),
        "a caller holding {MANY_FILES} files under a server limit of {MANY_LIMIT}"
    );
    assert_eq!(c.line(), "wrong 0", "files read back through their fds");
    let held = fd_count().saturating_sub(fds_before);
    println!("server fds for {MANY_FILES} open files: {held}");
    assert!(
        held <= MANY_FILES + 16,
        "the server holds {held} fds for {MANY_FILES} open files"
    );
    c.finish();
    // Once every handle is released (RELEASE comes in the background after the close), the
    // server holds none of the files open any more: only `O_PATH` fds of the nodes the kernel
    // still caches.
    eventually(|| {
        let st = m.server().open_stats();
        match st.passthrough_now + st.direct_now {
            0 => Ok(()),
            n => Err(std::io::Error::other(format!("{n} handles not released"))),
        }
    });
    assert_eq!(
        open_files_under(&m),
        0,
        "files the server still holds open after every release"
    );
    assert!(!m.server().is_finished(), "the session ended");
    m.unmount();
}

/// How many fds of this process (the server) are open files (not `O_PATH`) of files in the
/// directory under `m`.
fn open_files_under(m: &TestMount) -> usize {
    let dir = m.path().to_path_buf();
    let mut n = 0;
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.parent() != Some(dir.as_path()) {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", e.file_name().display()))
                .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(libc::O_PATH);
        if flags & libc::O_PATH == 0 {
            n += 1;
        }
    }
    n
}

#[test]
fn ten_thousand_files_under_a_limit_of_twenty_thousand_passthrough() {
    many_files_under_a_limit_of_twice_as_many(Config::default());
}

#[test]
fn ten_thousand_files_under_a_limit_of_twenty_thousand_direct_io() {
    many_files_under_a_limit_of_twice_as_many(direct_io());
}

/// The server's configuration without kernel passthrough: every read and write reaches it.
fn direct_io() -> Config {
    Config {
        passthrough: false,
        ..Config::default()
    }
}
