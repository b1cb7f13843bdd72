//! Crash mode (docs/crash.md) under PostgreSQL (Debian's postgresql, /usr/lib/postgresql/*/bin):
//! the postmaster runs under `iochaos run --crash-mode` with a `crash` rule on a seeded random
//! fsync (or, with `fsync=off`, write); a psql client outside the run inserts numbered rows,
//! one transaction each, and echoes `commit N` after each returned. After each power cut the
//! cluster is started natively (crash recovery from the WAL), `pg_amcheck` must be clean and
//! the table must hold every commit the client saw. With `fsync=off` acknowledged commits
//! must be lost. Privileged: root, FUSE, the postgres user; fails without them.
//!
//! The CI test cuts the power 3 times; `postgres_keeps_every_acknowledged_commit_20_crashes`
//! (ignored: about two minutes) does it 20 times. `IOCHAOS_TEST_SEED=N` replays a sequence.

mod inject_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inject_common::{Env, poll};

/// Rows the client tries to insert per run (the rule always fires long before the last).
const INSERTS: u64 = 3000;

/// The binaries of the newest PostgreSQL installed.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (/usr/lib/postgresql: apt-get install postgresql)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql/*/bin")
}

/// A cluster in a test directory; dropping it stops every server of it (immediate) and the
/// crash-mode run if one is still going.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    run: Option<Child>,
}

impl Cluster {
    /// initdb into ENV/pg/data (as postgres), start it natively, create the table, stop.
    fn new(env: &Env) -> Cluster {
        let dir = env.path().join("pg");
        std::fs::create_dir_all(dir.join("sock")).expect("mkdir pg");
        for d in [env.path(), dir.clone()] {
            ok(Command::new("chmod").arg("755").arg(&d));
        }
        ok(Command::new("chown").args(["-R", "postgres:"]).arg(&dir));
        let c = Cluster {
            bin: pg_bin(),
            dir,
            run: None,
        };
        let data = c.data();
        ok(c.as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        c.start();
        c.psql("CREATE TABLE t(n int PRIMARY KEY, v text)");
        c.stop();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn sock(&self) -> String {
        self.dir.join("sock").display().to_string()
    }

    /// The server's options: its socket in ENV/pg/sock, no TCP, small buffers.
    fn options(&self) -> Vec<String> {
        [
            "-k",
            &self.sock(),
            "-c",
            "listen_addresses=",
            "-c",
            "shared_buffers=16MB",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `runuser -u postgres -- BIN/prog`.
    fn as_postgres(&self, prog: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(prog));
        c
    }

    /// Start natively (crash recovery first if the last run was cut) and wait until ready.
    fn start(&self) {
        // The postmaster a cut killed may not be reaped yet: its lock files (the data
        // directory's pid file, the socket's lock) would stop the start while it exists.
        let sock_lock = self.dir.join("sock/.s.PGSQL.5432.lock");
        for lock in [self.data().join("postmaster.pid"), sock_lock] {
            if let Ok(text) = std::fs::read_to_string(&lock)
                && let Some(pid) = text.lines().next().filter(|p| !p.is_empty())
            {
                poll("the killed postmaster to be gone", 20, || {
                    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
                });
            }
        }
        // An empty pid file (created, never synced: what `fsync=off` leaves) makes PostgreSQL
        // refuse to start ("lock file is empty"): removed, as its hint tells an operator to.
        let pidfile = self.data().join("postmaster.pid");
        if std::fs::metadata(&pidfile).is_ok_and(|m| m.len() == 0) {
            std::fs::remove_file(&pidfile).expect("removing the empty postmaster.pid");
        }
        let out = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-l"])
            .arg(self.dir.join("log"))
            .args(["-o", &self.options().join(" "), "start"])
            .output()
            .expect("pg_ctl start");
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\nserver log (last lines, newest first):\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        );
    }

    fn stop(&self) {
        ok(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"]));
    }

    fn psql(&self, sql: &str) -> String {
        ok(Command::new(self.bin.join("psql")).args([
            "-h",
            &self.sock(),
            "-U",
            "postgres",
            "-Atq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))
    }

    /// The native check after a cut: start (recovery), `pg_amcheck` clean, (rows, max), stop.
    fn check(&self, what: &str) -> (u64, u64) {
        self.start();
        let out = Command::new(self.bin.join("pg_amcheck"))
            .args([
                "-h",
                &self.sock(),
                "-U",
                "postgres",
                "--install-missing",
                "-d",
                "postgres",
            ])
            .output()
            .expect("pg_amcheck");
        assert!(
            out.status.success(),
            "{what}: pg_amcheck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let row = self.psql(
            "SELECT count(*), coalesce(max(n), 0), count(*) FILTER (WHERE v <> 'v' || n) FROM t",
        );
        self.stop();
        let v: Vec<u64> = row
            .trim()
            .split('|')
            .map(|s| s.parse().expect("number"))
            .collect();
        assert_eq!(v[2], 0, "{what}: rows with a wrong value");
        assert_eq!(v[0], v[1], "{what}: rows are not exactly 1..{}", v[1]);
        (v[0], v[1])
    }

    /// Run the postmaster under `iochaos run --crash-mode` with the crash rule `rule`
    /// (`extra`: more server options), insert rows from `from` on with psql until the cut
    /// ends the connection; the last commit psql saw return, and the run's stderr.
    fn crash_run(
        &mut self,
        env: &Env,
        rule: &str,
        extra: &[&str],
        from: u64,
    ) -> (Option<u64>, String) {
        let spec = env.path().join("spec.json");
        std::fs::write(
            &spec,
            format!(r#"{{"crash_mode": true, "rules": [{rule}]}}"#),
        )
        .expect("spec");
        let data = self.data().display().to_string();
        let spec = spec.display().to_string();
        let mut args = vec![
            "run", "--path", &data, "--spec", &spec, "--", "runuser", "-u", "postgres", "--",
        ];
        let postgres = self.bin.join("postgres").display().to_string();
        args.extend([postgres.as_str(), "-D", &data]);
        let options = self.options();
        args.extend(options.iter().map(String::as_str));
        args.extend(extra);
        let child = env
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iochaos run");
        self.run = Some(child);
        // Ready, or already cut (a rule that fired during startup).
        let ready = poll("the server under crash mode to be ready", 60, || {
            if let Some(run) = self.run.as_mut()
                && run.try_wait().ok().flatten().is_some()
            {
                return Some(false);
            }
            let st = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", &self.sock(), "-U", "postgres"])
                .status()
                .ok()?;
            st.success().then_some(true)
        });
        let mut last = None;
        if ready {
            let sql: String = (from..from + INSERTS)
                .map(|i| format!("INSERT INTO t VALUES ({i}, 'v{i}');\n\\echo commit {i}\n"))
                .collect();
            let file = self.dir.join("inserts.sql");
            std::fs::write(&file, sql).expect("inserts.sql");
            let out = Command::new(self.bin.join("psql"))
                .args([
                    "-h",
                    &self.sock(),
                    "-U",
                    "postgres",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                ])
                .arg(&file)
                .output()
                .expect("psql");
            assert!(
                !out.status.success(),
                "psql inserted every row: the rule never fired"
            );
            last = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("commit ")?.parse().ok())
                .next_back();
        }
        let run = self.run.take().expect("the run");
        let out = run.wait_with_output().expect("waiting for iochaos run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(137), "the run was not cut: {err}");
        assert!(err.contains("a crash rule cut the power"), "{err}");
        (last, err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A server still running (natively or under the run): stop it at once.
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut run) = self.run.take() {
            let _ = run.kill();
            let _ = run.wait();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `c`, which must succeed; its stdout.
fn ok(c: &mut Command) -> String {
    let out = c.output().expect("running a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// splitmix64: the seeded choices of the crash moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// `crashes` power cuts at seeded random fsyncs (before or after) of the postmaster: after
/// each, recovery succeeds, pg_amcheck is clean, rows are exactly 1..M and M is the last
/// acknowledged commit or one more (the commit in flight may be durable unacknowledged).
fn crashes_keep_every_acknowledged_commit(crashes: u64) {
    let env = Env::new();
    let mut pg = Cluster::new(&env);
    let seed = std::env::var("IOCHAOS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1603);
    let mut rng = Rng(seed);
    let mut kept = 0;
    for round in 1..=crashes {
        let when = ["before", "after"][usize::from(rng.below(2) == 1)];
        let after = 5 + rng.below(40);
        let rule =
            format!(r#"{{"crash": {{"when": "{when}"}}, "ops": ["fsync"], "after": {after}}}"#);
        let what = format!("seed {seed}, round {round}: rule {rule}");
        let (last, err) = pg.crash_run(&env, &rule, &[], kept + 1);
        let acked = last.unwrap_or(kept);
        let (_, max) = pg.check(&what);
        assert!(
            max >= acked,
            "{what}: commit {acked} was acknowledged, the table holds 1..{max}\n{err}"
        );
        assert!(
            max <= acked + 1,
            "{what}: 1..{max} kept, last commit seen {acked}"
        );
        kept = max;
    }
}

#[test]
fn postgres_keeps_every_acknowledged_commit_across_crashes() {
    crashes_keep_every_acknowledged_commit(3);
}

#[test]
#[ignore = "20 power cuts of PostgreSQL: about two minutes; run with --ignored"]
fn postgres_keeps_every_acknowledged_commit_20_crashes() {
    crashes_keep_every_acknowledged_commit(20);
}

/// `fsync=off`: the server never syncs, so the cut (on its 100th write) takes back commits the
/// client saw return; recovery still succeeds and pg_amcheck is clean.
#[test]
fn postgres_fsync_off_loses_acknowledged_commits() {
    let env = Env::new();
    let mut pg = Cluster::new(&env);
    let rule = r#"{"crash": {}, "ops": ["write"], "after": 99}"#;
    let (last, err) = pg.crash_run(&env, rule, &["-c", "fsync=off"], 1);
    let acked = last.expect("psql saw commits return before the cut");
    let (_, max) = pg.check("fsync=off");
    assert!(
        max < acked,
        "no acknowledged commit was lost (acked {acked}, kept 1..{max})\n{err}"
    );
}
