//! Parsers for the `/proc` files fdswap reads.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::Mode;

use crate::error::{Error, Result, proc_err};
use crate::sys::{self, FileId};

/// Thread ids of a process (`/proc/PID/task`).
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(proc_err(&dir))? {
        let e = e.map_err(proc_err(&dir))?;
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Open fd numbers in a task's fd table (`<task>/fd`).
pub fn fds(task_dir: &Path) -> Result<Vec<i32>> {
    let dir = task_dir.join("fd");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(proc_err(&dir))? {
        let e = e.map_err(proc_err(&dir))?;
        if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(fd);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The parts of `/proc/PID/fdinfo/N` fdswap uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// File offset.
    pub pos: u64,
    /// `f_flags`, plus `O_CLOEXEC` when the close-on-exec flag is set.
    pub flags: i32,
    /// Mount id of the file.
    pub mnt_id: u64,
    /// Kinds of locks listed on the description (`POSIX`, `FLOCK`, `OFDLCK`, `LEASE`, …).
    pub lock_kinds: Vec<String>,
    /// The locks themselves: the POSIX locks this fd table holds that were taken through this
    /// description, and the description's own `flock`/OFD locks and leases.
    pub locks: Vec<LockLine>,
}

/// Parse `fdinfo` text.
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut info = FdInfo::default();
    let mut have = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => {
                info.pos = v.parse().ok()?;
                have |= 1;
            }
            "flags" => {
                info.flags = i32::from_str_radix(v, 8).ok()?;
                have |= 2;
            }
            "mnt_id" => {
                info.mnt_id = v.parse().ok()?;
                have |= 4;
            }
            "lock" => {
                // "lock:\t1: FLOCK  ADVISORY  WRITE 123 08:01:99 0 EOF": /proc/locks' format.
                if let Some(kind) = v.split_whitespace().nth(1) {
                    info.lock_kinds.push(kind.to_owned());
                }
                info.locks.extend(parse_locks(v));
            }
            _ => {}
        }
    }
    (have == 7).then_some(info)
}

/// A task's `fd/` and `fdinfo/` directories, opened once. Reaching `/proc/PID/task/TID/fd/N`
/// by its full path walks (and revalidates, with a ptrace access check) every component each
/// time; relative to these fds it is one component.
#[derive(Debug)]
pub struct TaskFds {
    task: PathBuf,
    fd_dir: OwnedFd,
    fdinfo_dir: OwnedFd,
    buf: Vec<u8>,
}

impl TaskFds {
    /// Open `<task>/fd` and `<task>/fdinfo`.
    pub fn open(task: &Path) -> Result<TaskFds> {
        let dir = |name: &str| {
            let p = task.join(name);
            openat(
                nix::fcntl::AT_FDCWD,
                &p,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::Proc {
                path: p,
                source: e.into(),
            })
        };
        Ok(TaskFds {
            task: task.to_owned(),
            fd_dir: dir("fd")?,
            fdinfo_dir: dir("fdinfo")?,
            buf: vec![0; 4096],
        })
    }

    /// Open fd numbers, sorted.
    pub fn list(&self) -> Result<Vec<i32>> {
        fds(&self.task)
    }

    /// The link text of fd `fd` (`/path`, `socket:[…]`, `anon_inode:…`).
    pub fn link(&self, fd: i32) -> std::result::Result<String, Errno> {
        let t = readlinkat(self.fd_dir.as_fd(), fd.to_string().as_str())?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// `statx` of the file behind fd `fd` with `AT_STATX_DONT_SYNC` (cached attributes).
    pub fn stat(&self, fd: i32) -> std::result::Result<FileId, Errno> {
        sys::statx_at(
            self.fd_dir.as_fd(),
            Path::new(&fd.to_string()),
            libc::AT_STATX_DONT_SYNC,
        )
    }

    /// `fdinfo/N`.
    pub fn info(&mut self, fd: i32) -> Result<FdInfo> {
        let name = fd.to_string();
        let path = || self.task.join("fdinfo").join(&name);
        let file = openat(
            self.fdinfo_dir.as_fd(),
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Proc {
            path: path(),
            source: e.into(),
        })?;
        let mut file = fs::File::from(file);
        // fdinfo is a single_open seq_file: its whole text comes in the first read when the
        // buffer is larger, so a short read is the end.
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(2 * len, 0);
            }
            let n = file.read(&mut self.buf[len..]).map_err(|e| Error::Proc {
                path: path(),
                source: e,
            })?;
            len += n;
            if n == 0 || len < self.buf.len() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&self.buf[..len]);
        parse_fdinfo(&text).ok_or_else(|| Error::ProcFormat {
            path: path(),
            line: text.lines().next().unwrap_or_default().to_owned(),
        })
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxs`/`rwxp`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Device `major:minor` (hex in the file).
    pub dev: (u32, u32),
    /// Inode.
    pub ino: u64,
    /// Path text (may end in ` (deleted)`), empty for anonymous mappings.
    pub path: String,
}

impl MapLine {
    /// Shared (`s`) rather than private (`p`).
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
}

/// Parse `maps` text.
pub fn parse_maps(text: &str) -> Option<Vec<MapLine>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let range = it.next()?;
        let perms = it.next()?;
        let offset = it.next()?;
        let dev = it.next()?;
        let ino = it.next()?;
        let path = it.next().unwrap_or("").trim_start();
        let (s, e) = range.split_once('-')?;
        let (ma, mi) = dev.split_once(':')?;
        out.push(MapLine {
            start: u64::from_str_radix(s, 16).ok()?,
            end: u64::from_str_radix(e, 16).ok()?,
            perms: perms.to_owned(),
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev: (
                u32::from_str_radix(ma, 16).ok()?,
                u32::from_str_radix(mi, 16).ok()?,
            ),
            ino: ino.parse().ok()?,
            path: path.to_owned(),
        });
    }
    Some(out)
}

/// Read `/proc/PID/maps`.
pub fn maps(pid: i32) -> Result<Vec<MapLine>> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = fs::read_to_string(&path).map_err(proc_err(&path))?;
    parse_maps(&text).ok_or(Error::ProcFormat {
        path,
        line: String::new(),
    })
}

/// A POSIX record lock from `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// `POSIX`, `FLOCK`, `OFDLCK`, `LEASE`, …
    pub kind: String,
    /// Write (exclusive) rather than read.
    pub write: bool,
    /// Owner pid as the reader's pid namespace shows it (-1 for OFD locks).
    pub pid: i32,
    /// Device.
    pub dev: (u32, u32),
    /// Inode.
    pub ino: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, `None` for EOF.
    pub end: Option<u64>,
}

/// Parse lock lines in `/proc/locks`' format (lines of blocked waiters, `->`, are skipped).
pub fn parse_locks(text: &str) -> Vec<LockLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f.get(1) == Some(&"->") {
            continue;
        }
        let parse = || -> Option<LockLine> {
            let mut dev = f[5].split(':');
            let ma = u32::from_str_radix(dev.next()?, 16).ok()?;
            let mi = u32::from_str_radix(dev.next()?, 16).ok()?;
            let ino = dev.next()?.parse().ok()?;
            Some(LockLine {
                kind: f[1].to_owned(),
                write: f[3] == "WRITE",
                pid: f[4].parse().ok()?,
                dev: (ma, mi),
                ino,
                start: f[6].parse().ok()?,
                end: if f[7] == "EOF" {
                    None
                } else {
                    Some(f[7].parse().ok()?)
                },
            })
        };
        if let Some(l) = parse() {
            out.push(l);
        }
    }
    out
}

/// Signal masks of a task (`SigBlk`, `SigIgn`, `SigCgt` of `<task>/status`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SigMasks {
    /// Blocked in this thread.
    pub blocked: u64,
    /// Ignored.
    pub ignored: u64,
    /// Caught (a handler is installed).
    pub caught: u64,
}

/// Read the signal masks of a task.
pub fn sig_masks(task_dir: &Path) -> Result<SigMasks> {
    let path = task_dir.join("status");
    let text = fs::read_to_string(&path).map_err(proc_err(&path))?;
    let mut m = SigMasks::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
        match k {
            "SigBlk" => m.blocked = v,
            "SigIgn" => m.ignored = v,
            "SigCgt" => m.caught = v,
            _ => {}
        }
    }
    Ok(m)
}

/// `readlink`, as text.
pub fn link(path: &Path) -> Result<String> {
    let t = fs::read_link(path).map_err(proc_err(path))?;
    Ok(t.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parses() {
        let t = "pos:\t42\nflags:\t02102002\nmnt_id:\t31\nino:\t7\nlock:\t1: FLOCK  ADVISORY  WRITE 9 08:01:7 0 EOF\n";
        let i = parse_fdinfo(t).expect("parses");
        assert_eq!(i.pos, 42);
        assert_eq!(i.flags, 0o2102002);
        assert_eq!(i.mnt_id, 31);
        assert_eq!(i.lock_kinds, vec!["FLOCK".to_owned()]);
        assert_eq!(i.locks.len(), 1);
        assert_eq!((i.locks[0].pid, i.locks[0].ino), (9, 7));
    }

    #[test]
    fn locks_parse() {
        let t = "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n1: -> POSIX  ADVISORY  WRITE 99 08:01:5678 0 EOF\n2: OFDLCK ADVISORY  READ  -1 00:2e:12 10 19\n";
        let l = parse_locks(t);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].pid, 1234);
        assert_eq!(l[0].dev, (8, 1));
        assert!(l[0].write && l[0].end.is_none());
        assert_eq!(l[1].dev, (0, 0x2e));
        assert_eq!(l[1].end, Some(19));
    }

    #[test]
    fn maps_parse() {
        let t = "7f00-7f10 rw-s 00001000 00:2e 12     /data/x (deleted)\n7f10-7f20 r--p 00000000 00:00 0 \n";
        let m = parse_maps(t).expect("parses");
        assert!(m[0].shared());
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].path, "/data/x (deleted)");
        assert_eq!(m[1].path, "");
    }
}
