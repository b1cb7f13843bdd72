//! FUSE over io_uring (`Config::uring`): requests travel through the per-CPU queues, file
//! operations behave as over `/dev/fuse`, interrupts still end a parked request, a kernel that
//! refuses falls back to `/dev/fuse`, and unmounting leaves neither a mount nor a queue thread.
//! Needs root, /dev/fuse and a kernel with `CONFIG_FUSE_IO_URING` (fails without them). The
//! tests turn the module parameter `fuse.enable_uring` on (one refuses with it off) and leave
//! it as they found it; they run one at a time (the parameter is global).

mod fs_support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use chaosfs::rules::RuleSet;
use chaosfs::{Config, Transport};
use fs_support::*;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The parameter is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Sets `fuse.enable_uring` for the test's duration and restores it.
struct Param(String);

impl Param {
    fn set(on: bool) -> Param {
        let old = fs::read_to_string(PARAM)
            .expect("this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)");
        fs::write(PARAM, if on { "1" } else { "0" }).expect("set fuse.enable_uring");
        Param(old.trim().to_owned())
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        let v = if self.0 == "Y" { "1" } else { "0" };
        let _ = fs::write(PARAM, v);
    }
}

fn uring() -> Config {
    Config {
        uring: true,
        ..Config::default()
    }
}

fn possible_cpus() -> u16 {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible cpus");
    s.trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<u16>().ok())
        .max()
        .expect("a cpu")
        + 1
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

#[test]
fn requests_travel_through_the_per_cpu_queues() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_fuse();
    let _p = Param::set(true);
    let m = mount_with(RuleSet::empty(), uring(), |d| {
        fs::write(d.join("old"), b"native bytes").expect("prepare");
    });
    assert_eq!(
        m.server().transport(),
        &Transport::Uring {
            queues: possible_cpus(),
            entries: 32
        }
    );
    let before = m.server().ring_requests();
    // The usual operations, each checked on the backing directory too.
    fs::create_dir(m.join("d")).expect("mkdir");
    let mut f = fs::File::create(m.join("d/f")).expect("create");
    f.write_all(&[7u8; 300_000]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(
        fs::read(m.backing("d/f")).expect("backing"),
        vec![7u8; 300_000]
    );
    assert_eq!(fs::read(m.join("old")).expect("read"), b"native bytes");
    fs::set_permissions(m.join("d/f"), fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        fs::metadata(m.backing("d/f"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    fs::rename(m.join("d/f"), m.join("d/g")).expect("rename");
    let names: Vec<_> = fs::read_dir(m.join("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["g"]);
    fs::remove_file(m.join("d/g")).expect("unlink");
    fs::remove_dir(m.join("d")).expect("rmdir");
    assert!(!m.backing("d").exists());
    let served = m.server().ring_requests() - before;
    assert!(
        served >= 10,
        "only {served} requests came through the rings"
    );
    m.unmount();
    assert_eq!(
        threads_named("chaosfs-uring"),
        0,
        "a queue thread outlived the mount"
    );
}

#[test]
fn a_kernel_that_refuses_leaves_the_dev_fuse_threads_serving() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_fuse();
    let _p = Param::set(false);
    let m = mount_with(RuleSet::empty(), uring(), |d| {
        fs::write(d.join("f"), b"bytes").expect("prepare");
    });
    let Transport::DevFuse { why: Some(why) } = m.server().transport() else {
        panic!("{:?}", m.server().transport());
    };
    assert!(why.contains("enable_uring"), "{why}");
    assert_eq!(fs::read(m.join("f")).expect("read"), b"bytes");
    assert_eq!(m.server().ring_requests(), 0);
    m.unmount();
}

/// Kills the child on drop (a failed assertion must not leave it sleeping on the mount).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.try_wait();
    }
}

const HOUR_ON_SLOW: &str = r#"{"rules":[{"ops":["read"],"glob":"slow","latency":"1h"}]}"#;

fn slow_and_fast(d: &std::path::Path) {
    fs::write(d.join("slow"), b"slow").expect("prepare");
    fs::write(d.join("fast"), b"fast").expect("prepare");
}

#[test]
fn sigkill_ends_a_request_parked_in_a_ring_entry() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_fuse();
    let _p = Param::set(true);
    let m = mount_with(rules(HOUR_ON_SLOW), uring(), slow_and_fast);
    assert!(matches!(m.server().transport(), Transport::Uring { .. }));
    let mut child = Child(
        Command::new("cat")
            .arg(m.join("slow"))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cat"),
    );
    iochaos_testsupport::wait_until("cat's read to be parked", Duration::from_secs(10), || {
        m.server().pending_delays() == 1
    });
    child.0.kill().expect("SIGKILL cat");
    let status = iochaos_testsupport::poll("cat to be reaped", Duration::from_secs(30), || {
        child.0.try_wait().expect("waitpid")
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(m.server().pending_delays(), 0, "the parked read is gone");
    assert_eq!(m.server().interrupt_stats().answered, 1);
    // The entry came back: the mount still serves, the fault still applies.
    assert_eq!(fs::read(m.join("fast")).expect("fast read"), b"fast");
    let mut buf = Vec::new();
    fs::File::open(m.join("fast"))
        .expect("open")
        .read_to_end(&mut buf)
        .expect("read");
    assert_eq!(buf, b"fast");
    m.unmount();
    assert_eq!(threads_named("chaosfs-uring"), 0);
}

#[test]
fn unmounting_with_a_request_parked_leaves_nothing() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root_and_fuse();
    let _p = Param::set(true);
    let m = mount_with(rules(HOUR_ON_SLOW), uring(), slow_and_fast);
    assert!(matches!(m.server().transport(), Transport::Uring { .. }));
    let path = m.join("slow");
    let mount_point = m.path().to_owned();
    let reader = std::thread::spawn(move || fs::read(path));
    iochaos_testsupport::wait_until("the read to be parked", Duration::from_secs(10), || {
        m.server().pending_delays() == 1
    });
    m.unmount();
    // The parked read was answered (served at stop), the reader is not stuck.
    let r = reader.join().expect("reader");
    assert!(r.is_ok() || r.is_err(), "the reader returned");
    assert_eq!(
        threads_named("chaosfs-uring"),
        0,
        "a queue thread outlived the mount"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*mount_point.to_string_lossy()),
        "the mount is still there"
    );
}
