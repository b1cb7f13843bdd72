//! Helpers of the `iochaos inject` end-to-end tests: the CLI with a private journal directory,
//! a shell workload that writes and reads continuously and logs every result, its log, and the
//! inject → update → recover scenario every target kind goes through.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The rules most tests inject: EIO on write.
pub const EIO_ON_WRITE: &[&str] = &["--errno", "EIO", "--ops", "write"];

/// The arguments of `iochaos inject TARGET... --path PATH RULES...`.
pub fn inject_args<'a>(target: &[&'a str], path: &'a str, rules: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["inject"];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--path", path]);
    args.extend_from_slice(rules);
    args
}

/// These tests mount, trace and run containers: they need root and fail (never skip) without it.
pub fn require_root() {
    iochaos_testsupport::require_root("it mounts FUSE, uses ptrace and runs containers");
}

/// Poll `f` until it returns Some, failing after `secs` seconds.
pub fn poll<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    iochaos_testsupport::poll(what, Duration::from_secs(secs), f)
}

/// A test's own journal directory (`IOCHAOS_RUN_DIR`) and scratch space. Dropping it recovers
/// every injection left (so a failing test leaves no mount, server or journal entry behind).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub run: PathBuf,
    /// More environment for every iochaos command (e.g. the CRI socket).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        Env {
            dir,
            run,
            vars: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).expect("canonical tempdir")
    }

    /// runc with its state in this test's directory.
    pub fn runc(&self) -> iochaos_testsupport::Runc {
        iochaos_testsupport::Runc::new(self.path().join("runc-state"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_via(&[], args)
    }

    /// [`Env::command`] run through `wrapper` (a command that runs the rest of its arguments,
    /// like `prlimit --nofile=N:N --`).
    pub fn command_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = match wrapper {
            [] => Command::new(env!("CARGO_BIN_EXE_iochaos")),
            [w, rest @ ..] => {
                let mut c = Command::new(w);
                c.args(rest).arg(env!("CARGO_BIN_EXE_iochaos"));
                c
            }
        };
        c.args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("IOCHAOS_RUN_DIR", &self.run)
            .env("IOCHAOS_SERVER_LOG", self.dir.path().join("server.log"))
            .env(
                "IOCHAOS_LOG",
                std::env::var("IOCHAOS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running iochaos")
    }

    /// Run, expect success, return stdout (trimmed).
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "iochaos {args:?} failed ({}): {}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Run, expect failure; returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "iochaos {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), err)
    }

    /// `iochaos inject TARGET... --path PATH RULES...`, which must succeed; its stdout (the
    /// injection id, or JSON with `--json`).
    pub fn inject(&self, target: &[&str], path: &str, rules: &[&str]) -> String {
        self.ok(&inject_args(target, path, rules))
    }

    /// `iochaos inject TARGET... --path PATH RULES...`, which must fail; (exit code, stderr).
    pub fn inject_fails(&self, target: &[&str], path: &str, rules: &[&str]) -> (i32, String) {
        self.fails(&inject_args(target, path, rules))
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `status --json`.
    pub fn status(&self) -> Vec<Value> {
        let out = self.ok(&["status", "--json"]);
        match serde_json::from_str(&out).expect("status --json is JSON") {
            Value::Array(a) => a,
            other => panic!("status --json is not an array: {other}"),
        }
    }

    /// Files in the journal directory.
    pub fn run_dir_entries(&self) -> Vec<String> {
        match std::fs::read_dir(&self.run) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Nothing of iochaos is left: no journal entry or socket, no server process, no ChaosFS
    /// mount in the target's mount table.
    pub fn assert_clean(&self, server_pids: &[u32], target_pid: Option<u32>) {
        assert_eq!(self.run_dir_entries(), Vec::<String>::new(), "journal dir");
        for &p in server_pids {
            poll(&format!("server {p} to exit"), 10, || {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok();
                // Gone, or a zombie waiting for its (test) reaper.
                stat.is_none_or(|s| s.contains(") Z ")).then_some(())
            });
        }
        if let Some(pid) = target_pid {
            let left = chaosfs_mounts_under(pid, &self.path());
            assert!(left.is_empty(), "ChaosFS still mounted: {left:?}");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- injection server log ---\n{}", self.server_log());
            let st = self.run(&["status", "--json"]);
            eprintln!(
                "--- status --json ---\n{}",
                String::from_utf8_lossy(&st.stdout)
            );
        }
        if self.run_dir_entries().iter().any(|e| e.ends_with(".json")) {
            let _ = self.run(&["recover", "--all"]);
        }
    }
}

/// The workload: appends `w<i>` to VOL/data, `h<i>` through an fd held open since the start
/// (VOL/held, fd 3), reads VOL/data back, and logs `W|H|R <i> ok|err` for each to LOG; `PAUSE` is
/// the pause between rounds (a shell command). VOL and LOG are single-quoted (they may hold
/// spaces or newlines, not `'`).
pub fn workload_script(vol: &str, log: &str, pause: &str) -> String {
    assert!(
        !vol.contains('\'') && !log.contains('\''),
        "quote in {vol:?} or {log:?}"
    );
    format!(
        "exec 3>>'{vol}/held'; i=0; while :; do i=$((i+1)); \
         if echo w$i >> '{vol}/data'; then echo W $i ok; else echo W $i err; fi; \
         if echo h$i >&3; then echo H $i ok; else echo H $i err; fi; \
         if cat '{vol}/data' > /dev/null; then echo R $i ok; else echo R $i err; fi; \
         {pause}; done >> '{log}' 2>/dev/null"
    )
}

/// The workload's log.
pub struct Log(pub PathBuf);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub kind: char,
    pub round: u64,
    pub ok: bool,
}

impl Log {
    pub fn lines(&self) -> Vec<Line> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let kind = f.next()?.chars().next()?;
                let round = f.next()?.parse().ok()?;
                let ok = match f.next()? {
                    "ok" => true,
                    "err" => false,
                    _ => return None,
                };
                Some(Line { kind, round, ok })
            })
            .collect()
    }

    pub fn last_round(&self) -> u64 {
        self.lines().iter().map(|l| l.round).max().unwrap_or(0)
    }

    /// Wait until a round after `after` logged `kind` with outcome `ok`; returns that round.
    pub fn wait_for(&self, kind: char, ok: bool, after: u64) -> u64 {
        poll(
            &format!(
                "a {kind} {} after round {after}",
                if ok { "ok" } else { "err" }
            ),
            30,
            || {
                self.lines()
                    .into_iter()
                    .find(|l| l.round > after && l.kind == kind && l.ok == ok)
                    .map(|l| l.round)
            },
        )
    }

    /// After a recover: the held fd (H) and new opens (W) succeed again, and from then on every
    /// operation does (for two more rounds).
    pub fn assert_recovered(&self) {
        let at = self.last_round();
        self.wait_for('H', true, at);
        let r = self.wait_for('W', true, at);
        self.wait_round(r + 2);
        assert!(
            self.lines().iter().filter(|l| l.round > r).all(|l| l.ok),
            "errors after recover"
        );
    }

    /// Wait until round `n` is complete (its R line is logged).
    pub fn wait_round(&self, n: u64) {
        poll(&format!("round {n}"), 30, || {
            self.lines()
                .iter()
                .any(|l| l.kind == 'R' && l.round >= n)
                .then_some(())
        });
    }
}

/// Every write the workload saw succeed is in the volume, and none it saw fail.
pub fn check_data(vol: &Path, log: &Log) {
    let data = std::fs::read_to_string(vol.join("data")).expect("data");
    let held = std::fs::read_to_string(vol.join("held")).expect("held");
    let data: std::collections::HashSet<&str> = data.lines().collect();
    let held: std::collections::HashSet<&str> = held.lines().collect();
    let lines = log.lines();
    let (mut ok, mut err) = (0, 0);
    for l in &lines {
        let (set, word) = match l.kind {
            'W' => (&data, format!("w{}", l.round)),
            'H' => (&held, format!("h{}", l.round)),
            _ => continue,
        };
        if l.ok {
            ok += 1;
            assert!(
                set.contains(word.as_str()),
                "{word} succeeded but is missing"
            );
        } else {
            err += 1;
            assert!(!set.contains(word.as_str()), "{word} failed but is there");
        }
    }
    assert!(ok > 0 && err > 0, "{ok} writes succeeded, {err} failed");
}

/// Inject EIO on write, see the workload's errors (through new opens and the held fd), update to
/// latency and see the delay, recover and see success; returns the injection id. `target` is
/// the CLI's target arguments, `vol` the volume as the target sees it.
pub fn inject_update_recover(env: &Env, target: &[&str], vol: &str, log: &Log) -> String {
    let start = log.last_round();
    log.wait_round(start + 2);
    let t0 = Instant::now();
    let id = env.inject(target, vol, EIO_ON_WRITE);
    eprintln!("inject took {:?}", t0.elapsed());
    let injected_at = log.last_round();
    // Faults are live when inject returns: the next round fails both ways.
    log.wait_for('W', false, injected_at);
    log.wait_for('H', false, injected_at);
    let w_after = log
        .lines()
        .into_iter()
        .find(|l| l.round > injected_at + 1 && l.kind == 'W');
    if let Some(l) = w_after {
        assert!(!l.ok, "a write succeeded after inject returned: {l:?}");
    }

    let st = env.status();
    assert_eq!(st.len(), 1, "{st:?}");
    let s = &st[0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["path"], vol);
    assert!(!s["pids"].as_array().expect("pids").is_empty());
    assert!(s["server_pid"].as_u64().expect("server_pid") > 0);
    assert_eq!(s["rules"][0]["spec"]["errno"], "EIO");
    assert!(s["rules"][0]["injected"].as_u64().expect("injected") > 0);
    assert!(s["rules"][0]["matched"].as_u64().expect("matched") > 0);
    let swapped = s["swapped"].as_array().expect("swapped");
    assert!(
        swapped
            .iter()
            .any(|f| f["fd"] == 3 && f["path"].as_str().is_some_and(|p| p.ends_with("/held"))),
        "the held fd was not swapped: {swapped:?}"
    );
    assert!(s["skipped"].is_array());
    let server = iochaos_testsupport::json_pid(&s["server_pid"]);

    // Latency instead of errors: the writes succeed, each one delayed by the rule.
    let spec = env.path().join("latency.json");
    std::fs::write(&spec, r#"{"rules":[{"ops":["write"],"latency":"150ms"}]}"#).expect("spec");
    env.ok(&["update", &id, "--spec", spec.to_str().expect("utf-8")]);
    log.wait_for('W', true, log.last_round());
    let delayed = |st: &[Value]| st[0]["rules"][0]["injected"].as_u64().expect("injected");
    let before = delayed(&env.status());
    // No line of round r + 1 was logged when `before` was read, so rounds r + 2 and r + 3
    // started after it: their four writes (W and H) were all delayed since.
    let r = log.last_round();
    log.wait_round(r + 3);
    let st = env.status();
    assert_eq!(st[0]["rules"][0]["spec"]["latency"], "150ms");
    assert!(
        delayed(&st) >= before + 4,
        "{} writes delayed in two rounds under 150ms latency",
        delayed(&st) - before
    );

    let t0 = Instant::now();
    env.ok(&["recover", &id]);
    eprintln!("recover took {:?}", t0.elapsed());
    // No fault any more: every later operation succeeds, and the server is gone (nothing can
    // delay them).
    log.assert_recovered();
    env.assert_clean(&[server], None);
    id
}

/// A minimal busybox root filesystem at DIR/rootfs (static busybox, a few applets, mount
/// points); returns its path.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    iochaos_testsupport::busybox_rootfs(
        &rootfs,
        &[
            "proc", "dev", "sys", "tmp", "vol", "log", "data", "hold", "usr",
        ],
        &["sh", "cat", "echo", "sleep", "usleep", "ls", "true"],
    );
    // For the holder test binary: the host's /usr is bind-mounted (read-only) at /usr.
    std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).expect("symlink");
    std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).expect("symlink");
    rootfs
}

/// The test binary, to run its `holder_process` (see [`HOLDER_ARGS`]).
pub fn test_exe() -> PathBuf {
    std::env::current_exe().expect("test exe")
}

/// The environment variable that makes `holder_process` hold files under the directory it names.
pub const HOLDER_ENV: &str = "IOCHAOS_TEST_HOLDER";

/// Arguments to the test binary that run only its (ignored) `holder_process`.
pub const HOLDER_ARGS: [&str; 6] = [
    "--exact",
    "holder_process",
    "--ignored",
    "--nocapture",
    "--test-threads",
    "1",
];

/// How many files the holder holds open, and in how many threads.
const HOLDER_FILES: usize = 1000;
const HOLDER_THREADS: usize = 16;

/// "OK ERR" counts the holder writes to DIR/counts (DIR/final once it stopped writing).
pub fn counts(dir: &Path) -> Option<(u64, u64)> {
    read_counts(&dir.join("counts"))
}

fn read_counts(file: &Path) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(file).ok()?;
    let mut f = s.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// `link -> mnt_id` of fd `fd` of `pid`.
pub fn fd_state(pid: u32, fd: i32) -> (String, String) {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let mnt = info
        .lines()
        .find(|l| l.starts_with("mnt_id:"))
        .unwrap_or_default()
        .to_owned();
    (link, mnt)
}

/// [`fd_state`] of every fd of `pid` on a file under `dir` (as `pid` sees it), by fd number.
pub fn fds_under(pid: u32, dir: &str) -> std::collections::BTreeMap<i32, (String, String)> {
    let prefix = format!("{dir}/");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .map(|fd| (fd, fd_state(pid, fd)))
        .filter(|(_, (link, _))| link.starts_with(&prefix))
        .collect()
}

/// The pid owning a POSIX lock on `path` that conflicts with a write lock (`F_GETLK`, pid as
/// this process sees it), if any.
fn lock_owner(path: &Path) -> Option<i32> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open to test the lock");
    let mut fl = whole_file_lock(libc::F_WRLCK);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETLK(&mut fl)).expect("F_GETLK");
    (i32::from(fl.l_type) != libc::F_UNLCK).then_some(fl.l_pid)
}

/// A lock of `kind` (F_WRLCK, F_UNLCK…) over the whole file.
fn whole_file_lock(kind: i32) -> libc::flock {
    libc::flock {
        l_type: i16::try_from(kind).expect("lock type fits l_type"),
        l_whence: i16::try_from(libc::SEEK_SET).expect("SEEK_SET fits l_whence"),
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The environment variable that makes `holder_process` hold `FILES THREADS PAUSE_MS` instead
/// of 1,000 files in 16 threads writing each every 5 ms.
pub const HOLDER_SIZE_ENV: &str = "IOCHAOS_TEST_HOLDER_SIZE";

/// Not a test: the holder's entry point. When [`HOLDER_ENV`] names a directory, hold 1,000
/// files (or what [`HOLDER_SIZE_ENV`] says) open under DIR/vol in 16 threads (never returns);
/// otherwise return at once.
pub fn holder_main() {
    if let Some(dir) = std::env::var_os(HOLDER_ENV) {
        let size = std::env::var(HOLDER_SIZE_ENV).unwrap_or_default();
        let mut size = size.split(' ').filter_map(|n| n.parse::<usize>().ok());
        let (files, threads, pause) = (size.next(), size.next(), size.next());
        hold_files(
            Path::new(&dir),
            files.unwrap_or(HOLDER_FILES),
            threads.unwrap_or(HOLDER_THREADS),
            Duration::from_millis(pause.map_or(5, |p| u64::try_from(p).expect("pause"))),
        );
    }
}

/// The holder `pid` (started with [`HOLDER_ARGS`] and [`HOLDER_ENV`] = `dir` as it sees it,
/// `dir` here on the host) through inject and recover at `vol` (DIR/vol as the holder sees
/// it); `target` is the pid whose mount table must have no ChaosFS left. What is observed
/// from outside the holder:
/// * each held fd points into ChaosFS while injected (same path, the ChaosFS mount's id) and
///   back at the very mount it was on before after recover;
/// * the POSIX lock the holder took on f0 is its own before and after;
/// * the writes fail while injected and succeed after recover;
/// * once the holder stopped, every write it counted as done is in the files and none it
///   counted as failed: the files hold exactly 2 bytes ("x\n") per successful write.
pub fn thousand_files(env: &Env, pid: u32, dir: &Path, vol: &str, target: Option<u32>) {
    held_files(env, pid, dir, vol, target, HOLDER_FILES);
}

/// [`thousand_files`] for a holder of `n` files.
pub fn held_files(env: &Env, pid: u32, dir: &Path, vol: &str, target: Option<u32>, n: usize) {
    poll("the holder to open its files", 30, || {
        counts(dir).filter(|c| c.0 > 0)
    });
    let before = fds_under(pid, vol);
    // The files, and the lock's fd on f0.
    assert_eq!(
        before.len(),
        n + 1,
        "held fds: {} of {}",
        before.len(),
        n + 1
    );
    let owner = i32::try_from(pid).expect("pid");
    let f0 = dir.join("vol/f0");
    assert_eq!(
        lock_owner(&f0),
        Some(owner),
        "the holder's lock before inject"
    );
    let pid_s = pid.to_string();
    env.inject(&["--pid", &pid_s], vol, EIO_ON_WRITE);
    let st = env.status();
    let swapped = st[0]["swapped"].as_array().expect("swapped").len();
    assert!(swapped >= n, "only {swapped} fds swapped");
    let server = st[0]["server_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("server pid");
    let during = fds_under(pid, vol);
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    for (fd, (link, mnt)) in &before {
        let (link2, mnt2) = &during[fd];
        assert_eq!(link2, link, "fd {fd} moved to another file");
        let id = mnt2.trim_start_matches("mnt_id:").trim();
        assert!(
            mnt2 != mnt
                && mi
                    .lines()
                    .any(|l| l.split(' ').next() == Some(id) && l.contains(" - fuse.chaosfs ")),
            "fd {fd} ({link}) is not on ChaosFS while injected: {mnt2}\n{mi}"
        );
    }
    let (_, e0) = counts(dir).expect("counts");
    let n64 = u64::try_from(n).expect("file count");
    poll("errors from all files", 60, || {
        counts(dir).filter(|c| c.1 >= e0 + 2 * n64)
    });
    env.ok(&["recover", "--pid", &pid_s]);
    assert_holder_recovered(dir);
    assert_eq!(fds_under(pid, vol), before, "held fds after recover");
    assert_eq!(
        lock_owner(&f0),
        Some(owner),
        "the holder's lock after recover"
    );
    env.assert_clean(&[server], target);
    // Stop the writers, then compare what they counted with the bytes on disk.
    std::fs::write(dir.join("stop"), "").expect("stop file");
    let (ok, err) = poll("the holder to stop writing", 30, || {
        read_counts(&dir.join("final"))
    });
    assert!(err > 0, "no write failed");
    let mut bytes = 0;
    for i in 0..n {
        let data = std::fs::read(dir.join(format!("vol/f{i}"))).expect("held file");
        assert!(
            data.chunks(2).all(|c| c == b"x\n"),
            "f{i} holds more than the holder's writes"
        );
        bytes += data.len();
    }
    assert_eq!(
        u64::try_from(bytes).expect("size"),
        2 * ok,
        "{ok} writes succeeded, {err} failed"
    );
}

/// After a recover: the holder's writes succeed again and, once they have for a few rounds, none
/// fails any more. (A write in flight when the fds moved back may fail; that is before.) An
/// error count compared with one read at recover time would also count failures that happened
/// before recover but reached the counts file after it.
pub fn assert_holder_recovered(dir: &Path) {
    let (o1, _) = poll("counts", 5, || counts(dir));
    let (o2, e2) = poll("writes succeeding again", 30, || {
        counts(dir).filter(|c| c.0 >= o1 + 4000)
    });
    let (_, e3) = poll("more writes succeeding", 30, || {
        counts(dir).filter(|c| c.0 >= o2 + 2000)
    });
    assert_eq!(
        e3, e2,
        "writes still failing after recover: {e2} -> {e3} errors"
    );
}

/// Open `n` files under DIR/vol in `threads` threads (and hold a POSIX write lock on f0), write
/// "x\n" to each of them continuously, and keep DIR/counts up to date with "OK ERR" totals.
/// Once DIR/stop exists, every thread stops writing and the final totals go to DIR/final.
pub fn hold_files(dir: &Path, n: usize, threads: usize, pause: Duration) -> ! {
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let open = |i: usize| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("vol").join(format!("f{i}")))
            .expect("open")
    };
    let lock = open(0);
    nix::fcntl::fcntl(
        &lock,
        nix::fcntl::FcntlArg::F_SETLK(&whole_file_lock(libc::F_WRLCK)),
    )
    .expect("lock f0");
    for t in 0..threads {
        let (ok, err, ready) = (ok.clone(), err.clone(), ready.clone());
        let (stop, stopped) = (stop.clone(), stopped.clone());
        let mut files: Vec<std::fs::File> = (0..n).filter(|i| i % threads == t).map(open).collect();
        std::thread::spawn(move || {
            ready.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                for f in &mut files {
                    match f.write_all(b"x\n") {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => err.fetch_add(1, Ordering::Relaxed),
                    };
                }
                std::thread::sleep(pause);
            }
            stopped.fetch_add(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        });
    }
    let threads = u64::try_from(threads).expect("thread count");
    let write_counts = |name: &str| {
        let tmp = dir.join("counts.tmp");
        let line = format!(
            "{} {}\n",
            ok.load(Ordering::SeqCst),
            err.load(Ordering::SeqCst)
        );
        let _ = std::fs::write(&tmp, line);
        let _ = std::fs::rename(&tmp, dir.join(name));
    };
    loop {
        if dir.join("stop").exists() {
            stop.store(true, Ordering::SeqCst);
        }
        if stopped.load(Ordering::SeqCst) == threads {
            write_counts("final");
            loop {
                std::thread::park();
            }
        }
        if ready.load(Ordering::SeqCst) == threads {
            write_counts("counts");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points of the ChaosFS mounts in `pid`'s mount table at or under `dir` (a private
/// namespace copies whatever the host had when it was made, including other tests' mounts).
pub fn chaosfs_mounts_under(pid: u32, dir: &Path) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(" - fuse.chaosfs "))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// The shell workload in a private mount namespace (its own process group, killed on drop).
pub struct Workload {
    pub child: Child,
    pub vol: PathBuf,
    pub log: Log,
}

impl Workload {
    pub fn start(env: &Env, name: &str) -> Workload {
        let dir = env.path().join(name);
        let vol = dir.join("vol");
        std::fs::create_dir_all(&vol).expect("mkdir vol");
        let log = dir.join("log");
        let script = workload_script(
            vol.to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            "sleep 0.02",
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("unshare");
        let w = Workload {
            child,
            vol,
            log: Log(log),
        };
        w.log.wait_round(1);
        w
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pid_arg(&self) -> String {
        self.pid().to_string()
    }

    pub fn vol_str(&self) -> &str {
        self.vol.to_str().expect("utf-8")
    }

    /// `iochaos inject --pid PID --path VOL RULES...`, which must succeed; the injection id.
    pub fn inject(&self, env: &Env, rules: &[&str]) -> String {
        env.inject(&["--pid", &self.pid_arg()], self.vol_str(), rules)
    }

    /// The same, which must fail; (exit code, stderr).
    pub fn inject_fails(&self, env: &Env, rules: &[&str]) -> (i32, String) {
        env.inject_fails(&["--pid", &self.pid_arg()], self.vol_str(), rules)
    }

    /// ChaosFS mounts under the workload's directory in its mount table.
    pub fn chaosfs_mounts(&self) -> usize {
        chaosfs_mounts_under(self.pid(), self.vol.parent().unwrap_or(&self.vol)).len()
    }

    pub fn stop(&mut self) {
        // Also called from Drop: kill_group does not panic.
        let _ = iochaos_testsupport::kill_group(self.child.id(), iochaos_testsupport::Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}
