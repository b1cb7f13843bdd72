//! The inode table: one entry per backing inode the kernel knows about, keyed by the backing
//! `(st_dev, st_ino)`, holding an `O_PATH` fd to it (so no path is ever rebuilt, and the backing
//! inode cannot be freed and its number reused while the kernel may still name it).
//!
//! The FUSE node id is the backing `st_ino` (fuser reports the node id as `st_ino`), except for
//! the root (node id 1) and for a backing inode whose number is already taken by another entry
//! (a second device under the directory, or a split-off entry, see [`InodeTable::detach`]): those
//! get a synthetic node id from a high range.
//!
//! Each entry has a generation (see [`InodeTable::insert`]): the kernel puts node id and
//! generation in the file handles it makes (`name_to_handle_at`), and refuses with `ESTALE` a
//! handle whose generation differs from the inode's, so a handle of a deleted file does not open
//! another file that got the same inode number.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::{ArcSwap, Guard};

use crate::fuse::{BackingId, Generation};

/// Node id of the root.
pub(crate) const ROOT: u64 = 1;
/// First synthetic node id.
const SYNTHETIC_BASE: u64 = 1 << 62;
const SHARDS: usize = 64;
/// How many entries the kernel forgot keep their backing file handle (some 100 bytes each).
const FORGOTTEN: usize = 1 << 16;

/// A fast hasher for integer keys (ids spread well in their low bits after a multiply).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// How the open files of an inode are served. The kernel requires every open of an inode that
/// has a passthrough open to be passthrough too (fs/fuse/iomode.c: EINVAL otherwise), and a
/// shared mmap of a direct-I/O open blocks later passthrough opens (ETXTBSY); so while an inode
/// has open files, new opens take the same mode.
#[derive(Default)]
pub(crate) struct OpenState {
    pub passthrough: u32,
    pub direct: u32,
    /// Open handles (either mode) the kernel closes without FLUSH (`FOPEN_NOFLUSH`).
    pub noflush: u32,
    /// The one backing id of this inode, while it has passthrough opens.
    pub backing: Option<BackingId>,
}

/// A backing file system's file handle: `(handle_type, bytes)` of `name_to_handle_at`.
pub(crate) type Handle = (i32, Box<[u8]>);

pub(crate) struct Inode {
    pub nodeid: u64,
    /// Generation given to the kernel with the node id (fixed for the life of the entry: the
    /// kernel keeps the first it sees).
    pub generation: Generation,
    /// The backing file system's file handle of the inode (kind, bytes), read once when the
    /// entry is made: its generation comes from it, and it is kept for `open_by_handle_at`
    /// once the kernel forgets the node. `None` where the file system gives no handle.
    handle: Option<Handle>,
    /// An fd of the backing inode ([`Inode::fd`]): `O_PATH | O_NOFOLLOW`, or for a regular file
    /// with open handles, one of their open fds (so an open file costs the server one fd, not
    /// two).
    fd: ArcSwap<OwnedFd>,
    pub dev: u64,
    pub ino: u64,
    /// `S_IFMT` bits of the backing inode.
    pub kind: u32,
    nlookup: AtomicU64,
    pub open: Mutex<OpenState>,
    /// The last (parent node id, name) the kernel learned this inode under; used to invalidate
    /// its dentry when rules change.
    pub name: Mutex<Option<(u64, Box<OsStr>)>>,
    /// Removed from the key index: new lookups of the same backing inode get a fresh node id.
    pub detached: AtomicBool,
    /// Open fds of the backing file shared by the file handles opened with the same
    /// [`share_key`]: (key, fd), and whether `fd` is one of them. An fd closes when its last
    /// handle is released and it is not `fd`.
    files: Mutex<Files>,
}

#[derive(Default)]
struct Files {
    shared: Vec<(i32, Weak<OwnedFd>)>,
    /// The inode's `fd` is an open file's fd (see [`Inode::adopt`]).
    node_fd_open: bool,
}

/// Open flags that only act at open time (creation, truncation, the fd's close-on-exec): two
/// opens that differ only in these can share one backing fd.
const OPEN_TIME_ONLY: i32 = libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_CLOEXEC
    | libc::O_NOFOLLOW
    | libc::O_TMPFILE;

/// The flags that decide which handles of an inode may share one backing fd: everything that
/// changes how a `pread`/`pwrite`/`fsync` on the fd behaves (access mode, `O_APPEND` — a
/// `pwrite` on an `O_APPEND` fd appends —, `O_DIRECT`, `O_SYNC`/`O_DSYNC`, `O_NOATIME`,
/// `O_NONBLOCK`, the kernel's exec flag). The server never uses a file fd's position, so
/// handles sharing an fd cannot see each other.
pub(crate) fn share_key(flags: i32) -> i32 {
    flags & !OPEN_TIME_ONLY
}

impl Inode {
    fn new(
        (nodeid, generation): (u64, Generation),
        (fd, handle): (OwnedFd, Option<Handle>),
        st: &crate::sys::file::Stat,
        nlookup: u64,
    ) -> Inode {
        Inode {
            nodeid,
            generation,
            handle,
            fd: ArcSwap::from_pointee(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            nlookup: AtomicU64::new(nlookup),
            open: Mutex::new(OpenState::default()),
            name: Mutex::new(None),
            detached: AtomicBool::new(false),
            files: Mutex::new(Files::default()),
        }
    }

    /// The fd of the backing inode, for `*at()` calls, `fstat`, `/proc/self/fd/N` paths (keep
    /// the guard while the number is in use: the fd may be swapped, see [`Inode::adopt`]). Any
    /// use works on it whether it is `O_PATH` or an open file's fd.
    pub(crate) fn fd(&self) -> Guard<Arc<OwnedFd>> {
        self.fd.load()
    }

    /// A regular file got a newly opened shared `fd`: while its node fd is `O_PATH`, that open
    /// fd becomes the node fd and the `O_PATH` fd closes (one fd for node and handles). Called
    /// with `files` locked.
    fn adopt(&self, files: &mut Files, fd: &Arc<OwnedFd>) {
        if self.kind == libc::S_IFREG && !files.node_fd_open {
            self.fd.store(fd.clone());
            files.node_fd_open = true;
        }
    }

    /// The last handle of the inode was released: if its node fd is an open file's fd, go back
    /// to an `O_PATH` fd of the same inode (reopened through `proc_fd`, `/proc/self/fd`) and
    /// let the open fd close, so the server holds no open file nobody has open (a write fd would
    /// make `execve` of the file fail with ETXTBSY, a read fd break others' write leases).
    /// Out of fds, the open fd stays the node fd (one fd either way) and this returns true: the
    /// caller then has the kernel forget files nobody holds open ([`super::FsInner::reclaim_fds`]),
    /// this one included, since closing it gave the server no fd back.
    pub(crate) fn release_node_fd(&self, proc_fd: BorrowedFd<'_>) -> bool {
        let Ok(mut files) = self.files.lock() else {
            return false;
        };
        if !files.node_fd_open {
            return false;
        }
        let cur = self.fd.load_full();
        let name = crate::sys::FdName::new(cur.as_raw_fd());
        match crate::sys::file::openat(proc_fd, name.as_cstr(), libc::O_PATH, 0) {
            Ok(path_fd) => {
                self.fd.store(Arc::new(path_fd));
                files.node_fd_open = false;
                false
            }
            Err(e) => {
                tracing::debug!(
                    "inode {}: no O_PATH fd ({e}); keeping the open fd",
                    self.nodeid
                );
                matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
            }
        }
    }

    /// The backing fd shared by handles of this inode opened with flags of key `key`; if none is
    /// open, `open()` opens it (under the lock, so concurrent opens share one fd too).
    pub(crate) fn shared_fd(
        &self,
        key: i32,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
        if let Some(fd) = live(&mut files.shared, key) {
            return Ok(fd);
        }
        let fd = Arc::new(open()?);
        files.shared.push((key, Arc::downgrade(&fd)));
        self.adopt(&mut files, &fd);
        Ok(fd)
    }

    /// Offer `fd`, just opened with flags of key `key`, for sharing: the fd already shared under
    /// that key if there is one (`fd` is closed), else `fd`, now shared.
    pub(crate) fn share(&self, key: i32, fd: OwnedFd) -> Arc<OwnedFd> {
        let Ok(mut files) = self.files.lock() else {
            return Arc::new(fd);
        };
        if let Some(shared) = live(&mut files.shared, key) {
            return shared;
        }
        let fd = Arc::new(fd);
        files.shared.push((key, Arc::downgrade(&fd)));
        self.adopt(&mut files, &fd);
        fd
    }

    /// `name` in `parent` leads to this inode (".." is no name of it).
    pub(crate) fn remember_name(&self, parent: u64, name: &OsStr) {
        if name.as_encoded_bytes() == b".." {
            return;
        }
        if let Ok(mut n) = self.name.lock() {
            match &*n {
                Some((p, old)) if *p == parent && &**old == name => {}
                _ => *n = Some((parent, name.into())),
            }
        }
    }
}

/// The fd shared under `key` in `files`, if still open; drops entries whose fds were closed.
fn live(files: &mut Vec<(i32, Weak<OwnedFd>)>, key: i32) -> Option<Arc<OwnedFd>> {
    files.retain(|(_, w)| w.strong_count() > 0);
    files
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
}

type Shard<K> = RwLock<IdMap<K, Arc<Inode>>>;

pub(crate) struct InodeTable {
    by_node: Box<[Shard<u64>]>,
    by_key: Box<[Shard<(u64, u64)>]>,
    next_synthetic: AtomicU64,
    /// Generations of entries whose backing file system gives no file handle.
    next_generation: AtomicU32,
    forgotten: Mutex<Forgotten>,
    /// Entries on the root's file system by backing file handle, for the watcher of outside
    /// changes (`watch`), which is told file handles.
    by_handle: Box<[Shard<Handle>]>,
    root: Arc<Inode>,
}

/// The backing file handles of the last [`FORGOTTEN`] entries the kernel forgot, by node id: a
/// file handle the kernel made of one still leads to its backing inode (see
/// [`InodeTable::forgotten`]).
#[derive(Default)]
struct Forgotten {
    /// node id → (sequence number, handle type, handle bytes).
    by_node: IdMap<u64, (u64, i32, Box<[u8]>)>,
    /// (sequence number, node id), oldest first.
    order: VecDeque<(u64, u64)>,
    seq: u64,
}

impl Forgotten {
    fn remember(&mut self, nodeid: u64, (kind, bytes): (i32, Box<[u8]>)) {
        self.seq += 1;
        self.by_node.insert(nodeid, (self.seq, kind, bytes));
        self.order.push_back((self.seq, nodeid));
        while self.order.len() > FORGOTTEN {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            // Only if not remembered again since.
            if self.by_node.get(&old).is_some_and(|e| e.0 == seq) {
                self.by_node.remove(&old);
            }
        }
    }
}

fn shard_of(n: u64) -> usize {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

fn handle_shard((kind, bytes): &Handle) -> usize {
    let mut h = IdHasher::default();
    h.write_i32(*kind);
    h.write(bytes);
    shard_of(h.finish())
}

fn new_shards<K>() -> Box<[Shard<K>]> {
    (0..SHARDS).map(|_| RwLock::new(IdMap::default())).collect()
}

impl InodeTable {
    pub(crate) fn new(root_fd: OwnedFd, st: &crate::sys::file::Stat) -> Self {
        // The kernel makes the root inode itself, with generation 0.
        let root = Arc::new(Inode::new(
            (ROOT, Generation(0)),
            (root_fd, None),
            st,
            u64::MAX / 2,
        ));
        let t = InodeTable {
            by_node: new_shards(),
            by_key: new_shards(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            next_generation: AtomicU32::new(1),
            forgotten: Mutex::new(Forgotten::default()),
            by_handle: new_shards(),
            root: root.clone(),
        };
        if let Ok(mut s) = t.by_node[shard_of(ROOT)].write() {
            s.insert(ROOT, root.clone());
        }
        if let Ok(mut s) = t.by_key[shard_of(st.st_ino)].write() {
            s.insert((st.st_dev, st.st_ino), root);
        }
        t
    }

    pub(crate) fn root(&self) -> &Arc<Inode> {
        &self.root
    }

    /// The inode with node id `nodeid`.
    pub(crate) fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.by_node[shard_of(nodeid)]
            .read()
            .ok()?
            .get(&nodeid)
            .cloned()
    }

    /// The entry of the backing inode `(dev, ino)`, if the kernel knows it (no lookup counted).
    pub(crate) fn find(&self, dev: u64, ino: u64) -> Option<Arc<Inode>> {
        self.by_key[shard_of(ino)]
            .read()
            .ok()?
            .get(&(dev, ino))
            .cloned()
    }

    /// Find the entry of the backing inode `(dev, ino)` and count one more kernel lookup on it.
    pub(crate) fn lookup_existing(&self, dev: u64, ino: u64) -> Option<Arc<Inode>> {
        let shard = self.by_key[shard_of(ino)].read().ok()?;
        let inode = shard.get(&(dev, ino))?;
        // Counted under the key shard lock, so a concurrent forget cannot remove it in between.
        inode.nlookup.fetch_add(1, Ordering::AcqRel);
        Some(inode.clone())
    }

    /// Count one more kernel lookup on `inode`, named by its node id (a LOOKUP of "."), if it
    /// is still in the table; `false` if the kernel's last lookup of it was already forgotten.
    pub(crate) fn lookup_again(&self, inode: &Arc<Inode>) -> bool {
        // `forget` removes an entry under the key shard's write lock, after checking its count.
        let Ok(_kshard) = self.by_key[shard_of(inode.ino)].read() else {
            return false;
        };
        let present = self.by_node[shard_of(inode.nodeid)]
            .read()
            .is_ok_and(|s| s.get(&inode.nodeid).is_some_and(|i| Arc::ptr_eq(i, inode)));
        if present {
            inode.nlookup.fetch_add(1, Ordering::AcqRel);
        }
        present
    }

    /// The generation of a new entry for the backing inode `fd`: 32 bits (the kernel's
    /// `i_generation`) of a hash of the backing file system's file handle, which holds that file
    /// system's own generation — so it is the same each time a live file is looked up again, and
    /// changes when its inode number is reused, wherever the backing file system tells the two
    /// apart (natively, `open_by_handle_at` there does too). Where the backing file system gives
    /// no handle, a per-server counter: a reused number still gets a new generation, but a live
    /// file forgotten by the kernel and looked up again does too.
    fn generation(&self, handle: Option<&Handle>) -> Generation {
        match handle {
            Some((kind, bytes)) => {
                let mut h = IdHasher::default();
                h.write_i32(*kind);
                h.write(bytes);
                let x = h.finish();
                Generation((x ^ (x >> 32)) & u64::from(u32::MAX))
            }
            None => Generation(u64::from(
                self.next_generation.fetch_add(1, Ordering::Relaxed),
            )),
        }
    }

    /// Find or insert the entry of the backing inode described by `st`, counting one kernel
    /// lookup. `fd` (an `O_PATH` fd of that inode) is used if a new entry is created, else
    /// dropped.
    pub(crate) fn insert(&self, fd: OwnedFd, st: &crate::sys::file::Stat) -> Option<Arc<Inode>> {
        let key = (st.st_dev, st.st_ino);
        let mut kshard = self.by_key[shard_of(st.st_ino)].write().ok()?;
        if let Some(inode) = kshard.get(&key) {
            inode.nlookup.fetch_add(1, Ordering::AcqRel);
            return Some(inode.clone());
        }
        let handle = crate::sys::file::file_handle(fd.as_fd()).ok();
        let generation = self.generation(handle.as_ref());
        let mut fd = Some((fd, handle));
        let mut make = |nodeid: u64| -> Option<Arc<Inode>> {
            Some(Arc::new(Inode::new(
                (nodeid, generation),
                fd.take()?,
                st,
                1,
            )))
        };
        // Prefer the backing inode number as node id (so st_ino matches the backing file).
        let candidate = st.st_ino;
        let mut inode: Option<Arc<Inode>> = None;
        if candidate > ROOT && candidate < SYNTHETIC_BASE && candidate != self.root.ino {
            let mut nshard = self.by_node[shard_of(candidate)].write().ok()?;
            if let std::collections::hash_map::Entry::Vacant(v) = nshard.entry(candidate) {
                let new: Arc<Inode> = make(candidate)?;
                v.insert(new.clone());
                inode = Some(new);
            }
        }
        let inode = match inode {
            Some(i) => i,
            None => {
                let nodeid = self.next_synthetic.fetch_add(1, Ordering::Relaxed);
                let new: Arc<Inode> = make(nodeid)?;
                self.by_node[shard_of(nodeid)]
                    .write()
                    .ok()?
                    .insert(nodeid, new.clone());
                new
            }
        };
        kshard.insert(key, inode.clone());
        if inode.dev == self.root.dev
            && let Some(h) = &inode.handle
        {
            self.index_handle(h.clone(), &inode);
        }
        Some(inode)
    }

    /// Find `inode` by its backing file handle `h` from now on (see [`InodeTable::by_handle`]).
    pub(crate) fn index_handle(&self, h: Handle, inode: &Arc<Inode>) {
        if let Ok(mut s) = self.by_handle[handle_shard(&h)].write() {
            s.insert(h, inode.clone());
        }
    }

    /// The entry whose backing file handle (on the root's file system) is `(kind, bytes)`.
    pub(crate) fn by_handle(&self, kind: i32, bytes: &[u8]) -> Option<Arc<Inode>> {
        let h: Handle = (kind, bytes.into());
        self.by_handle[handle_shard(&h)]
            .read()
            .ok()?
            .get(&h)
            .cloned()
    }

    /// The kernel dropped `n` lookups of `nodeid`; remove the entry when none remain.
    pub(crate) fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let Some(inode) = self.get(nodeid) else {
            return;
        };
        let prev = inode
            .nlookup
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(n))
            })
            .unwrap_or(0);
        if prev > n {
            return;
        }
        // Lock order: key shard, then node shard (as in `insert`).
        let Ok(mut kshard) = self.by_key[shard_of(inode.ino)].write() else {
            return;
        };
        if inode.nlookup.load(Ordering::Acquire) != 0 {
            return; // looked up again meanwhile
        }
        if let Some(cur) = kshard.get(&(inode.dev, inode.ino))
            && Arc::ptr_eq(cur, &inode)
        {
            kshard.remove(&(inode.dev, inode.ino));
        }
        if let Ok(mut nshard) = self.by_node[shard_of(nodeid)].write() {
            nshard.remove(&nodeid);
        }
        if let Some(h) = &inode.handle
            && let Ok(mut hshard) = self.by_handle[handle_shard(h)].write()
            && hshard.get(h).is_some_and(|cur| Arc::ptr_eq(cur, &inode))
        {
            hshard.remove(h);
        }
        drop(kshard);
        // On the root's file system (where `forgotten`'s handles are opened), and if it has
        // file handles.
        if inode.dev == self.root.dev
            && let Some(h) = inode.handle.clone()
            && let Ok(mut f) = self.forgotten.lock()
        {
            f.remember(nodeid, h);
        }
    }

    /// The backing file handle of node `nodeid`, which the kernel forgot (one of the last
    /// [`FORGOTTEN`]), for `open_by_handle_at` on the root's file system.
    pub(crate) fn forgotten(&self, nodeid: u64) -> Option<(i32, Box<[u8]>)> {
        let f = self.forgotten.lock().ok()?;
        let (_, kind, bytes) = f.by_node.get(&nodeid)?;
        Some((*kind, bytes.clone()))
    }

    /// Take `inode` out of the key index: the next lookup of its backing inode creates a new
    /// entry with a new node id (a new kernel inode), while the kernel keeps using the old one
    /// for what it already holds.
    pub(crate) fn detach(&self, inode: &Arc<Inode>) {
        if inode.nodeid == ROOT {
            return;
        }
        if let Ok(mut kshard) = self.by_key[shard_of(inode.ino)].write()
            && let Some(cur) = kshard.get(&(inode.dev, inode.ino))
            && Arc::ptr_eq(cur, inode)
        {
            kshard.remove(&(inode.dev, inode.ino));
        }
        inode.detached.store(true, Ordering::Release);
    }

    /// A snapshot of every entry (locks are released before returning).
    pub(crate) fn all(&self) -> Vec<Arc<Inode>> {
        let mut v = Vec::new();
        for s in self.by_node.iter() {
            if let Ok(s) = s.read() {
                v.extend(s.values().cloned());
            }
        }
        v
    }

    /// Number of entries (for tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.by_node
            .iter()
            .map(|s| s.read().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}
