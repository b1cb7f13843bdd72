//! Shared helpers: a testee process in its own mount namespace, mounts made inside it with
//! nsenter (they vanish with the namespace), and /proc readers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

pub const TESTEE: &str = env!("CARGO_BIN_EXE_fdswap-testee");

/// These tests ptrace and mount: they need root and fail (not skip) without it.
pub fn require_root() {
    iochaos_testsupport::require_root("ptrace, mount namespaces, bind mounts");
}

pub struct Testee {
    pub child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: i32,
    pub fds: HashMap<String, i32>,
    pub maps: HashMap<String, u64>,
    pub seen: Vec<String>,
}

impl Testee {
    pub fn spawn(dir: &Path, args: &[&str]) -> Testee {
        Self::spawn_with(Command::new(TESTEE), dir, args, false)
    }

    /// The testee as pid 1 of a new pid namespace (like a container's init).
    pub fn spawn_in_pid_ns(dir: &Path, args: &[&str]) -> Testee {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", TESTEE]);
        Self::spawn_with(cmd, dir, args, true)
    }

    fn spawn_with(mut cmd: Command, dir: &Path, args: &[&str], via_unshare: bool) -> Testee {
        let mut child = cmd
            .arg("serve")
            .arg(dir)
            .arg("--unshare")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn testee");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut pid = i32::try_from(child.id()).expect("a pid_t");
        if via_unshare {
            // The testee is unshare's child.
            let children = format!("/proc/{pid}/task/{pid}/children");
            let t0 = Instant::now();
            pid = loop {
                let c = std::fs::read_to_string(&children).unwrap_or_default();
                if let Some(p) = c.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    break p;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no child of unshare"
                );
                std::thread::sleep(Duration::from_millis(1));
            };
        }
        let mut t = Testee {
            child,
            stdin,
            lines: rx,
            pid,
            fds: HashMap::new(),
            maps: HashMap::new(),
            seen: Vec::new(),
        };
        loop {
            let l = t.line(Duration::from_secs(60));
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.first().copied() {
                Some("FD") => {
                    t.fds.insert(f[1].to_owned(), f[2].parse().expect("fd"));
                }
                Some("MAP") => {
                    t.maps.insert(
                        f[1].to_owned(),
                        u64::from_str_radix(f[2], 16).expect("addr"),
                    );
                }
                Some("OWN") => {
                    t.fds
                        .insert("own_tid".to_owned(), f[1].parse().expect("tid"));
                    t.fds.insert("own_fd".to_owned(), f[2].parse().expect("fd"));
                }
                Some("READY") => break,
                _ => {}
            }
        }
        t
    }

    pub fn line(&mut self, timeout: Duration) -> String {
        let l = self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "testee {} said nothing: {e}; seen {:?}",
                self.pid, self.seen
            )
        });
        self.seen.push(l.clone());
        l
    }

    /// Send a command and return the first line starting with `reply`.
    pub fn ask(&mut self, cmd: &str, reply: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to testee");
        self.stdin.flush().expect("flush");
        loop {
            let l = self.line(Duration::from_secs(30));
            if l.starts_with(reply) {
                return l;
            }
        }
    }

    pub fn fd(&self, name: &str) -> i32 {
        self.fds[name]
    }

    /// Mount inside the testee's mount namespace.
    pub fn mount(&self, args: &[&str]) {
        let st = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "mount"])
            .args(args)
            .status()
            .expect("nsenter mount");
        assert!(st.success(), "mount {args:?} failed");
    }

    pub fn umount_lazy(&self, path: &Path) {
        let st = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "umount", "-l"])
            .arg(path)
            .status()
            .expect("nsenter umount");
        assert!(st.success(), "umount failed");
    }

    /// Mount id of the top mount at `path` in the testee's namespace.
    /// Bind `src` over `dst` in the testee's mount namespace; the new mount's id.
    pub fn bind(&self, src: &Path, dst: &Path) -> u64 {
        let utf8 = |p: &Path| p.to_str().expect("utf8").to_owned();
        self.mount(&["--bind", &utf8(src), &utf8(dst)]);
        self.top_mount(dst)
    }

    pub fn top_mount(&self, path: &Path) -> u64 {
        fdswap::statx(
            &PathBuf::from(format!("/proc/{}/root", self.pid))
                .join(path.strip_prefix("/").expect("absolute")),
        )
        .expect("statx in testee root")
        .mnt_id
    }

    /// Wait until `n` thread reports ("T name result") have been seen; returns name -> result.
    pub fn thread_reports(&mut self, n: usize) -> std::collections::HashMap<String, String> {
        loop {
            let r: std::collections::HashMap<String, String> = self
                .seen
                .iter()
                .filter_map(|l| l.strip_prefix("T "))
                .filter_map(|r| r.split_once(' '))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            if r.len() >= n {
                return r;
            }
            self.line(Duration::from_secs(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Testee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
}

pub fn fdinfo(pid: i32, fd: i32) -> Info {
    let t = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let get = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{k} in fdinfo"))
    };
    Info {
        pos: get("pos:").parse().expect("pos"),
        flags: u32::from_str_radix(&get("flags:"), 8).expect("flags"),
        mnt_id: get("mnt_id:").parse().expect("mnt_id"),
    }
}

pub fn link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .expect("readlink")
        .to_string_lossy()
        .into_owned()
}

pub fn ino(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

pub fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps")
}

pub fn proc_locks() -> String {
    std::fs::read_to_string("/proc/locks").expect("/proc/locks")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Copy the regular files of `from` into `to` (the "upper" layer a bind mount will show).
pub fn copy_files(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// The fds of `pid` on files under a `many/` directory.
pub fn many_fds(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let l = std::fs::read_link(e.path()).ok()?;
            if l.to_string_lossy().contains("/many/f") {
                e.file_name().to_str()?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    v.sort();
    v
}

/// The stub memory of `pid` (the anonymous rwx mapping fdswap makes), if present.
pub fn stub_range(pid: i32) -> Option<(u64, u64)> {
    maps(pid)
        .lines()
        .find(|l| l.contains(" rwxp "))
        .and_then(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
}

/// Is `pid` executing the stub right now: the stub memory holds a header whose status is
/// still 0 (running) while early ops already have results.
pub fn in_stub(pid: i32) -> bool {
    use std::os::unix::fs::FileExt;
    let Some((a, b)) = stub_range(pid) else {
        return false;
    };
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    let len = usize::try_from(b - a).map_or(64 * 1024, |l| l.min(64 * 1024));
    let mut buf = vec![0u8; len];
    if mem.read_exact_at(&mut buf, a).is_err() {
        return false;
    }
    let word = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]));
    // The header follows the code, 64-byte aligned: op table at offset 256, undo table after.
    for off in (0..4096).step_by(64) {
        if word(off + 8) == 256 && word(off + 96) > 256 && word(off) > 0 {
            let status = word(off + 16);
            let ops = off + 256;
            let started = (0..40).any(|k| {
                let r = ops + k * 96 + 80;
                r + 8 <= len && word(r) != 0
            });
            return status == 0 && started;
        }
    }
    false
}

/// Wait for the child to exit, at most `timeout`; its terminating signal, if it exited.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
