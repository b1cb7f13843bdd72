#![doc = include_str!("../README.md")]

mod arch;
mod error;
mod latency;
mod mountns;
mod plan;
mod procfs;
mod program;
mod swap;
mod sys;
mod tracer;

pub use error::{Error, Result};
pub use latency::CpuLatency;
pub use mountns::enter_private_mount_namespace;
pub use plan::{
    CwdItem, FdItem, Item, MapItem, Plan, PosixLock, ProcessPlan, ReadAhead, ScanOptions,
    SkipReason, Skipped,
};
pub use swap::{OpenMode, ProcessReport, Report, SwapOptions, Swapped, swap, swap_plan};
pub use sys::{FileId, statx};
