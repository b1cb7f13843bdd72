#![doc = include_str!("../README.md")]

mod error;
pub mod fdinfo;
pub mod maps;
pub mod mountinfo;
pub mod stat;
pub mod task;

pub use error::{Error, Result};
pub use fdinfo::{FdInfo, LockLine, TaskFds, parse_fdinfo, parse_locks};
pub use maps::{MapLine, maps, parse_maps};
pub use mountinfo::{Mount, MountInfo};
pub use stat::ProcStat;
pub use task::{SigMasks, fds, link, pids, sig_masks, tasks};
