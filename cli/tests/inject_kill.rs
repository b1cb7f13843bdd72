//! The injection server killed at chosen points of `inject` (kill points set with
//! `IOCHAOS_FAILPOINT`, where the server stops itself so the test kills it exactly there), and
//! two injects of one path started together: nothing may be left mounted, nothing may hang, and
//! exactly one inject may win. Plain processes in private mount namespaces (root, FUSE, ptrace).

mod inject_common;

use std::process::{Child, Stdio};
use std::time::Duration;

use inject_common::{EIO_ON_WRITE, Env, Workload, inject_args, poll};
use iochaos_testsupport::{Signal, kill};

/// A running `iochaos` command, killed and reaped on drop.
struct Cli(Child);

impl Cli {
    /// `iochaos inject --pid PID --path VOL RULES...` of the workload `w`, started.
    fn inject(env: &Env, w: &Workload, rules: &[&str], failpoint: Option<&str>) -> Cli {
        let pid = w.pid_arg();
        let mut c = env.command(&inject_args(&["--pid", &pid], w.vol_str(), rules));
        if let Some(f) = failpoint {
            c.env("IOCHAOS_FAILPOINT", f);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        Cli(c.spawn().expect("iochaos"))
    }

    /// EIO on write injected into the workload `w` by a server that stops itself at
    /// `failpoint`: the running command and, once it has stopped there, the server's pid.
    fn inject_held_at(env: &Env, w: &Workload, failpoint: &str) -> (Cli, u32) {
        let cli = Cli::inject(env, w, EIO_ON_WRITE, Some(failpoint));
        (cli, server_stopped_at_failpoint(env))
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

/// Nothing of the injection is left: no ChaosFS mount, the workload's writes succeed again
/// (through new opens and its held fd), no journal entry, `server` gone.
fn assert_undone(env: &Env, w: &Workload, server: u32) {
    assert_eq!(w.chaosfs_mounts(), 0, "the mount was left");
    workload_writes(w);
    env.assert_clean(&[server], Some(w.pid()));
}

/// SIGKILL the `server` of the inject `cli` (of the workload `w`): the inject fails within
/// `secs` seconds, exit 1, reporting the kill, and nothing is left; its stderr.
fn kill_server_inject_fails(env: &Env, w: &Workload, server: u32, cli: Cli, secs: u64) -> String {
    sigkill_and_reap(server);
    let (code, out, err) = cli.finish(secs);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("was killed by SIGKILL"), "{err:?}");
    assert_undone(env, w, server);
    err
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
    let (mut cli, server) = Cli::inject_held_at(&env, &w, "mounted");
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

    env.ok(&["recover", "--pid", &w.pid_arg()]);
    assert_undone(&env, &w, server);
    // And the path can be injected again.
    let id = w.inject(&env, EIO_ON_WRITE);
    env.ok(&["recover", &id]);
    env.assert_clean(&[], Some(w.pid()));
}

/// The server dies at the same point while its CLI waits: the CLI reports the death at once
/// (it watches the server with a pidfd) and undoes what the server left.
#[test]
fn server_killed_after_mount_inject_reports_and_undoes() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let (cli, server) = Cli::inject_held_at(&env, &w, "mounted");
    let err = kill_server_inject_fails(&env, &w, server, cli, 30);
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(
        err.contains(&format!("(pid {server}) was killed by SIGKILL")),
        "{err:?}"
    );
    assert!(err.contains("undone"), "{err:?}");
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
    let cli = Cli::inject(&env, &w, &["--latency", "30s", "--ops", "lookup"], None);
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
    kill_server_inject_fails(&env, &w, server, cli, 20);
}

/// Two injects of one path at once: the first is held (stopped) right after it found the path
/// free, the second runs meanwhile. Before, the second found the path free too and both
/// succeeded (two stacked ChaosFS mounts); now the check and the journal entry are one step
/// under the journal's lock: one wins, the other is refused naming it.
#[test]
fn two_injects_of_one_path_at_once_one_wins() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let (first, held) = Cli::inject_held_at(&env, &w, "checked");
    let mut second = Cli::inject(&env, &w, EIO_ON_WRITE, None);
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
