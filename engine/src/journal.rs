//! The journal: one JSON file per injection, `/run/iochaos/<id>.json`, holding everything needed
//! to undo it even when its server is gone. Entries are written atomically (temporary file,
//! fsync, rename, mode 0600) in a root-only directory (0700); while an injection is being set up
//! its entry is written without the fsyncs, and made durable once it is complete.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::target::ContainerRef;

/// Where injections are journaled and served by default.
pub const DEFAULT_DIR: &str = "/run/iochaos";

/// The journal format written by this version.
pub const VERSION: u32 = 1;

/// An injection id: 12 characters, lower-case Crockford base32, sortable by creation time
/// (9 characters of milliseconds since the epoch, then 3 random ones), e.g. `01jq8m2xk7c4`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct InjectionId(String);

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const TIME_CHARS: usize = 9;
const RANDOM_CHARS: usize = 3;

impl InjectionId {
    /// A new id for now.
    pub fn generate() -> InjectionId {
        InjectionId::from_parts(unix_ms_now(), random_bits())
    }

    fn from_parts(ms: u64, random: u64) -> InjectionId {
        let mut s = String::with_capacity(TIME_CHARS + RANDOM_CHARS);
        for i in (0..TIME_CHARS).rev() {
            s.push(base32_digit(ms, i));
        }
        for i in (0..RANDOM_CHARS).rev() {
            s.push(base32_digit(random, i));
        }
        InjectionId(s)
    }

    /// Parse an id given by a user or found in the journal directory.
    pub fn parse(s: &str) -> Result<InjectionId> {
        if s.len() == TIME_CHARS + RANDOM_CHARS && s.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(InjectionId(s.to_owned()))
        } else {
            Err(Error::InvalidId { id: s.to_owned() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InjectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for InjectionId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        InjectionId::parse(&s)
    }
}

impl From<InjectionId> for String {
    fn from(id: InjectionId) -> String {
        id.0
    }
}

fn random_bits() -> u64 {
    let mut b = [0u8; 8];
    // The kernel's CSPRNG; a failure only costs uniqueness within one millisecond, so fall back
    // to the pid and the clock's nanoseconds.
    match fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => {
            let n = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            u64::from(std::process::id()) ^ u64::from(n)
        }
    }
}

/// What an injection was aimed at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetRecord {
    /// The process the target was named by (container init for containers).
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22): tells it from a process reusing the pid.
    pub start_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// Inode of the mount namespace (`/proc/PID/ns/mnt`).
    pub mnt_ns: u64,
    /// Inode of the user namespace.
    pub user_ns: u64,
}

/// A process that was in the target's mount namespace at injection time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
}

/// The ChaosFS mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// Mount id of the ChaosFS mount (mountinfo, fdinfo `mnt_id`).
    pub mnt_id: u64,
    /// Mount id of the mount it covers (where original fds point).
    pub under_mnt_id: u64,
    /// FUSE connection: `/sys/fs/fuse/connections/<fuse_connection>/abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_connection: Option<u32>,
}

/// What a swapped fd was before the swap, so it can be swapped back without the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwappedFd {
    pub pid: u32,
    /// fd number; -1 for the cwd. Mappings are recorded with their address in `addr`.
    pub fd: i32,
    /// The path as the target sees it.
    pub path: String,
    /// `open(2)` flags (fdinfo `flags`).
    pub flags: u32,
    /// File offset at swap time (fdinfo `pos`).
    pub offset: u64,
    /// `mnt_id` before the swap (fdinfo), i.e. the original mount.
    pub orig_mnt_id: u64,
    /// Start address of a shared mapping, when the entry is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
}

/// How a process's new files were opened at inject (`fdswap::OpenMode`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessOpenMode {
    pub pid: u32,
    /// `handoff` or `in-stub open`.
    pub mode: String,
}

/// One injection.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub version: u32,
    pub id: InjectionId,
    /// Milliseconds since the epoch.
    pub created_unix_ms: u64,
    pub target: TargetRecord,
    /// Canonical in-target path of the injection.
    pub path: String,
    /// Processes of the target's mount namespace at injection time.
    #[serde(default)]
    pub pids: Vec<ProcessRecord>,
    /// The source the ChaosFS mount carries (`iochaos:<id>`, mountinfo's source field),
    /// journaled before mounting: the intent to mount. Recovery finds the mount by it when the
    /// server died before `mount` was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_source: Option<String>,
    /// Set once the mount exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<MountRecord>,
    /// The injection server's pid, once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    /// The JSON spec (design.md), as given.
    pub spec: serde_json::Value,
    #[serde(default)]
    pub swapped: Vec<SwappedFd>,
    /// Per process that had files to move: how they were opened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_modes: Vec<ProcessOpenMode>,
}

impl Entry {
    /// A fresh entry: nothing mounted or swapped yet.
    pub fn new(
        id: InjectionId,
        target: TargetRecord,
        path: String,
        spec: serde_json::Value,
    ) -> Entry {
        Entry {
            version: VERSION,
            id,
            created_unix_ms: unix_ms_now(),
            target,
            path,
            pids: Vec::new(),
            mount_source: None,
            mount: None,
            server_pid: None,
            spec,
            swapped: Vec::new(),
            open_modes: Vec::new(),
        }
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in [`DEFAULT_DIR`], created (mode 0700) if missing.
    pub fn open_default() -> Result<Journal> {
        Journal::open(DEFAULT_DIR)
    }

    /// The journal in `dir`, created (mode 0700) if missing. Refused
    /// ([`Error::UntrustedRunDir`]) when anyone but us (root) could change what is in it: the
    /// directory owned by another user, or a parent owned by another user or writable by others
    /// without the sticky bit. Whoever could would plant entries a root `recover` acts on, or
    /// replace an injection's socket.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Journal> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        check_trusted(&dir)?;
        // An existing directory of ours keeps the mode it was made with: tighten it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&dir, e))?;
        Ok(Journal { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<id>.json`.
    pub fn entry_path(&self, id: &InjectionId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// `<dir>/<id>.sock`: the injection server's Chaos API socket.
    pub fn socket_path(&self, id: &InjectionId) -> PathBuf {
        self.dir.join(format!("{id}.sock"))
    }

    /// Take the journal's lock (`flock` exclusive on the directory, so no lock file is left
    /// behind), waiting for it: held from checking that a path is free until its entry is
    /// written, so that two injections started at once cannot both find the path free.
    /// Released when the guard is dropped (or the process dies).
    pub fn lock(&self) -> Result<JournalLock> {
        let d = fs::File::open(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        rustix::fs::flock(&d, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&self.dir, e.into()))?;
        Ok(JournalLock(d))
    }

    /// Write a new entry; fails with [`Error::InjectionExists`] if its id is taken.
    pub fn create(&self, e: &Entry) -> Result<()> {
        self.write_atomically(e, true, true)
    }

    /// Replace an entry (or create it) atomically.
    pub fn update(&self, e: &Entry) -> Result<()> {
        self.write_atomically(e, false, true)
    }

    /// [`Journal::create`] without waiting for the disk: readers and a restarted `iochaos` see
    /// the entry at once and it survives the death of this process (it is in the page cache);
    /// only a power loss before the next durable write could lose it, and a power loss ends the
    /// mounts and processes the entry is about anyway. Each durable write costs two fsyncs
    /// (file and directory, milliseconds where the journal is not on a tmpfs): an injection
    /// writes its entry three times this way, then makes it durable in the background
    /// ([`Journal::sync_in_background`]).
    pub fn create_pending(&self, e: &Entry) -> Result<()> {
        self.write_atomically(e, true, false)
    }

    /// [`Journal::update`] without waiting for the disk (see [`Journal::create_pending`]).
    pub fn update_pending(&self, e: &Entry) -> Result<()> {
        self.write_atomically(e, false, false)
    }

    /// Make entry `id` durable (fsync it and the directory) on a thread of its own, for a
    /// write whose durability nobody needs to wait for: the entry is complete for every reader
    /// already, and only a power loss in the next milliseconds could tear it. An entry removed
    /// meanwhile is fine.
    pub fn sync_in_background(&self, id: &InjectionId) {
        let (path, dir) = (self.entry_path(id), self.dir.clone());
        let spawned = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn({
                let (path, dir) = (path.clone(), dir.clone());
                move || sync_entry(&path, &dir)
            });
        if spawned.is_err() {
            sync_entry(&path, &dir);
        }
    }

    fn write_atomically(&self, e: &Entry, exclusive: bool, durable: bool) -> Result<()> {
        let path = self.entry_path(&e.id);
        let tmp = self
            .dir
            .join(format!(".{}.json.{}.tmp", e.id, std::process::id()));
        let json = serde_json::to_vec_pretty(e).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            if durable { f.sync_all() } else { Ok(()) }
        };
        if let Err(err) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, err));
        }
        let flags = if exclusive {
            rustix::fs::RenameFlags::NOREPLACE
        } else {
            rustix::fs::RenameFlags::empty()
        };
        let (cwd, cwd2) = (rustix::fs::CWD, rustix::fs::CWD);
        if let Err(err) = rustix::fs::renameat_with(cwd, &tmp, cwd2, &path, flags) {
            let _ = fs::remove_file(&tmp);
            if err == rustix::io::Errno::EXIST {
                return Err(Error::InjectionExists {
                    id: e.id.to_string(),
                });
            }
            return Err(Error::io(&path, err.into()));
        }
        if !durable {
            return Ok(());
        }
        // The rename is durable once the directory is synced.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| Error::io(&self.dir, err))
    }

    /// Read one entry.
    pub fn read(&self, id: &InjectionId) -> Result<Entry> {
        let path = self.entry_path(id);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NoSuchInjection { id: id.to_string() }
            } else {
                Error::io(&path, e)
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })
    }

    /// The ids of every entry, oldest first.
    pub fn ids(&self) -> Result<Vec<InjectionId>> {
        let mut ids = Vec::new();
        for d in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let d = d.map_err(|e| Error::io(&self.dir, e))?;
            let name = d.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(id) = InjectionId::parse(stem) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>> {
        self.ids()?.iter().map(|id| self.read(id)).collect()
    }

    /// Remove an entry and its stale socket, if any. Removing a missing entry is
    /// [`Error::NoSuchInjection`].
    pub fn remove(&self, id: &InjectionId) -> Result<()> {
        let path = self.entry_path(id);
        fs::remove_file(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NoSuchInjection { id: id.to_string() }
            } else {
                Error::io(&path, e)
            }
        })?;
        let sock = self.socket_path(id);
        match fs::remove_file(&sock) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(sock, e)),
            _ => Ok(()),
        }
    }
}

/// The journal's lock, held until dropped ([`Journal::lock`]): the directory open with an
/// exclusive `flock`, released when the descriptor closes.
#[derive(Debug)]
pub struct JournalLock(#[allow(dead_code)] fs::File);

/// Milliseconds since the epoch (0 before it; a u64 of milliseconds lasts 584 million years).
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Base-32 digit `i` (counting from the right) of `v`, in [`ALPHABET`].
fn base32_digit(v: u64, i: usize) -> char {
    // Five bits: always an index of the 32-letter alphabet.
    let five_bits = (v >> (5 * i)) & 31;
    char::from(ALPHABET[usize::try_from(five_bits).unwrap_or(0)])
}

/// fsync an entry and its directory (see [`Journal::sync_in_background`]).
/// See [`Journal::open`]: `dir` (which exists) must be ours, and each parent owned by us or
/// root and not writable by others unless sticky (like `/tmp`: others cannot rename or remove
/// what they do not own there).
fn check_trusted(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let canonical = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let me = rustix::process::geteuid().as_raw();
    let untrusted = |path: &Path, reason: String| Error::UntrustedRunDir {
        path: path.to_owned(),
        reason,
    };
    let md = fs::symlink_metadata(&canonical).map_err(|e| Error::io(&canonical, e))?;
    if md.uid() != me {
        return Err(untrusted(
            &canonical,
            format!("owned by uid {}, not by uid {me} (us)", md.uid()),
        ));
    }
    for parent in canonical.ancestors().skip(1) {
        let md = fs::symlink_metadata(parent).map_err(|e| Error::io(parent, e))?;
        if md.uid() != 0 && md.uid() != me {
            return Err(untrusted(
                &canonical,
                format!(
                    "its parent {} is owned by uid {}",
                    parent.display(),
                    md.uid()
                ),
            ));
        }
        let mode = md.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(untrusted(
                &canonical,
                format!(
                    "its parent {} is writable by {} (mode {:04o}, not sticky)",
                    parent.display(),
                    if mode & 0o002 != 0 {
                        "anyone"
                    } else {
                        "its group"
                    },
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

fn sync_entry(path: &Path, dir: &Path) {
    let r = fs::File::open(path)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::File::open(dir)?.sync_all());
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "journal entry not synced");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entry(id: InjectionId) -> Entry {
        let mut e = Entry::new(
            id,
            TargetRecord {
                pid: 42,
                start_time: 7,
                container: Some(ContainerRef {
                    id: "web".into(),
                    namespace: "default".into(),
                }),
                mnt_ns: 4026531841,
                user_ns: 4026531837,
            },
            "/data".into(),
            serde_json::json!({"rules": [{"ops": ["write"], "errno": "EIO"}]}),
        );
        e.pids = vec![ProcessRecord {
            pid: 42,
            start_time: 7,
        }];
        e.mount = Some(MountRecord {
            mnt_id: 900,
            under_mnt_id: 40,
            fuse_connection: Some(77),
        });
        e.server_pid = Some(1234);
        e.swapped = vec![SwappedFd {
            pid: 42,
            fd: 3,
            path: "/data/db".into(),
            flags: 0o2,
            offset: 4096,
            orig_mnt_id: 40,
            addr: None,
        }];
        e
    }

    /// Changes ownership: needs root (the tests run as root; fails loudly otherwise).
    #[test]
    fn a_run_dir_others_can_change_is_refused_and_left_alone() {
        let base = tempfile::tempdir().expect("tempdir");
        let chown = |p: &Path, uid: u32| {
            std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown (run as root)")
        };
        let mode = |p: &Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
        };
        // Owned by another user: refused, its mode and content untouched.
        let theirs = base.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        mode(&theirs, 0o755);
        chown(&theirs, 1000);
        let e = Journal::open(&theirs).expect_err("another user's directory");
        assert!(matches!(e, Error::UntrustedRunDir { .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 1000"), "{e}");
        let md = fs::metadata(&theirs).expect("stat");
        assert_eq!(
            md.mode() & 0o7777,
            0o755,
            "a refused directory is not chmod-ed"
        );
        assert_eq!(fs::read_dir(&theirs).expect("ls").count(), 0);
        // A parent writable by anyone (not sticky): refused, even for a directory of ours.
        let open = base.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        mode(&open, 0o777);
        let e = Journal::open(open.join("run")).expect_err("world-writable parent");
        assert!(e.to_string().contains("writable by anyone"), "{e}");
        // A parent owned by another user: refused.
        let foreign = base.path().join("foreign");
        fs::create_dir(&foreign).expect("mkdir");
        mode(&foreign, 0o755);
        fs::create_dir(foreign.join("run")).expect("mkdir");
        chown(&foreign, 1000);
        let e = Journal::open(foreign.join("run")).expect_err("foreign parent");
        assert!(e.to_string().contains("is owned by uid 1000"), "{e}");
        // Ours, under a sticky world-writable parent (/tmp): accepted, tightened to 0700.
        let ours = base.path().join("ours");
        fs::create_dir(&ours).expect("mkdir");
        mode(&ours, 0o755);
        Journal::open(&ours).expect("our directory");
        assert_eq!(fs::metadata(&ours).expect("stat").mode() & 0o7777, 0o700);
    }

    #[test]
    fn pending_writes_are_whole_entries_and_a_background_sync_tolerates_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let e = entry(InjectionId::generate());
        j.create_pending(&e).expect("create");
        assert!(matches!(
            j.create_pending(&e),
            Err(Error::InjectionExists { .. })
        ));
        let mut e2 = e.clone();
        e2.swapped.clear();
        j.update_pending(&e2).expect("update");
        assert_eq!(j.read(&e.id).expect("read"), e2);
        j.sync_in_background(&e.id);
        j.remove(&e.id).expect("remove");
        j.sync_in_background(&e.id);
        assert!(j.list().expect("list").is_empty());
    }

    #[test]
    fn ids_are_short_unique_and_sortable() {
        let a = InjectionId::from_parts(1_700_000_000_000, 0);
        let b = InjectionId::from_parts(1_700_000_000_001, 0);
        assert_eq!(a.as_str().len(), 12);
        assert!(a < b);
        let ids: std::collections::HashSet<_> = (0..200).map(|_| InjectionId::generate()).collect();
        assert!(ids.len() > 190, "random part collides too often");
        let g = InjectionId::generate();
        assert_eq!(InjectionId::parse(g.as_str()).expect("parses"), g);
        for bad in [
            "",
            "../etc/passw",
            "01JQ8M2XK7C4",
            "01jq8m2xk7c",
            "01jq8m2xk7ci",
        ] {
            assert!(InjectionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_read_list_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path().join("run/iochaos")).expect("open");
        assert_eq!(fs::metadata(j.dir()).expect("dir").mode() & 0o777, 0o700);
        let e1 = entry(InjectionId::from_parts(1000, 1));
        let e2 = entry(InjectionId::from_parts(2000, 1));
        j.create(&e2).expect("create e2");
        j.create(&e1).expect("create e1");
        assert!(matches!(j.create(&e1), Err(Error::InjectionExists { .. })));
        let md = fs::metadata(j.entry_path(&e1.id)).expect("stat");
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(j.read(&e1.id).expect("read"), e1);
        assert_eq!(j.list().expect("list"), vec![e1.clone(), e2.clone()]);

        let mut e1b = e1.clone();
        e1b.swapped.clear();
        j.update(&e1b).expect("update");
        assert_eq!(j.read(&e1.id).expect("read"), e1b);

        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(j.dir())
            .expect("readdir")
            .map(|d| d.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        fs::write(j.socket_path(&e1.id), b"").expect("fake stale socket");
        j.remove(&e1.id).expect("remove");
        assert!(!j.socket_path(&e1.id).exists());
        assert!(matches!(j.read(&e1.id), Err(Error::NoSuchInjection { .. })));
        assert!(matches!(
            j.remove(&e1.id),
            Err(Error::NoSuchInjection { .. })
        ));
        assert_eq!(j.ids().expect("ids"), vec![e2.id.clone()]);
    }

    #[test]
    fn entry_json_has_the_recovery_fields() {
        let e = entry(InjectionId::from_parts(1000, 1));
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["target"]["mnt_ns"], 4026531841u64);
        assert_eq!(v["mount"]["fuse_connection"], 77);
        assert_eq!(v["swapped"][0]["orig_mnt_id"], 40);
        assert_eq!(v["server_pid"], 1234);
        assert_eq!(v["id"], e.id.as_str());
        // A corrupt entry is an error naming its file.
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        fs::write(j.entry_path(&e.id), b"{").expect("write");
        let err = j.read(&e.id).expect_err("corrupt");
        assert!(err.to_string().contains(&format!("{}.json", e.id)), "{err}");
    }
}
