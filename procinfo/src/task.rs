//! The processes (`/proc`), a process's threads (`/proc/PID/task`), fd numbers (`fd/`), signal masks (`status`) and
//! links (`cwd`, `root`, `fd/N`).

use std::path::Path;

use crate::error::{Result, io_err};

/// Process ids (the numbered entries of `/proc`), sorted.
pub fn pids() -> Result<Vec<u32>> {
    numbered_entries(Path::new("/proc"))
}

/// Thread ids of a process (`/proc/PID/task`), sorted (`pid`: a `pid_t`).
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    numbered_entries(Path::new(&format!("/proc/{pid}/task")))
}

/// Open fd numbers in a task's fd table (`<task>/fd`), sorted.
pub fn fds(task_dir: &Path) -> Result<Vec<i32>> {
    numbered_entries(&task_dir.join("fd"))
}

/// The entries of `dir` named by a number, sorted.
fn numbered_entries<N: std::str::FromStr + Ord>(dir: &Path) -> Result<Vec<N>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Signal masks of a task (`SigPnd`/`ShdPnd`, `SigBlk`, `SigIgn`, `SigCgt` of `<task>/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigMasks {
    /// Pending: for this thread, or for the whole process (`SigPnd | ShdPnd`).
    pub pending: u64,
    /// Blocked in this thread.
    pub blocked: u64,
    /// Ignored.
    pub ignored: u64,
    /// Caught (a handler is installed).
    pub caught: u64,
}

impl SigMasks {
    /// Parse `status` text (a mask that does not parse reads as 0).
    pub fn parse(text: &str) -> SigMasks {
        let mut m = SigMasks::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            match k {
                "SigPnd" | "ShdPnd" => m.pending |= v,
                "SigBlk" => m.blocked = v,
                "SigIgn" => m.ignored = v,
                "SigCgt" => m.caught = v,
                _ => {}
            }
        }
        m
    }
}

/// Read the signal masks of a task (`task_dir`: `/proc/PID/task/TID`).
pub fn sig_masks(task_dir: &Path) -> Result<SigMasks> {
    let path = task_dir.join("status");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    Ok(SigMasks::parse(&text))
}

/// `readlink`, as text.
pub fn link(path: &Path) -> Result<String> {
    let t = std::fs::read_link(path).map_err(io_err(path))?;
    Ok(t.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_masks_parse() {
        let m = SigMasks::parse(
            "Name:\tx\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000001\n\
             SigBlk:\t0000000000010000\nSigIgn:\t0000000000000004\nSigCgt:\tzz\n",
        );
        assert_eq!(
            m,
            SigMasks {
                pending: 0x101,
                blocked: 0x10000,
                ignored: 4,
                caught: 0
            }
        );
    }

    #[test]
    fn reads_our_own_tasks_and_links() {
        let pid = i32::try_from(std::process::id()).expect("pid_t");
        assert!(tasks(pid).expect("tasks").contains(&pid));
        assert!(pids().expect("pids").contains(&std::process::id()));
        assert!(fds(Path::new("/proc/self")).expect("fds").contains(&0));
        assert!(
            link(Path::new("/proc/self/cwd"))
                .expect("cwd")
                .starts_with('/')
        );
        sig_masks(Path::new(&format!("/proc/self/task/{pid}"))).expect("masks");
    }
}
