//! A CPU wake-up latency request held while a target is stopped.

use std::fs::{File, OpenOptions};
use std::io::Write;

/// A PM QoS request for 0 µs CPU wake-up latency (`/dev/cpu_dma_latency`): while it is held,
/// idle CPUs poll instead of entering idle states, so a wake-up reaches a running CPU. The
/// stub of a swap through FUSE is a chain of synchronous round trips with the filesystem
/// server (an OPEN or FLUSH per file), each two wake-ups; on a VM whose idle CPUs halt (a
/// halt is a VM exit, and so is the IPI that ends it) this halves the target's pause.
///
/// Held for milliseconds only: the kernel drops the request when the file is closed (on drop,
/// or when this process dies), so nothing outlives it. Best effort: without the device (or the
/// privilege to open it) nothing changes.
#[derive(Debug)]
pub struct CpuLatency(Option<File>);

impl CpuLatency {
    /// Ask for 0 µs wake-up latency until the value is dropped.
    pub fn hold() -> CpuLatency {
        let file = OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|()| f));
        match file {
            Ok(f) => CpuLatency(Some(f)),
            Err(e) => {
                tracing::debug!(error = %e, "no CPU latency request");
                CpuLatency(None)
            }
        }
    }

    /// Whether the request is in force.
    pub fn held(&self) -> bool {
        self.0.is_some()
    }
}
