//! File handles through ChaosFS (`FUSE_EXPORT_SUPPORT`, generation numbers): `name_to_handle_at`
//! works on the mount, `open_by_handle_at` opens the right file — also after the kernel evicted
//! it, and for a directory, which the kernel reconnects to the root with LOOKUPs of "." and ".."
//! —, and a handle of a deleted file gives `ESTALE` once another file got its inode number,
//! instead of opening that file. The backing directory is a loop-mounted ext4 image: ext4 reuses
//! a freed inode number at once. The calls are made by a real process (python3 ctypes). Needs
//! root, /dev/fuse, python3, mkfs.ext4 (e2fsprogs) and loop devices.

mod fs_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chaosfs::rules::RuleSet;
use chaosfs::{Config, Mounted};
use fs_support::*;

/// A loop-mounted ext4 image, unmounted on drop (the loop device is freed with it: `-o loop`
/// sets autoclear).
struct Ext4 {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ext4 {
    fn new() -> Ext4 {
        require_root_and_fuse();
        iochaos_testsupport::require_tools(&["mkfs.ext4", "mount", "umount"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image file");
        run("mkfs.ext4", &["-q".as_ref(), img.as_os_str()]);
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                img.as_os_str(),
                mnt.as_os_str(),
            ],
        );
        Ext4 { mnt, _dir: dir }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    iochaos_testsupport::expect_success(&out, cmd);
}

/// ChaosFS over the root of an ext4 image. Field order: ChaosFS goes before the ext4 mount.
struct Setup {
    chaos: Option<Mounted>,
    ext4: Ext4,
}

impl Setup {
    fn new() -> Setup {
        let ext4 = Ext4::new();
        let dev = |p: &Path| std::fs::metadata(p).expect("stat").dev();
        let ext4_dev = dev(&ext4.mnt);
        let chaos = chaosfs::mount_over(&ext4.mnt, RuleSet::empty(), Config::default())
            .expect("mount_over");
        let s = Setup {
            chaos: Some(chaos),
            ext4,
        };
        // Readiness: the path answers with the mount's own device number.
        iochaos_testsupport::wait_until("the mount", Duration::from_secs(10), || {
            dev(&s.ext4.mnt) != ext4_dev
        });
        s
    }

    fn join(&self, rel: &str) -> String {
        py_path(&self.ext4.mnt.join(rel))
    }

    /// Have the kernel drop its dentries (a rule update invalidates them all; FUSE evicts an
    /// inode with its last dentry) and wait until the server forgot every inode but the root.
    fn evict_all(&self) {
        let server = self.chaos.as_ref().expect("mounted").server();
        server.update_rules(RuleSet::empty());
        iochaos_testsupport::wait_until("the kernel to forget", Duration::from_secs(10), || {
            server.inode_count() == 1
        });
    }
}

/// ctypes wrappers, one line each (the driver runs one line at a time): `handle(path)` →
/// handle bytes, `read_h(h)` → the first bytes of the file the handle opens (through `mfd`, the
/// mount's root), `dir_h(h)` → (path, names) of the directory it opens.
const HELPERS: &[&str] = &[
    "libc = ctypes.CDLL(None, use_errno=True)",
    "def err(): e = ctypes.get_errno(); raise OSError(e, os.strerror(e))",
    "def handle(p): b = ctypes.create_string_buffer(struct.pack('Ii', 128, 0) + bytes(128)); m = ctypes.c_int(); (libc.name_to_handle_at(-100, p.encode(), b, ctypes.byref(m), 0) == 0) or err(); return b.raw",
    "def open_h(h, fl): fd = libc.open_by_handle_at(mfd, ctypes.create_string_buffer(h), fl); (fd >= 0) or err(); return fd",
    "def read_h(h): fd = open_h(h, os.O_RDONLY); d = os.read(fd, 100); os.close(fd); return d",
    "def dir_h(h): fd = open_h(h, os.O_RDONLY | os.O_DIRECTORY); r = (os.readlink('/proc/self/fd/%d' % fd), sorted(os.listdir(fd))); os.close(fd); return r",
];

fn python(s: &Setup) -> Py {
    let mut py = Py::start();
    for h in HELPERS {
        py.ok(h);
    }
    py.ok(&format!(
        "mfd = os.open({}, os.O_RDONLY | os.O_DIRECTORY)",
        s.join("")
    ));
    py
}

/// Run `expr` in `py` and return what it prints.
fn eval(py: &mut Py, expr: &str) -> String {
    py.send(&format!("print(repr({expr}))"));
    let v = py.answer();
    assert!(!v.contains("Error("), "{expr}: {v}");
    assert_eq!(py.answer(), "ok", "{expr}");
    v
}

#[test]
fn a_handle_of_a_deleted_file_is_stale_once_its_inode_number_is_reused() {
    let s = Setup::new();
    let mut py = python(&s);
    py.ok(&format!(
        "p = {}; open(p, 'w').write('old'); ino = os.stat(p).st_ino; h = handle(p)",
        s.join("victim")
    ));
    assert_eq!(eval(&mut py, "read_h(h)"), "b'old'");
    // Delete it; create files until one gets its inode number (as soon as the server, told by
    // the kernel's FORGET, closed its last fd of the old inode).
    py.ok("os.unlink(p)");
    py.ok(&format!(
        "q = next((q for q in ({} + str(n) for n in range(1000)) if open(q, 'w').write('new') and os.stat(q).st_ino == ino), None)",
        s.join("f")
    ));
    let reused = eval(&mut py, "q");
    assert_ne!(
        reused, "None",
        "no new file got the deleted file's inode number"
    );
    // The old handle names the same node id as the new file; the generation tells them apart.
    py.send("print(repr(read_h(h)))");
    let old = py.answer();
    assert!(
        old.contains("116"),
        "the handle of the deleted file opened {old} (expected ESTALE, errno 116)"
    );
    // The new file's own handle opens it.
    assert_eq!(eval(&mut py, "read_h(handle(q))"), "b'new'");
}

#[test]
fn handles_of_live_files_and_directories_open_them_after_the_kernel_evicted_them() {
    let s = Setup::new();
    let mut py = python(&s);
    py.ok(&format!(
        "os.makedirs({0}); open({1}, 'w').write('kept'); open({2}, 'w').write('x')",
        s.join("a/b"),
        s.join("a/kept"),
        s.join("a/b/x")
    ));
    py.ok(&format!(
        "f = handle({}); d = handle({})",
        s.join("a/kept"),
        s.join("a/b")
    ));
    // Renamed meanwhile: a handle names the file, not the path.
    py.ok(&format!(
        "os.rename({}, {})",
        s.join("a/kept"),
        s.join("a/moved")
    ));
    s.evict_all();
    assert_eq!(eval(&mut py, "read_h(f)"), "b'kept'");
    s.evict_all();
    // The kernel reconnects the directory to the root through ".." lookups: its path is known.
    let want = format!("({}, ['x'])", s.join("a/b").replace('"', "'"));
    assert_eq!(eval(&mut py, "dir_h(d)"), want);
}
