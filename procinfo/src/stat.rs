//! `/proc/PID/stat`.

use std::path::PathBuf;

use crate::error::{Error, Result, pid_err};

/// What iochaos needs of `/proc/PID/stat` (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3, `R`, `S`, `Z`, …
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Kernel `PF_*` flags (field 9).
    pub flags: u32,
    /// Start time in clock ticks after boot (field 22): with the pid it names a process.
    pub start_time: u64,
}

/// `PF_KTHREAD` of include/linux/sched.h.
const PF_KTHREAD: u32 = 0x0020_0000;

impl ProcStat {
    /// Read and parse `/proc/<pid>/stat`.
    pub fn read(pid: u32) -> Result<ProcStat> {
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let text = std::fs::read_to_string(&path).map_err(pid_err(pid, &path))?;
        ProcStat::parse(&text).ok_or_else(|| Error::Format {
            path,
            detail: "unexpected format".into(),
        })
    }

    /// Parse the text of a `/proc/PID/stat` file. The command name may hold spaces and
    /// parentheses, so fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state).
        Some(ProcStat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            flags: f.get(6)?.parse().ok()?,
            start_time: f.get(19)?.parse().ok()?,
        })
    }

    /// A kernel thread (no user space).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Still running: neither a zombie (`Z`) nor dead (`X`).
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_handles_parens_in_comm() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        let s = ProcStat::parse(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.start_time, 12345);
        assert!(!s.is_kernel_thread() && s.is_alive());
        assert!(ProcStat::parse("42 (x) Z 1").is_none());
    }

    #[test]
    fn reads_our_own_stat() {
        let s = ProcStat::read(std::process::id()).expect("read");
        assert!(s.is_alive() && !s.is_kernel_thread());
        assert!(matches!(
            ProcStat::read(u32::MAX),
            Err(Error::NoSuchProcess { .. })
        ));
    }
}
