//! Crash mode (docs/crash.md) under a real database: SQLite (python3's `sqlite3` module) in
//! WAL and rollback-journal (DELETE) mode commits numbered transactions under
//! `iochaos run --crash-mode` with a `crash` rule whose moment is drawn from a seeded random
//! generator; after each power cut the database is opened natively (SQLite's own recovery
//! runs) and must pass `PRAGMA integrity_check` and hold every commit the client saw return.
//! With `PRAGMA synchronous=OFF` the same cut must lose acknowledged commits (the tool finds
//! them). Privileged: root, FUSE; fails without them.
//!
//! `IOCHAOS_TEST_SEED=N` replays a failing sequence (each failure message names its seed).

mod inject_common;

use std::collections::BTreeSet;
use std::path::Path;

use inject_common::Env;
use serde_json::Value;

/// Power cuts per journal mode.
const CRASHES: u64 = 20;
/// Transactions the client tries per run (the rule always fires well before the last).
const COMMITS: u64 = 100;

/// The client: `DB MODE SYNC COUNT`. Continues the numbering from what the table holds,
/// commits COUNT transactions of one row each and prints `commit N` once each COMMIT returned.
const CLIENT: &str = "\
import sqlite3, sys
db, mode, sync, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = sqlite3.connect(db, isolation_level=None)
c.execute('PRAGMA journal_mode=' + mode)
c.execute('PRAGMA synchronous=' + sync)
start = (c.execute('SELECT max(n) FROM t').fetchone()[0] or 0) + 1
for i in range(start, start + count):
    c.execute('BEGIN')
    c.execute('INSERT INTO t VALUES (?, ?)', (i, 'v%d-' % i * (i % 300)))
    c.execute('COMMIT')
    print('commit', i, flush=True)
";

/// The check, run natively after the crash (SQLite recovers a hot journal or WAL on open):
/// `{"integrity": "...", "count": N, "max": M, "bad": B}` (B: rows whose value is not theirs).
const CHECK: &str = "\
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
integrity = '; '.join(r[0] for r in c.execute('PRAGMA integrity_check'))
rows = c.execute('SELECT n, v FROM t').fetchall()
bad = sum(1 for n, v in rows if v != 'v%d-' % n * (n % 300))
print(json.dumps({'integrity': integrity, 'count': len(rows),
                  'max': max((n for n, _ in rows), default=0), 'bad': bad}))
";

/// Create DIR/db with the table, in `mode`, natively (durable before any injection).
fn create_db(dir: &Path, mode: &str) {
    std::fs::create_dir_all(dir).expect("mkdir vol");
    let script = format!(
        "import sqlite3; c = sqlite3.connect('{}/db'); c.execute('PRAGMA journal_mode={mode}'); \
         c.execute('CREATE TABLE t(n INTEGER PRIMARY KEY, v TEXT)'); c.commit(); c.close()",
        dir.display()
    );
    python(&["-c", &script]);
}

fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("running python3 (needed by this test)");
    assert!(
        out.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The native check of DIR/db: (integrity, count, max, bad).
fn check(dir: &Path) -> (String, u64, u64, u64) {
    let db = dir.join("db");
    let v: Value =
        serde_json::from_str(&python(&["-c", CHECK, db.to_str().expect("utf-8")])).expect("json");
    let n = |k: &str| v[k].as_u64().expect("number");
    (
        v["integrity"].as_str().expect("integrity").to_owned(),
        n("count"),
        n("max"),
        n("bad"),
    )
}

/// splitmix64: the seeded choices of the crash moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed(default: u64) -> u64 {
    std::env::var("IOCHAOS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One run of the client under crash mode with the crash rule `rule` (a JSON object):
/// (exit code, the last commit it saw return, stderr).
fn run_client(
    env: &Env,
    dir: &Path,
    mode: &str,
    sync: &str,
    rule: &str,
) -> (i32, Option<u64>, String) {
    let spec = env.path().join("spec.json");
    std::fs::write(
        &spec,
        format!(r#"{{"crash_mode": true, "rules": [{rule}]}}"#),
    )
    .expect("spec");
    let d = dir.to_str().expect("utf-8 path");
    let db = format!("{d}/db");
    let count = COMMITS.to_string();
    let out = env.run(&[
        "run",
        "--path",
        d,
        "--spec",
        spec.to_str().expect("utf-8 path"),
        "--",
        "python3",
        "-c",
        CLIENT,
        &db,
        mode,
        sync,
        &count,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("commit ")?.parse().ok())
        .next_back();
    (
        out.status.code().unwrap_or(-1),
        last,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files a run's crash report names (`  PATH: dropped ...`), each once.
fn assert_each_file_reported_once(err: &str, what: &str) {
    let mut seen = BTreeSet::new();
    for l in err.lines() {
        if let Some((path, _)) = l.trim_start().split_once(": dropped ") {
            assert!(
                seen.insert(path.to_owned()),
                "{what}: {path} reported twice:\n{err}"
            );
        }
    }
}

/// CRASHES power cuts at seeded random moments (before or after the Nth fsync or write) of
/// the client in journal `mode` with `synchronous=FULL`, one after the other on the same
/// database (each run first recovers what the last cut left). After each: integrity ok, the
/// rows are exactly 1..M with every value right, and M is the last acknowledged commit (or
/// one more: the commit in flight may have become durable without its caller learning it).
fn crashes_keep_every_acknowledged_commit(mode: &str, default_seed: u64) {
    let env = Env::new();
    let dir = env.path().join("vol");
    create_db(&dir, mode);
    let seed = seed(default_seed);
    let mut rng = Rng(seed);
    let mut acked = 0;
    for round in 1..=CRASHES {
        let op = ["fsync", "write"][usize::from(rng.below(2) == 1)];
        let when = ["before", "after"][usize::from(rng.below(2) == 1)];
        let after = rng.below(60);
        let rule =
            format!(r#"{{"crash": {{"when": "{when}"}}, "ops": ["{op}"], "after": {after}}}"#);
        let what = format!("seed {seed}, {mode} round {round}: rule {rule}");
        let (code, last, err) = run_client(&env, &dir, mode, "FULL", &rule);
        assert_eq!(code, 137, "{what}: the rule did not cut the power\n{err}");
        assert!(err.contains("a crash rule cut the power"), "{what}: {err}");
        assert_each_file_reported_once(&err, &what);
        let acked_now = last.unwrap_or(acked);
        let (integrity, count, max, bad) = check(&dir);
        assert_eq!(integrity, "ok", "{what}");
        assert_eq!(
            (count, bad),
            (max, 0),
            "{what}: rows are not exactly 1..{max}"
        );
        assert!(
            max >= acked_now,
            "{what}: commit {acked_now} was acknowledged, the database holds 1..{max}\n{err}"
        );
        assert!(
            max <= acked_now + 1,
            "{what}: {max} rows, last commit seen {acked_now}"
        );
        acked = max;
    }
}

#[test]
fn sqlite_wal_keeps_every_acknowledged_commit_across_crashes() {
    crashes_keep_every_acknowledged_commit("WAL", 1601);
}

#[test]
fn sqlite_rollback_journal_keeps_every_acknowledged_commit_across_crashes() {
    crashes_keep_every_acknowledged_commit("DELETE", 1602);
}

/// `synchronous=OFF` never syncs: the cut (on the 60th write) takes back commits the client
/// saw return, in both journal modes, and the database is still intact (as it was).
#[test]
fn sqlite_synchronous_off_loses_acknowledged_commits() {
    let env = Env::new();
    for mode in ["WAL", "DELETE"] {
        let dir = env.path().join(mode);
        create_db(&dir, mode);
        let rule = r#"{"crash": {}, "ops": ["write"], "after": 59}"#;
        let (code, last, err) = run_client(&env, &dir, mode, "OFF", rule);
        assert_eq!(code, 137, "{mode}: {err}");
        let acked = last.expect("the client saw commits return before the cut");
        let (integrity, count, max, bad) = check(&dir);
        assert_eq!(integrity, "ok", "{mode}");
        assert_eq!((count, bad), (max, 0), "{mode}");
        assert!(
            max < acked,
            "{mode}: no acknowledged commit was lost (acked {acked}, kept 1..{max})"
        );
    }
}
