//! Crash mode (docs/crash.md) end to end: a real writer process in its own mount namespace,
//! `iochaos inject --crash-mode` into it, then `iochaos crash` (or a plain `recover`), and the
//! bytes left on disk compared with what the writer saw acknowledged (privileged: root, FUSE,
//! ptrace; fails without them).

mod inject_common;

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inject_common::{Env, poll, test_exe};
use serde_json::Value;

/// Names the writer's directory; the writer runs only when it is set.
const WRITER_ENV: &str = "IOCHAOS_TEST_CRASH_WRITER";
/// The writer's mode: `fsync10`, `nofsync`, `dsync`, `torn` or `reorder`.
const MODE_ENV: &str = "IOCHAOS_TEST_CRASH_MODE";
/// Records each writer writes.
const RECORDS: u64 = 25;
/// The content of the file the `nofsync` writer starts from (made durable before the injection).
const BASE_LEN: usize = 4096;

/// Bytes the `torn` writer writes and fsyncs before its 64 KiB write.
const SYNCED: usize = 4096;
/// Where the `reorder` writer's writes go, in its order (in 4 KiB blocks of the base).
const REORDER_SLOTS: [u64; 8] = [5, 2, 7, 0, 3, 6, 1, 4];

/// The `torn` writer's unsynced 64 KiB write: no two 512 B sectors alike.
fn torn_write() -> Vec<u8> {
    (0..65536u32).map(|i| (i % 251) as u8).collect()
}

/// The `reorder` writer's write `i`: 4 KiB of one letter.
fn reorder_write(i: usize) -> Vec<u8> {
    vec![b'A' + u8::try_from(i).expect("small"); 4096]
}

fn record(i: u64) -> String {
    format!("rec {i:05}\n")
}

fn records(n: u64) -> String {
    (1..=n).map(record).collect()
}

fn base() -> Vec<u8> {
    b"abcdefghijklmnopqrstuvwxyz"
        .iter()
        .copied()
        .cycle()
        .take(BASE_LEN)
        .collect()
}

/// Not a test: the writer's entry point (run by [`Writer::start`] with [`WRITER_ENV`] set).
/// Opens DIR/vol/data, says `ready`, waits for DIR/go, writes, logs each acknowledged fsync to
/// DIR/acks, says `done`, then sleeps until killed.
#[test]
#[ignore = "helper process of the crash tests"]
fn crash_writer() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mode = std::env::var(MODE_ENV).expect("mode");
    let data = dir.join("vol/data");
    let mut opts = std::fs::OpenOptions::new();
    match mode.as_str() {
        "fsync10" => opts.append(true).create(true),
        "dsync" => opts.append(true).create(true).custom_flags(libc::O_DSYNC),
        "nofsync" | "torn" | "reorder" => opts.read(true).write(true),
        other => panic!("unknown writer mode {other}"),
    };
    let mut f = opts.open(&data).expect("open data");
    let mut acks = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("acks"))
        .expect("open acks");
    std::fs::write(dir.join("ready"), "").expect("ready");
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    if mode == "torn" {
        // Synced bytes, then one big write never synced.
        f.write_all_at(&[b'S'; SYNCED], 0).expect("write synced");
        f.sync_all().expect("fsync");
        f.write_all_at(&torn_write(), SYNCED as u64)
            .expect("64 KiB write");
    } else if mode == "reorder" {
        // 8 writes of 4 KiB to distinct offsets of the base, out of order, never synced.
        for (i, slot) in REORDER_SLOTS.iter().enumerate() {
            f.write_all_at(&reorder_write(i), slot * 4096)
                .expect("4 KiB write");
        }
    } else if mode == "nofsync" {
        // Overwrite, append, truncate, punch a hole, extend again: never synced.
        f.write_all_at(&[b'X'; 100], 1000).expect("overwrite");
        for i in 1..=RECORDS {
            f.write_all_at(record(i).as_bytes(), BASE_LEN as u64 + 10 * (i - 1))
                .expect("append");
        }
        f.set_len(2048).expect("ftruncate");
        nix::fcntl::fallocate(
            &f,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            512,
        )
        .expect("punch hole");
        f.write_all_at(&[b'Y'; 50], 3000).expect("extend");
    } else {
        for i in 1..=RECORDS {
            f.write_all(record(i).as_bytes()).expect("write record");
            if mode == "fsync10" && i % 10 == 0 {
                f.sync_all().expect("fsync");
                writeln!(acks, "fsync {i}").expect("ack");
            } else if mode == "dsync" {
                writeln!(acks, "write {i}").expect("ack");
            }
        }
    }
    std::fs::write(dir.join("done"), "").expect("done");
    loop {
        std::thread::sleep(Duration::from_secs(1000));
    }
}

/// The writer in a private mount namespace (its own process group, killed on drop).
struct Writer {
    child: Child,
    dir: PathBuf,
}

impl Writer {
    /// Start a writer of `mode` on ENV/name/vol/data (`initial`: the data file's content,
    /// written and fsynced natively first) and wait until it has the file open.
    fn start(env: &Env, name: &str, mode: &str, initial: &[u8]) -> Writer {
        let dir = env.path().join(name);
        std::fs::create_dir_all(dir.join("vol")).expect("mkdir vol");
        let f = std::fs::File::create(dir.join("vol/data")).expect("create data");
        f.write_all_at(initial, 0).expect("initial data");
        f.sync_all().expect("fsync initial data");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(test_exe())
            .args([
                "--exact",
                "crash_writer",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(WRITER_ENV, &dir)
            .env(MODE_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("unshare");
        poll("the writer to be ready", 20, || {
            dir.join("ready").exists().then_some(())
        });
        Writer { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn vol(&self) -> String {
        self.dir.join("vol").display().to_string()
    }

    /// `iochaos inject --pid PID --path VOL --crash-mode`; the injection id.
    fn inject(&self, env: &Env) -> String {
        env.inject(
            &["--pid", &self.pid().to_string()],
            &self.vol(),
            &["--crash-mode"],
        )
    }

    /// Let it write, and wait until it is done.
    fn go(&self) {
        std::fs::write(self.dir.join("go"), "").expect("go");
        poll("the writer to finish writing", 20, || {
            self.dir.join("done").exists().then_some(())
        });
    }

    fn data(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("vol/data")).expect("read data")
    }

    fn acks(&self) -> String {
        std::fs::read_to_string(self.dir.join("acks")).unwrap_or_default()
    }

    /// Wait for the writer to die; it must have been killed by SIGKILL.
    fn assert_killed(&mut self) {
        let st = self.child.wait().expect("wait writer");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "writer status {st}");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = iochaos_testsupport::kill_group(self.child.id(), iochaos_testsupport::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// `iochaos crash ID --json`, checked: the writer killed, one file reported; the report.
fn crash(env: &Env, id: &str, w: &mut Writer) -> Value {
    crash_with(env, id, w, &["--seed", "7"])
}

/// [`crash`] with `flags` (which must hold `--seed 7`).
fn crash_with(env: &Env, id: &str, w: &mut Writer, flags: &[&str]) -> Value {
    let mut args = vec!["crash", id, "--json"];
    args.extend_from_slice(flags);
    let out = env.ok(&args);
    let report: Value = serde_json::from_str(&out).expect("crash --json is JSON");
    assert_eq!(report["id"], id, "{report}");
    assert_eq!(report["seed"], 7, "{report}");
    let killed: Vec<u64> = report["killed"]
        .as_array()
        .expect("killed")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(killed.contains(&u64::from(w.pid())), "{report}");
    w.assert_killed();
    env.assert_clean(&[], None);
    report
}

/// The report's entry for the data file: (dropped, size at crash, durable size).
fn data_entry(report: &Value, w: &Writer) -> (u64, u64, u64) {
    let path = format!("{}/data", w.vol());
    let files = report["files"].as_array().expect("files");
    let f = files
        .iter()
        .find(|f| f["path"] == path.as_str())
        .unwrap_or_else(|| panic!("no entry for {path}: {report}"));
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k}: {report}"));
    (n("dropped_bytes"), n("size_at_crash"), n("durable_size"))
}

/// Appending records with an fsync after every 10th: after the crash exactly the records up
/// to the last acknowledged fsync are on disk.
#[test]
fn crash_keeps_exactly_what_fsync_acknowledged() {
    let env = Env::new();
    let mut w = Writer::start(&env, "w", "fsync10", b"");
    let id = w.inject(&env);
    w.go();
    assert_eq!(w.acks(), "fsync 10\nfsync 20\n");
    assert_eq!(w.data(), records(RECORDS).into_bytes(), "before the crash");
    let report = crash(&env, &id, &mut w);
    assert_eq!(
        String::from_utf8_lossy(&w.data()),
        records(20),
        "after the crash"
    );
    assert_eq!(data_entry(&report, &w), (50, 250, 200));
}

/// A writer that never syncs (overwrite, append, ftruncate, punched hole, extension) loses
/// everything since the injection: the file is byte for byte what it was.
#[test]
fn crash_without_fsync_loses_every_change() {
    let env = Env::new();
    let mut w = Writer::start(&env, "w", "nofsync", &base());
    let id = w.inject(&env);
    w.go();
    let before = w.data();
    assert_eq!(before.len(), 3050, "truncated to 2048, extended to 3050");
    assert_ne!(before[..2048], base()[..2048]);
    let report = crash(&env, &id, &mut w);
    assert!(
        w.data() == base(),
        "after the crash the file is not the base"
    );
    let (dropped, at_crash, durable) = data_entry(&report, &w);
    assert_eq!((at_crash, durable), (3050, BASE_LEN as u64));
    // Restored: [0, 512) punched, [1000, 1100) overwritten, [2048, 4096) truncated.
    assert_eq!(dropped, 512 + 100 + 2048);
}

/// Every write through an O_DSYNC fd is durable when it returns: nothing is lost.
#[test]
fn crash_keeps_every_o_dsync_write() {
    let env = Env::new();
    let mut w = Writer::start(&env, "w", "dsync", b"");
    let id = w.inject(&env);
    w.go();
    assert_eq!(w.acks().lines().count() as u64, RECORDS);
    let report = crash(&env, &id, &mut w);
    assert_eq!(String::from_utf8_lossy(&w.data()), records(RECORDS));
    assert_eq!(data_entry(&report, &w), (0, 250, 250));
}

/// A plain recover of a crash-mode injection keeps everything, and the writer lives on.
#[test]
fn recover_of_a_crash_mode_injection_keeps_everything() {
    let env = Env::new();
    let w = Writer::start(&env, "w", "fsync10", b"");
    let id = w.inject(&env);
    w.go();
    assert_eq!(env.ok(&["recover", &id]), id);
    env.assert_clean(&[], Some(w.pid()));
    assert_eq!(String::from_utf8_lossy(&w.data()), records(RECORDS));
    assert!(Path::new(&format!("/proc/{}", w.pid())).exists());
}

/// `crash` of an injection without crash mode is refused and changes nothing.
#[test]
fn crash_without_crash_mode_is_refused() {
    let env = Env::new();
    let w = Writer::start(&env, "w", "fsync10", b"");
    let id = env.inject(
        &["--pid", &w.pid().to_string()],
        &w.vol(),
        &["--errno", "EIO", "--ops", "mkdir"],
    );
    let (code, err) = env.fails(&["crash", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in crash mode"), "{err}");
    assert!(Path::new(&format!("/proc/{}", w.pid())).exists());
    assert_eq!(env.ok(&["recover", &id]), id);
}

/// Appends `rec N` records to DIR/data, fsyncing each and printing `fsync N` once it returned.
const FSYNC_EACH: &str = "\
import os, sys
f = os.open(sys.argv[1] + '/data', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(1, 11):
    os.write(f, b'rec %05d\\n' % i)
    os.fsync(f)
    print('fsync', i, flush=True)
";

/// `iochaos run --path DIR RULES -- python3 -c FSYNC_EACH DIR`: (exit code, stdout, stderr).
fn run_fsync_each(env: &Env, dir: &Path, rules: &[&str]) -> (i32, String, String) {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec!["run", "--path", d];
    args.extend_from_slice(rules);
    args.extend(["--", "python3", "-c", FSYNC_EACH, d]);
    let out = env.run(&args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn fsync_acks(n: u64) -> String {
    (1..=n).map(|i| format!("fsync {i}\n")).collect()
}

/// `--crash --ops fsync --after 3`: the 4th fsync fires the rule before it is served. The
/// command dies of SIGKILL (run returns 137) without seeing it return, and the file holds
/// exactly the 3 records the fsyncs let through (the 4th was written, never synced).
#[test]
fn crash_rule_cuts_the_power_before_the_nth_fsync() {
    let env = Env::new();
    let dir = env.path().join("vol");
    std::fs::create_dir_all(&dir).expect("mkdir vol");
    let rules = ["--crash-mode", "--crash", "--ops", "fsync", "--after", "3"];
    let (code, out, err) = run_fsync_each(&env, &dir, &rules);
    assert_eq!(code, 137, "stdout {out:?}, stderr {err}");
    assert_eq!(out, fsync_acks(3));
    let data = std::fs::read(dir.join("data")).expect("read data");
    assert_eq!(String::from_utf8_lossy(&data), records(3));
    assert!(err.contains("a crash rule cut the power"), "{err}");
    assert!(
        err.contains("/data: dropped 10 bytes (size 40 -> 30, 0 bytes restored)"),
        "{err}"
    );
}

/// `"crash": {"when": "after"}` on the 4th fsync: the fsync is served (its record is
/// durable) but the command is killed before it returns.
#[test]
fn crash_rule_after_the_nth_fsync_keeps_what_it_synced() {
    let env = Env::new();
    let dir = env.path().join("vol");
    std::fs::create_dir_all(&dir).expect("mkdir vol");
    let spec = env.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"crash_mode": true, "rules": [{"crash": {"when": "after"}, "ops": ["fsync"], "after": 3}]}"#,
    )
    .expect("spec");
    let spec = spec.to_str().expect("utf-8 path");
    let (code, out, err) = run_fsync_each(&env, &dir, &["--spec", spec]);
    assert_eq!(code, 137, "stdout {out:?}, stderr {err}");
    assert_eq!(out, fsync_acks(3));
    let data = std::fs::read(dir.join("data")).expect("read data");
    assert_eq!(String::from_utf8_lossy(&data), records(4));
}

/// A crash rule is refused without crash mode, before anything is mounted.
#[test]
fn crash_rule_needs_crash_mode() {
    let env = Env::new();
    let dir = env.path().join("vol");
    std::fs::create_dir_all(&dir).expect("mkdir vol");
    let (code, out, err) = run_fsync_each(&env, &dir, &["--crash", "--ops", "fsync"]);
    assert_eq!(code, 2, "stdout {out:?}, stderr {err}");
    assert!(err.contains("needs crash mode"), "{err}");
    assert!(!dir.join("data").exists());
}

/// The crash rule in an injection into a running writer (fsync after every 10th record):
/// the 2nd fsync fires it. The writer dies of SIGKILL, the file holds records 1-10, and the
/// injection is recovered with nothing left behind.
#[test]
fn crash_rule_in_an_injection_kills_rolls_back_and_recovers() {
    let env = Env::new();
    let mut w = Writer::start(&env, "w", "fsync10", b"");
    env.inject(
        &["--pid", &w.pid().to_string()],
        &w.vol(),
        &["--crash-mode", "--crash", "--ops", "fsync", "--after", "1"],
    );
    std::fs::write(w.dir.join("go"), "").expect("go");
    w.assert_killed();
    assert_eq!(w.acks(), "fsync 10\n");
    assert_eq!(String::from_utf8_lossy(&w.data()), records(10));
    poll("the injection to be recovered", 20, || {
        env.run_dir_entries().is_empty().then_some(())
    });
    env.assert_clean(&[], None);
    assert!(
        env.server_log().contains("crash rule"),
        "{}",
        env.server_log()
    );
}

/// The report's unsynced writes of the data file: (offset, len, kept) in write order.
fn data_writes(report: &Value, w: &Writer) -> Vec<(u64, u64, u64)> {
    let path = format!("{}/data", w.vol());
    let f = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == path.as_str())
        .unwrap_or_else(|| panic!("no entry for {path}: {report}"));
    let Some(writes) = f["writes"].as_array() else {
        return Vec::new();
    };
    writes
        .iter()
        .map(|x| {
            let n = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{k}: {report}"));
            (n("offset"), n("len"), n("kept"))
        })
        .collect()
}

/// One run of the `torn` writer crashed with `flags`: the report's writes and the bytes left.
fn torn_run(flags: &[&str]) -> (Vec<(u64, u64, u64)>, Vec<u8>) {
    let env = Env::new();
    let mut w = Writer::start(&env, "w", "torn", b"");
    let id = w.inject(&env);
    w.go();
    assert_eq!(w.data().len(), SYNCED + 65536, "before the crash");
    let report = crash_with(&env, &id, &mut w, flags);
    (data_writes(&report, &w), w.data())
}

/// `--torn 1`: the synced bytes plus exactly the prefix of the unsynced 64 KiB write up to the
/// sector boundary the report names; the same seed cuts at the same place in a second run.
#[test]
fn crash_torn_keeps_a_sector_prefix_of_the_last_write() {
    let (writes, data) = torn_run(&["--torn", "1", "--seed", "7"]);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (off, len, kept) = writes[0];
    assert_eq!((off, len), (SYNCED as u64, 65536));
    assert!(
        kept > 0 && kept < 65536 && kept.is_multiple_of(512),
        "cut at {kept}"
    );
    let kept = usize::try_from(kept).expect("small");
    let mut want = vec![b'S'; SYNCED];
    want.extend_from_slice(&torn_write()[..kept]);
    assert!(
        data == want,
        "not the synced bytes plus {kept} bytes of the write (size {})",
        data.len()
    );
    let (again, data_again) = torn_run(&["--torn", "1", "--seed", "7"]);
    assert_eq!(again, writes, "the same seed cut elsewhere");
    assert!(data_again == data, "the same seed left other bytes");
}

/// Without --torn or --reorder nothing unsynced survives (and no writes are reported).
#[test]
fn crash_without_torn_loses_the_unsynced_write() {
    let (writes, data) = torn_run(&["--seed", "7"]);
    assert_eq!(writes, Vec::new());
    assert!(data == vec![b'S'; SYNCED], "size {}", data.len());
}

/// `--reorder`: of 8 unsynced 4 KiB writes to distinct offsets exactly the subset the report
/// names survives (not only a prefix); every other block is the base's.
#[test]
fn crash_reorder_keeps_exactly_the_reported_subset() {
    let env = Env::new();
    let base: Vec<u8> = (0..8u8).flat_map(|k| [b'a' + k; 4096]).collect();
    let mut w = Writer::start(&env, "w", "reorder", &base);
    let id = w.inject(&env);
    w.go();
    let report = crash_with(&env, &id, &mut w, &["--reorder", "--seed", "7"]);
    let writes = data_writes(&report, &w);
    let want_at: Vec<(u64, u64)> = REORDER_SLOTS.iter().map(|s| (s * 4096, 4096)).collect();
    let got_at: Vec<(u64, u64)> = writes.iter().map(|&(o, l, _)| (o, l)).collect();
    assert_eq!(got_at, want_at, "{report}");
    let kept: Vec<bool> = writes
        .iter()
        .map(|&(_, l, k)| {
            assert!(k == 0 || k == l, "reorder tore a write: {report}");
            k == l
        })
        .collect();
    // Seed 7 keeps a subset that is neither empty, nor everything, nor a prefix.
    let prefix = kept.iter().skip_while(|&&k| k).all(|&k| !k);
    assert!(!prefix && kept.contains(&false), "{kept:?}");
    let mut want = base.clone();
    for (i, slot) in REORDER_SLOTS.iter().enumerate() {
        if kept[i] {
            let at = usize::try_from(slot * 4096).expect("small");
            want[at..at + 4096].copy_from_slice(&reorder_write(i));
        }
    }
    assert!(
        w.data() == want,
        "the file is not the base plus the kept writes {kept:?}"
    );
}

/// The `crash` rule's own `torn` and `seed`: under `iochaos run`, 4 KiB synced, a 64 KiB write,
/// and the next fsync cuts the power before it happens; the file holds the synced bytes plus
/// the prefix of the write up to the boundary the run's report names.
#[test]
fn crash_rule_with_torn_tears_the_last_write() {
    const WRITER: &str = "import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, b'S' * 4096, 0)
os.fsync(fd)
os.pwrite(fd, bytes(i % 251 for i in range(65536)), 4096)
os.fsync(fd)
";
    let env = Env::new();
    let vol = env.path().join("vol");
    std::fs::create_dir_all(&vol).expect("mkdir vol");
    let spec = env.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"crash_mode": true, "rules": [{"ops": ["fsync"], "after": 1,
            "crash": {"torn": 1, "seed": 7}}]}"#,
    )
    .expect("spec");
    let data = vol.join("data");
    let out = env.run(&[
        "run",
        "--path",
        vol.to_str().expect("utf-8"),
        "--spec",
        spec.to_str().expect("utf-8"),
        "--",
        "python3",
        "-c",
        WRITER,
        data.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    // "... of 1 unsynced writes 0 kept, 1 torn (K bytes kept)"
    let kept: usize = err
        .split("1 torn (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no torn write reported: {err}"));
    assert!(
        kept > 0 && kept < 65536 && kept.is_multiple_of(512),
        "cut at {kept}"
    );
    let mut want = vec![b'S'; SYNCED];
    want.extend_from_slice(&torn_write()[..kept]);
    let got = std::fs::read(&data).expect("read data");
    assert!(
        got == want,
        "not the synced bytes plus {kept} (size {}): {err}",
        got.len()
    );
}
