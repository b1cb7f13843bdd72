//! `/proc/PID/fdinfo/N` and the lock lines it shares with `/proc/locks`, and [`TaskFds`], the
//! fast way to read them for every fd of a task.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};

/// The parts of `/proc/PID/fdinfo/N` iochaos uses.
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

/// Parse `fdinfo` text; `None` unless `pos`, `flags` and `mnt_id` are all there and valid.
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut info = FdInfo::default();
    let (mut pos, mut flags, mut mnt_id) = (false, false, false);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => {
                info.pos = v.parse().ok()?;
                pos = true;
            }
            "flags" => {
                info.flags = i32::from_str_radix(v, 8).ok()?;
                flags = true;
            }
            "mnt_id" => {
                info.mnt_id = v.parse().ok()?;
                mnt_id = true;
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
    (pos && flags && mnt_id).then_some(info)
}

/// A lock in `/proc/locks`' format.
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
    text.lines().filter_map(parse_lock).collect()
}

fn parse_lock(line: &str) -> Option<LockLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 || f[1] == "->" {
        return None;
    }
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
    /// Open `<task>/fd` and `<task>/fdinfo` (`task`: `/proc/PID` or `/proc/PID/task/TID`).
    pub fn open(task: &Path) -> Result<TaskFds> {
        let dir = |name: &str| {
            let p = task.join(name);
            rustix::fs::open(
                &p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::Io {
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

    /// The task directory this was opened for.
    pub fn task(&self) -> &Path {
        &self.task
    }

    /// The open `<task>/fd` directory (`O_PATH`), for `*at` calls on `N`.
    pub fn fd_dir(&self) -> BorrowedFd<'_> {
        self.fd_dir.as_fd()
    }

    /// Open fd numbers, sorted.
    pub fn list(&self) -> Result<Vec<i32>> {
        crate::task::fds(&self.task)
    }

    /// The link text of fd `fd` (`/path`, `socket:[…]`, `anon_inode:…`).
    pub fn link(&self, fd: i32) -> io::Result<String> {
        let t = rustix::fs::readlinkat(self.fd_dir.as_fd(), fd.to_string(), Vec::new())?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// `fdinfo/N`, parsed.
    pub fn info(&mut self, fd: i32) -> Result<FdInfo> {
        let name = fd.to_string();
        let len = self.read_fdinfo(&name).map_err(|e| Error::Io {
            path: self.task.join("fdinfo").join(&name),
            source: e,
        })?;
        let path = || self.task.join("fdinfo").join(&name);
        let text = String::from_utf8_lossy(&self.buf[..len]);
        parse_fdinfo(&text).ok_or_else(|| Error::Format {
            path: path(),
            detail: text.lines().next().unwrap_or_default().to_owned(),
        })
    }

    /// Read `fdinfo/<name>` into `self.buf`; returns its length.
    fn read_fdinfo(&mut self, name: &str) -> io::Result<usize> {
        let file = rustix::fs::openat(
            self.fdinfo_dir.as_fd(),
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // fdinfo is a single_open seq_file: its whole text comes in the first read when the
        // buffer is larger, so a short read is the end.
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(2 * len, 0);
            }
            let n = rustix::io::read(&file, &mut self.buf[len..])?;
            len += n;
            if n == 0 || len < self.buf.len() {
                return Ok(len);
            }
        }
    }
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
    fn fdinfo_needs_pos_flags_and_mnt_id() {
        assert!(parse_fdinfo("pos:\t0\nflags:\t02\n").is_none());
        assert!(parse_fdinfo("pos:\tx\nflags:\t02\nmnt_id:\t1\n").is_none());
        assert!(parse_fdinfo("pos:\t0\nflags:\t09\nmnt_id:\t1\n").is_none());
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
    fn reads_our_own_fds() {
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut t = TaskFds::open(Path::new("/proc/self")).expect("open task");
        assert!(t.list().expect("list").contains(&fd));
        assert!(t.link(fd).expect("link").ends_with("/stat"));
        let i = t.info(fd).expect("info");
        assert_eq!(i.pos, 0);
        assert_ne!(i.mnt_id, 0);
    }
}
