//! The injection server killed at chosen points of `inject` (kill points set with
//! `IOCHAOS_FAILPOINT`, where the server stops itself so the test kills it exactly there), and
//! two injects of one path started together: nothing may be left mounted, nothing may hang, and
//! exactly one inject may win. Plain processes in private mount namespaces (root, FUSE, ptrace).

mod inject_common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inject_common::{Env, Workload, fds_under, poll};
use iochaos_testsupport::{Signal, kill};

/// A running `iochaos` command, killed and reaped on drop.
struct Cli(Child);

impl Cli {
    fn start(env: &Env, args: &[&str], failpoint: Option<&str>) -> Cli {
        let mut c = env.command(args);
        if let Some(f) = failpoint {
            c.env("IOCHAOS_FAILPOINT", f);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        Cli(c.spawn().expect("iochaos"))
    }

    /// Wait (bounded, as a hang detector) for the command to end: (exit code, stderr).
    fn finish(mut self, secs: u64) -> (i32, String, String) {
        let status = poll("the iochaos command to end", secs, || {
            self.0.try_wait().expect("try_wait")
        });
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
        }
        if let Some(mut s) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut s, &mut err);
        }
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The injection servers of this test's journal (`iochaos __serve` with the test's run dir in
/// its request).
fn servers(env: &Env) -> Vec<u32> {
    let run = env.run.to_str().expect("utf-8").to_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("\0__serve\0") && c.contains(&run)
            })
        })
        .collect()
}

fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Wait for the one server of this test to stop itself at its failpoint; its pid.
fn server_stopped_at_failpoint(env: &Env) -> u32 {
    poll("the injection server to stop at its failpoint", 30, || {
        servers(env).into_iter().find(|&p| state(p) == Some('T'))
    })
}

fn sigkill_and_reap(pid: u32) {
    kill(pid, Signal::KILL).expect("kill the server");
    poll(&format!("server {pid} to be gone"), 20, || {
        matches!(state(pid), None | Some('Z') | Some('X')).then_some(())
    });
}

/// `inject --pid P --path VOL` followed by `rule`.
fn inject_with(w: &Workload, rule: &[&str]) -> Vec<String> {
    let mut args = vec!["inject".to_owned(), "--pid".to_owned(), w.pid_arg()];
    args.extend(["--path", w.vol_str()].map(str::to_owned));
    args.extend(rule.iter().map(|s| (*s).to_owned()));
    args
}

fn inject_args(w: &Workload) -> Vec<String> {
    inject_with(w, &["--errno", "EIO", "--ops", "write"])
}

/// `inject` with a 30 s latency on `--ops` followed by `ops` (ops and more selectors).
fn parked_args(w: &Workload, ops: &[&str]) -> Vec<String> {
    let mut rule = vec!["--latency", "30s", "--ops"];
    rule.extend_from_slice(ops);
    inject_with(w, &rule)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Nothing of the injection is left: no ChaosFS mount, the workload's writes succeed again
/// (through new opens and its held fd), no journal entry, `server` gone.
fn assert_undone(env: &Env, w: &Workload, server: u32) {
    assert_eq!(w.chaosfs_mounts(), 0, "the mount was left");
    workload_writes(w);
    env.assert_clean(&[server], Some(w.pid()));
}

/// The workload's writes succeed again, through new opens and its held fd.
fn workload_writes(w: &Workload) {
    let at = w.log.last_round();
    let r = w.log.wait_for('W', true, at);
    w.log.wait_for('H', true, at);
    w.log.wait_round(r + 2);
    assert!(
        w.log.lines().iter().filter(|l| l.round > r).all(|l| l.ok),
        "errors on the workload's volume: {:?}",
        w.log.lines().iter().rev().take(6).collect::<Vec<_>>()
    );
}

/// The server dies after mounting ChaosFS and before the journal records the mount, and the
/// CLI that started it dies too: `recover --pid` must still find the mount (by its source,
/// `iochaos:<id>`, journaled before mounting) and detach it; before, it deleted the entry,
/// said success and left a dead `fuse.chaosfs` (ENOTCONN) on the volume.
#[test]
fn server_killed_between_mount_and_journal_then_recover_pid() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let args = inject_args(&w);
    let mut cli = Cli::start(&env, &strs(&args), Some("mounted"));
    let server = server_stopped_at_failpoint(&env);
    assert_eq!(
        w.chaosfs_mounts(),
        1,
        "ChaosFS is mounted at the kill point"
    );
    let _ = cli.0.kill();
    let _ = cli.0.wait();
    sigkill_and_reap(server);
    // The connection died with its server: the workload's writes fail now.
    let at = w.log.last_round();
    w.log.wait_for('W', false, at);

    env.ok(&["recover", "--pid", &w.pid().to_string()]);
    assert_undone(&env, &w, server);
    // And the path can be injected again.
    let id = env.ok(&strs(&args));
    env.ok(&["recover", &id]);
    env.assert_clean(&[], Some(w.pid()));
}

/// What a workload holds under its volume: `fd -> (path, mnt_id)`.
type Held = std::collections::BTreeMap<i32, (String, String)>;

/// The server was SIGKILLed while its CLI waited: the CLI reports the death at once (it watches
/// the server with a pidfd) and undoes what the server left; the workload is alive and every
/// fd it holds under the volume is back on the mount it was on before (`before`).
fn assert_killed_and_undone(env: &Env, cli: Cli, w: &mut Workload, server: u32, before: &Held) {
    let (code, out, err) = cli.finish(30);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(
        err.contains(&format!("(pid {server}) was killed by SIGKILL")),
        "{err:?}"
    );
    assert!(
        err.contains("undone") || err.contains("it had changed nothing"),
        "{err:?}"
    );
    let died = w.child.try_wait().expect("try_wait");
    assert!(died.is_none(), "the workload died: {died:?}");
    assert_eq!(&fds_under(w.pid(), w.vol_str()), before, "held fds");
    assert_undone(env, w, server);
}

/// `inject` whose server stops itself at `failpoint` and is SIGKILLed there.
fn server_killed_at(failpoint: &str) {
    let env = Env::new();
    let mut w = Workload::start(&env, "w");
    let before = fds_under(w.pid(), w.vol_str());
    assert!(
        before.contains_key(&3),
        "the workload's held fd: {before:?}"
    );
    let args = inject_args(&w);
    let cli = Cli::start(&env, &strs(&args), Some(failpoint));
    let server = server_stopped_at_failpoint(&env);
    sigkill_and_reap(server);
    assert_killed_and_undone(&env, cli, &mut w, server, &before);
}

/// Killed before the mount (checked under the journal lock, nothing written yet).
#[test]
fn server_killed_before_mount_inject_reports_and_undoes() {
    server_killed_at("checked");
}

/// Killed after mounting ChaosFS, before the journal records the mount.
#[test]
fn server_killed_after_mount_inject_reports_and_undoes() {
    server_killed_at("mounted");
}

/// Killed after the swap, before the journal records it: the held fd is on a dead ChaosFS
/// connection until the CLI swaps it back.
#[test]
fn server_killed_after_swap_inject_reports_and_undoes() {
    server_killed_at("swapped");
}

/// Killed in the middle of the swap: the target's stub waits in the reopen of its held fd
/// through ChaosFS (a 30 s latency on opening `held` by the workload, `--comm sh`), traced and
/// stopped by the server. The server's own open of `held` before the stop (the handoff) fails
/// (`--comm iochaos`), so the stub opens that file itself. The connection dies with the server,
/// the open fails, the stub rolls back; the target runs on with its fd where it was. (The
/// workload is dash, which blocks every signal around vfork: a stop there once made the stub
/// end in an `int3`, and the target died of SIGTRAP without its tracer.)
#[test]
fn server_killed_mid_swap_inject_reports_and_undoes() {
    let env = Env::new();
    let mut w = Workload::start(&env, "w");
    let before = fds_under(w.pid(), w.vol_str());
    let pid = w.pid_arg();
    let args = inject_with(
        &w,
        &[
            "--errno",
            "EACCES",
            "--ops",
            "open",
            "--glob",
            "held",
            "--comm",
            "iochaos",
            "--latency",
            "30s",
            "--ops",
            "open",
            "--glob",
            "held",
            "--comm",
            "sh",
        ],
    );
    let cli = Cli::start(&env, &strs(&args), None);
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mount namespace");
    let (server, parked) = poll("a traced thread of the target waiting on FUSE", 30, || {
        let server = servers(&env).into_iter().next()?;
        traced_and_waiting_on_fuse(&ns).map(|p| (server, p))
    });
    eprintln!("server {server}: process {parked} waits on FUSE in the stub");
    sigkill_and_reap(server);
    assert_killed_and_undone(&env, cli, &mut w, server, &before);
}

/// A traced process of the mount namespace `ns` (its `/proc/PID/ns/mnt` link) with a thread
/// waiting for the answer of a FUSE request (its kernel stack).
fn traced_and_waiting_on_fuse(ns: &std::path::Path) -> Option<u32> {
    let pids = std::fs::read_dir("/proc").ok()?;
    pids.flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l == ns))
        .find(|pid| {
            let traced = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
            });
            traced
                && std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
                    tasks.flatten().any(|t| {
                        std::fs::read_to_string(t.path().join("stack"))
                            .is_ok_and(|s| s.contains("request_wait_answer"))
                    })
                })
        })
}

/// A small tmpfs as the test's journal directory, to make the journal's writes fail (ENOSPC)
/// at a chosen moment. Unmounted on drop.
struct TmpfsJournal(PathBuf);

impl TmpfsJournal {
    fn mount(env: &Env) -> TmpfsJournal {
        std::fs::create_dir_all(&env.run).expect("journal dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k,mode=0700",
                "iochaos-test-journal",
            ])
            .arg(&env.run)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        TmpfsJournal(env.run.clone())
    }

    /// From now on every write fails with ENOSPC (removing files still works).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let e = loop {
            if let Err(e) = f.write_all(&[0; 4096]) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for TmpfsJournal {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The journal cannot be written once the swap is done (full): before, inject returned that
/// error without swapping back, and the workload's held fd stayed on a ChaosFS mount whose
/// server then stopped (ENOTCONN). Now the swap is undone first: the CLI reports the error,
/// the held fd is back on its mount, nothing is left.
#[test]
fn journal_failing_after_the_swap_swaps_back() {
    let env = Env::new();
    let journal = TmpfsJournal::mount(&env);
    let w = Workload::start(&env, "w");
    let before = fds_under(w.pid(), w.vol_str());
    let args = inject_args(&w);
    let cli = Cli::start(&env, &strs(&args), Some("swapped"));
    let server = server_stopped_at_failpoint(&env);
    assert_ne!(
        fds_under(w.pid(), w.vol_str())[&3],
        before[&3],
        "the held fd is on ChaosFS at the failpoint"
    );
    journal.fill();
    kill(server, Signal::CONT).expect("continue the server");
    let (code, out, err) = cli.finish(30);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("No space left on device"), "{err:?}");
    assert_eq!(fds_under(w.pid(), w.vol_str()), before, "held fds");
    journal.unfill();
    assert_undone(&env, &w, server);
}

/// `update` when the journal cannot be written: before, the new rules went live first and the
/// journal failed after (rules live that `status` from the journal and recover did not know
/// of). Now the journal comes first: `update` fails and the old rules stay, in force and in
/// `status`.
#[test]
fn update_with_a_failing_journal_changes_nothing() {
    let env = Env::new();
    let journal = TmpfsJournal::mount(&env);
    let w = Workload::start(&env, "w");
    let id = w.inject(&env, &["--errno", "EIO", "--ops", "write"]);
    w.log.wait_for('W', false, w.log.last_round());
    journal.fill();
    let (code, err) = env.fails(&["update", &id, "--latency", "1ms", "--ops", "write"]);
    assert_eq!(code, 1, "{err:?}");
    assert!(err.contains("No space left on device"), "{err:?}");
    let st = env.status();
    assert_eq!(st[0]["rules"][0]["spec"]["errno"], "EIO", "{st:?}");
    // The workload's writes still fail: two whole rounds after the update.
    let at = w.log.last_round();
    w.log.wait_round(at + 2);
    let after: Vec<_> = w
        .log
        .lines()
        .into_iter()
        .filter(|l| l.round > at && l.kind == 'W')
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|l| !l.ok),
        "{after:?}"
    );
    journal.unfill();
    env.ok(&["recover", &id]);
    workload_writes(&w);
    env.assert_clean(&[], Some(w.pid()));
}

/// The server dies while one of its own threads waits for its own ChaosFS: the swap's lookup of
/// the workload's held file is parked in a 30 s latency fault when the server is SIGKILLed.
/// Before, that thread shared the file table that held `/dev/fuse` and the CLI's pipe, so the
/// kernel never aborted the connection, the thread stayed in the wait, and `inject` hung for
/// ever. Now the swap runs with a file table of its own: the process dies, the connection is
/// aborted, and `inject` reports the death and cleans up.
#[test]
fn server_killed_while_its_own_request_is_parked_inject_does_not_hang() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    // Only the server's own lookups are parked (`--comm iochaos`): with the workload's parked
    // too, the server's lookup of a name the workload was looking up waited on that lookup
    // (d_wait_lookup), never sent its own request, and the poll below timed out under load.
    let cli = Cli::start(
        &env,
        &strs(&parked_args(&w, &["lookup", "--comm", "iochaos"])),
        None,
    );
    let (server, tid) = poll("a server thread waiting on FUSE", 30, || {
        let server = servers(&env).into_iter().next()?;
        let tasks = std::fs::read_dir(format!("/proc/{server}/task")).ok()?;
        tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
            .find(|tid| {
                // Its kernel stack: waiting for an answer of a FUSE request it sent.
                std::fs::read_to_string(format!("/proc/{server}/task/{tid}/stack"))
                    .is_ok_and(|s| s.contains("request_wait_answer"))
            })
            .map(|tid| (server, tid))
    });
    eprintln!("server {server}: thread {tid} waits on FUSE");
    sigkill_and_reap(server);
    let (code, _, err) = cli.finish(20);
    assert_eq!(code, 1, "{err:?}");
    assert!(err.contains("was killed by SIGKILL"), "{err:?}");
    assert_undone(&env, &w, server);
}

/// Two injects of one path at once: the first is held (stopped) right after it found the path
/// free, the second runs meanwhile. Before, the second found the path free too and both
/// succeeded (two stacked ChaosFS mounts); now the check and the journal entry are one step
/// under the journal's lock: one wins, the other is refused naming it.
#[test]
fn two_injects_of_one_path_at_once_one_wins() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let args = inject_args(&w);
    let first = Cli::start(&env, &strs(&args), Some("checked"));
    let held = server_stopped_at_failpoint(&env);
    let mut second = Cli::start(&env, &strs(&args), None);
    // Let the second run as far as it can while the first is held: to its end without the lock
    // (the race), or until it waits for the lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline && second.0.try_wait().expect("try_wait").is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(held, Signal::CONT).expect("continue the first server");
    let (c1, out1, err1) = first.finish(30);
    let (c2, out2, err2) = second.finish(30);
    let outcomes = [(c1, &out1, &err1), (c2, &out2, &err2)];
    let won: Vec<_> = outcomes.iter().filter(|o| o.0 == 0).collect();
    let lost: Vec<_> = outcomes.iter().filter(|o| o.0 != 0).collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    assert_eq!(lost.len(), 1, "{outcomes:?}");
    let id = won[0].1.trim();
    assert_eq!(lost[0].0, 1, "{outcomes:?}");
    assert!(
        lost[0].2.contains("already injected") && lost[0].2.contains(id),
        "{outcomes:?}"
    );
    assert_eq!(w.chaosfs_mounts(), 1, "stacked mounts");
    assert_eq!(
        env.run_dir_entries()
            .iter()
            .filter(|e| e.ends_with(".json"))
            .count(),
        1,
        "{:?}",
        env.run_dir_entries()
    );
    env.ok(&["recover", id]);
    workload_writes(&w);
    env.assert_clean(&[], Some(w.pid()));
}
