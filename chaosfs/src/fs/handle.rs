//! Open file and directory handles (the FUSE `fh`), each holding a real fd of the backing file:
//! its own for a directory (a directory stream has a position), shared with the other handles
//! of the same inode opened with the same flags for a file ([`super::inode::share_key`]).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::inode::{IdMap, Inode};

const SHARDS: usize = 32;

/// How a file handle's reads and writes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Kernel passthrough: reads and writes go to the backing file without reaching ChaosFS.
    Passthrough,
    /// `FOPEN_DIRECT_IO`: every read and write is a request that meets the rules.
    Direct,
}

/// A directory stream: the fd and the unconsumed part of the last `getdents64` batch.
pub(crate) struct DirStream {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    /// The offset the next entry in `buf` follows (what the kernel passes to continue after the
    /// last entry it received).
    pub next_offset: u64,
    pub eof: bool,
}

pub(crate) enum HandleKind {
    File {
        mode: OpenMode,
        o_direct: bool,
        /// Opened `O_SYNC` or `O_DSYNC` (fixed at open: `F_SETFL` cannot change either), so
        /// every write through it is durable once it returns (crash mode, docs/crash.md).
        sync: bool,
        /// Opened with `FOPEN_NOFLUSH`: its closes send no FLUSH.
        noflush: bool,
    },
    Dir(Mutex<DirStream>),
}

pub(crate) struct Handle {
    pub fd: Arc<OwnedFd>,
    pub inode: Arc<Inode>,
    pub kind: HandleKind,
    /// The path the file was opened by (kept only while rules select by path), so requests on
    /// the handle of a hard-linked file meet the rules of the name it was opened by.
    pub path: Option<Box<std::path::Path>>,
    /// `path` is the whole relative path (else only the file name).
    pub path_full: bool,
}

type Shard = RwLock<IdMap<u64, Arc<Handle>>>;

pub(crate) struct HandleTable {
    shards: Box<[Shard]>,
    next: AtomicU64,
}

impl HandleTable {
    pub(crate) fn new() -> Self {
        HandleTable {
            shards: (0..SHARDS).map(|_| RwLock::new(IdMap::default())).collect(),
            next: AtomicU64::new(1),
        }
    }

    fn shard(&self, fh: u64) -> &Shard {
        // The remainder is below SHARDS, so it fits a usize; 0 is only a formal fallback.
        &self.shards[usize::try_from(fh % SHARDS as u64).unwrap_or(0)]
    }

    pub(crate) fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.shard(fh).write() {
            s.insert(fh, Arc::new(h));
        }
        fh
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh).read().ok()?.get(&fh).cloned()
    }

    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh).write().ok()?.remove(&fh)
    }
}
