//! Tests of the rule engine through its public interface.

use std::path::Path;
use std::time::Duration;

use super::*;

fn spec(json: &str) -> Spec {
    match Spec::from_json(json) {
        Ok(s) => s,
        Err(e) => panic!("{json} did not parse: {e}"),
    }
}

fn rules(json: &str) -> RuleSet {
    match RuleSet::new(spec(json)) {
        Ok(r) => r,
        Err(e) => panic!("{json} did not compile: {e}"),
    }
}

/// The one-line error for a spec.
fn error(json: &str) -> String {
    match Spec::from_json(json) {
        Ok(s) => panic!("{json} parsed as {s:?}"),
        Err(e) => e.to_string(),
    }
}

/// Run `error_of` on each input; each error must be one line containing its expected text.
/// Returns the errors for further checks.
fn expect_errors(cases: &[(&str, &str)], error_of: fn(&str) -> String) -> Vec<String> {
    cases
        .iter()
        .map(|&(input, expected)| {
            let got = error_of(input);
            assert!(
                got.contains(expected),
                "{input}\n  expected to contain: {expected}\n  got: {got}"
            );
            assert!(!got.contains('\n'), "one line: {got}");
            got
        })
        .collect()
}

fn rule_error(rule: &str) -> String {
    error(&format!(r#"{{"rules": [{{"errno": "EIO"}}, {rule}]}}"#))
}

fn call(op: Op, path: &str) -> Call<'_> {
    Call {
        op,
        path: Path::new(path),
        pid: 4_000_000,
        uid: 1000,
        gid: 1000,
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

#[test]
fn design_example_parses_and_round_trips() {
    let s = spec(
        r#"{ "path": "/data", "duration": "60s", "seed": 42,
             "rules": [
               { "ops": ["write"], "glob": "*.db", "percent": 50, "errno": "EIO" },
               { "ops": ["fsync"], "latency": "200ms" } ] }"#,
    );
    assert_eq!(s.path.as_deref(), Some("/data"));
    assert_eq!(
        s.duration_value().ok().flatten(),
        Some(Duration::from_secs(60))
    );
    assert_eq!(s.seed, Some(42));
    assert_eq!(s.rules.len(), 2);
    assert_eq!(
        s.rules[0].errno,
        Some(ErrnoSpec::One(Errno::from_name("EIO").expect("EIO")))
    );
    assert_eq!(s.rules[0].percent.map(Percent::get), Some(50.0));
    assert_eq!(
        s.rules[1].latency,
        Some(LatencySpec {
            delay: Duration::from_millis(200),
            jitter: Duration::ZERO
        })
    );
    let text = serde_json::to_string(&s).expect("serialize");
    assert_eq!(spec(&text), s);
    assert!(text.contains(r#""errno":"EIO""#), "{text}");
    assert!(text.contains(r#""latency":"200ms""#), "{text}");
    assert!(text.contains(r#""percent":50"#), "{text}");
}

#[test]
fn every_form_round_trips() {
    let s = spec(
        r#"{"rules": [
            {"errno": ["EIO", "ENOSPC"], "pid": [1, 2], "comm": "postgres", "uid": 0},
            {"errno": {"EIO": 3, "ENOSPC": 1}, "after": 3, "every": 2, "times": 9},
            {"latency": {"delay": "200ms", "jitter": "50ms"}, "percent": 12.5},
            {"attr": {"perm": "0644", "uid": 1, "gid": 2, "size": 3, "atime": 4,
                      "mtime": "2024-01-01T00:00:00Z", "ctime": -5, "nlink": 6, "kind": "dir"}},
            {"corrupt": "bitflip"},
            {"corrupt": {"mode": "random", "max_bytes": 16}, "glob": "data/*.db"},
            {"short": {"bytes": 10}},
            {"short": {"fraction": 0.25}},
            {"full": true}
        ]}"#,
    );
    let text = serde_json::to_string_pretty(&s).expect("serialize");
    assert_eq!(spec(&text), s, "{text}");
    let a = s.rules[3].attr.expect("attr").to_override();
    assert_eq!(a.perm, Some(0o644));
    assert_eq!(a.mtime, Some(1_704_067_200));
    assert_eq!(a.ctime, Some(-5));
    assert_eq!(a.kind, Some(libc::S_IFDIR));
    assert_eq!(
        (a.uid, a.gid, a.size, a.atime, a.nlink),
        (Some(1), Some(2), Some(3), Some(4), Some(6))
    );
}

#[test]
fn attr_values() {
    let perm = |v: &str| {
        spec(&format!(r#"{{"rules":[{{"attr":{{"perm":{v}}}}}]}}"#)).rules[0]
            .attr
            .and_then(|a| a.perm)
            .map(|p| p.0)
    };
    assert_eq!(perm(r#""0644""#), Some(0o644));
    assert_eq!(perm(r#""644""#), Some(0o644));
    assert_eq!(perm(r#""0o4755""#), Some(0o4755));
    assert_eq!(perm("420"), Some(0o644));
    assert_eq!(perm(r#""0000""#), Some(0));
    for kind in ["file", "dir", "symlink", "fifo", "socket", "char", "block"] {
        let s = spec(&format!(r#"{{"rules":[{{"attr":{{"kind":"{kind}"}}}}]}}"#));
        assert_eq!(s.rules[0].attr.and_then(|a| a.kind), FileKind::parse(kind));
    }
    let t = spec(r#"{"rules":[{"attr":{"mtime":"1700000000","atime":"2023-11-14 22:13:20"}}]}"#);
    let a = t.rules[0].attr.expect("attr");
    assert_eq!(a.mtime, Some(Timestamp(1_700_000_000)));
    assert_eq!(a.atime, Some(Timestamp(1_700_000_000)));
}

#[test]
fn validation_errors_name_the_rule_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"errno": "EIOO"}"#,
            r#"rule 1: errno: unknown errno "EIOO""#,
        ),
        (
            r#"{"errno": ["EIO", "EXX"]}"#,
            r#"rule 1: errno[1]: unknown errno "EXX""#,
        ),
        (
            r#"{"errno": {"EIO": 0}}"#,
            "rule 1: errno: weight of EIO is 0",
        ),
        (r#"{"errno": []}"#, "rule 1: errno: empty list of errnos"),
        (r#"{"errno": 5}"#, "rule 1: errno: invalid type"),
        (
            r#"{"errno": "EIO", "percnt": 5}"#,
            "rule 1: unknown field `percnt`",
        ),
        (
            r#"{"errno": "EIO", "ops": ["read", "wrtie"]}"#,
            r#"rule 1: ops[1]: unknown op "wrtie""#,
        ),
        (r#"{"errno": "EIO", "ops": []}"#, "rule 1: ops: empty list"),
        (
            r#"{"errno": "EIO", "percent": 150}"#,
            "rule 1: percent: must be between 0 and 100, got 150",
        ),
        (
            r#"{"errno": "EIO", "percent": -1}"#,
            "rule 1: percent: must be between 0 and 100",
        ),
        (
            r#"{"errno": "EIO", "glob": "/data/*.db"}"#,
            "rule 1: glob: glob \"/data/*.db\" starts with /",
        ),
        (
            r#"{"errno": "EIO", "glob": "[a"}"#,
            "rule 1: glob: invalid glob \"[a\"",
        ),
        (
            r#"{"errno": "EIO", "glob": ""}"#,
            "rule 1: glob: empty glob",
        ),
        (
            r#"{"errno": "EIO", "every": 0}"#,
            "rule 1: every: must be at least 1",
        ),
        (
            r#"{"errno": "EIO", "after": -1}"#,
            "rule 1: after: invalid value",
        ),
        (r#"{"errno": "EIO", "pid": []}"#, "rule 1: pid: empty list"),
        (
            r#"{"errno": "EIO", "pid": "x"}"#,
            "rule 1: pid: invalid type",
        ),
        (
            r#"{"errno": "EIO", "comm": "a-very-long-process-name"}"#,
            "rule 1: comm: \"a-very-long-process-name\" is longer than 15 bytes",
        ),
        (
            r#"{"errno": "EIO", "comm": ""}"#,
            "rule 1: comm: empty command name",
        ),
        (
            r#"{"percent": 5}"#,
            "rule 1: no action: give one of errno, latency, attr, corrupt, short, full",
        ),
        (
            r#"{"errno": "EIO", "latency": "1s"}"#,
            "rule 1: more than one action (errno, latency)",
        ),
        (r#"{"full": false}"#, "rule 1: full: must be true"),
        (
            r#"{"latency": "200xs"}"#,
            "rule 1: latency: invalid duration \"200xs\"",
        ),
        (
            r#"{"latency": {"delay": "1s", "jiter": "1s"}}"#,
            "rule 1: latency: unknown field `jiter`",
        ),
        (
            r#"{"latency": {"jitter": "1s"}}"#,
            "rule 1: latency: missing field `delay`",
        ),
        (r#"{"attr": {}}"#, "rule 1: attr: overrides nothing"),
        (
            r#"{"attr": {"perm": "0999"}}"#,
            "rule 1: attr.perm: \"0999\" is not octal",
        ),
        (
            r#"{"attr": {"perm": 5000}}"#,
            "rule 1: attr.perm: 5000 is more than 4095",
        ),
        (
            r#"{"attr": {"kind": "door"}}"#,
            "rule 1: attr.kind: unknown variant `door`",
        ),
        (
            r#"{"attr": {"mtime": "yesterday"}}"#,
            "rule 1: attr.mtime: \"yesterday\" is neither",
        ),
        (
            r#"{"attr": {"colour": 1}}"#,
            "rule 1: attr: unknown field `colour`",
        ),
        (
            r#"{"attr": {"uid": 0}, "ops": ["read"]}"#,
            "rule 1: ops: attr does not apply to read (only to lookup, getattr",
        ),
        (
            r#"{"corrupt": "flip"}"#,
            "rule 1: corrupt: unknown variant `flip`",
        ),
        (
            r#"{"corrupt": {"mode": "zeros", "max_bytes": 0}}"#,
            "rule 1: corrupt: max_bytes must be at least 1",
        ),
        (
            r#"{"corrupt": "zeros", "ops": ["stat"]}"#,
            "rule 1: ops: corrupt does not apply to getattr (only to read, write)",
        ),
        (
            r#"{"short": {"bytes": 1}, "ops": ["open"]}"#,
            "rule 1: ops: short does not apply to open, create",
        ),
        (
            r#"{"short": {"fraction": 1.5}}"#,
            "rule 1: short: fraction must be more than 0 and less than 1",
        ),
        (
            r#"{"short": {"fraction": 0}}"#,
            "rule 1: short: fraction must be more than 0",
        ),
        (
            r#"{"short": {"bytes": 0}}"#,
            "rule 1: short: bytes must be at least 1",
        ),
        (
            r#"{"short": {}}"#,
            "rule 1: short: give exactly one of bytes or fraction",
        ),
        (
            r#"{"short": {"bytes": 1, "fraction": 0.5}}"#,
            "rule 1: short: give exactly one",
        ),
        (
            r#"{"full": true, "ops": ["read"]}"#,
            "rule 1: ops: full does not apply to read",
        ),
    ];
    for got in expect_errors(cases, rule_error) {
        assert!(!got.contains("line 1 column"), "no JSON positions: {got}");
    }
}

#[test]
fn spec_level_errors() {
    assert!(error(r#"{"rulez": []}"#).contains("unknown field `rulez`"));
    assert!(error(r#"{"rules": [], "duration": "soon"}"#).contains("duration: invalid duration"));
    assert!(matches!(
        Spec::from_json("{\"rules\": ["),
        Err(crate::Error::SpecJson(_))
    ));
    assert!(matches!(
        Spec::from_json(r#"{"rules": [{"errno": "EIOO"}]}"#),
        Err(crate::Error::SpecInvalid(_))
    ));
    assert_eq!(
        error(r#"{"rules": [{"errno": "EIOO"}]}"#),
        r#"invalid spec: rule 0: errno: unknown errno "EIOO""#
    );
    // A spec built in code is checked when compiled.
    let bad = Spec {
        rules: vec![RuleSpec::default()],
        ..Spec::default()
    };
    assert!(bad.validate().is_err());
    let e = RuleSet::new(bad).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("invalid spec: rule 0: no action: give one of errno, latency, attr, corrupt, short, full, crash".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

#[test]
fn empty_rules_pass_everything() {
    let set = RuleSet::empty();
    assert!(set.is_empty());
    assert!(set.evaluate(&call(Op::Read, "a")).is_pass());
    assert!(!set.uses_paths());
    assert!(!set.may_touch_data(Path::new("a")));
    assert!(!set.may_touch_meta(Path::new("a")));
    assert!(set.stats().is_empty());
}

#[test]
fn errno_on_its_ops_only() {
    let set = rules(r#"{"rules": [{"ops": ["write", "stat"], "errno": "EIO"}]}"#);
    assert_eq!(set.evaluate(&call(Op::Write, "a")).errno, Some(libc::EIO));
    assert_eq!(set.evaluate(&call(Op::Getattr, "a")).errno, Some(libc::EIO));
    assert!(set.evaluate(&call(Op::Read, "a")).is_pass());
    assert_eq!(
        set.stats(),
        [RuleStats {
            matched: 2,
            injected: 2
        }]
    );
}

#[test]
fn default_ops_follow_the_action() {
    let set = rules(
        r#"{"rules": [{"errno": "EIO", "glob": "e"}, {"attr": {"uid": 0}, "glob": "a"},
                      {"corrupt": "zeros", "glob": "c"}, {"full": true, "glob": "f"}]}"#,
    );
    for op in Op::ALL {
        assert_eq!(
            set.evaluate(&call(op, "e")).errno,
            Some(libc::EIO),
            "{op:?}"
        );
        let attr = set.evaluate(&call(op, "a")).attr.is_some();
        assert_eq!(attr, spec::ATTR_OPS.contains(op), "{op:?}");
        let data = set.evaluate(&call(op, "c")).data.is_some();
        assert_eq!(data, matches!(op, Op::Read | Op::Write), "{op:?}");
        let v = set.evaluate(&call(op, "f"));
        assert_eq!(v.full, spec::FULL_OPS.contains(op), "{op:?}");
        assert_eq!(v.errno.is_some(), spec::ENOSPC_OPS.contains(op), "{op:?}");
    }
}

#[test]
fn percent_is_statistical_and_reproducible() {
    let run = |seed: u64| {
        let set = rules(&format!(
            r#"{{"seed": {seed}, "rules": [{{"percent": 50, "errno": "EIO"}}]}}"#
        ));
        let seq: Vec<bool> = (0..10_000)
            .map(|_| set.evaluate(&call(Op::Read, "")).errno.is_some())
            .collect();
        (seq, set.stats()[0])
    };
    let (a, stats) = run(7);
    let hits = a.iter().filter(|&&x| x).count();
    assert!((4_700..=5_300).contains(&hits), "{hits} of 10000 at 50%");
    assert_eq!(
        stats,
        RuleStats {
            matched: 10_000,
            injected: hits as u64
        }
    );
    let (b, _) = run(7);
    assert_eq!(a, b, "same seed, same sequence");
    let (c, _) = run(8);
    assert_ne!(a, c, "another seed, another sequence");

    let rate = |p: &str| {
        let set = rules(&format!(
            r#"{{"seed": 1, "rules": [{{"percent": {p}, "errno": "EIO"}}]}}"#
        ));
        (0..20_000)
            .filter(|_| set.evaluate(&call(Op::Read, "")).errno.is_some())
            .count()
    };
    assert_eq!(rate("0"), 0);
    assert_eq!(rate("100"), 20_000);
    let small = rate("2.5");
    assert!((350..=650).contains(&small), "{small} of 20000 at 2.5%");
}

#[test]
fn unseeded_sets_pick_and_record_a_seed() {
    let a = rules(r#"{"rules": [{"percent": 50, "errno": "EIO"}]}"#);
    let b = rules(r#"{"rules": [{"percent": 50, "errno": "EIO"}]}"#);
    assert_eq!(a.spec().seed, Some(a.seed()));
    assert_ne!(a.seed(), b.seed());
    // Rebuilding from the recorded spec reproduces the sequence.
    let c = RuleSet::new(a.spec().clone()).expect("rebuild");
    for _ in 0..500 {
        assert_eq!(
            a.evaluate(&call(Op::Read, "")).errno,
            c.evaluate(&call(Op::Read, "")).errno
        );
    }
}

#[test]
fn after_every_times() {
    // 1-based request numbers that failed.
    let idx = |rule: &str, n: usize| -> Vec<usize> {
        let set = rules(&format!(r#"{{"rules": [{rule}]}}"#));
        (1..=n)
            .filter(|_| set.evaluate(&call(Op::Write, "")).errno.is_some())
            .collect()
    };
    assert_eq!(idx(r#"{"errno": "EIO", "after": 3}"#, 6), [4, 5, 6]);
    assert_eq!(idx(r#"{"errno": "EIO", "every": 3}"#, 10), [3, 6, 9]);
    assert_eq!(idx(r#"{"errno": "EIO", "times": 2}"#, 10), [1, 2]);
    assert_eq!(
        idx(
            r#"{"errno": "EIO", "after": 2, "every": 2, "times": 2}"#,
            20
        ),
        [4, 6]
    );
    assert_eq!(
        idx(r#"{"errno": "EIO", "times": 0}"#, 5),
        Vec::<usize>::new()
    );
    let set = rules(r#"{"rules": [{"errno": "EIO", "after": 1, "every": 2, "times": 1}]}"#);
    for _ in 0..10 {
        set.evaluate(&call(Op::Read, ""));
    }
    assert_eq!(
        set.stats(),
        [RuleStats {
            matched: 10,
            injected: 1
        }]
    );
}

#[test]
fn weighted_errno_distribution() {
    let set = rules(r#"{"seed": 3, "rules": [{"errno": {"EIO": 3, "ENOSPC": 1}}]}"#);
    let n = 20_000;
    let eio = (0..n)
        .filter(|_| set.evaluate(&call(Op::Write, "")).errno == Some(libc::EIO))
        .count();
    assert!((14_400..=15_600).contains(&eio), "{eio} EIO of {n} at 3:1");
    let set = rules(r#"{"seed": 3, "rules": [{"errno": ["EIO", "ENOSPC", "EROFS"]}]}"#);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30_000 {
        *counts
            .entry(set.evaluate(&call(Op::Write, "")).errno)
            .or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3);
    for (e, c) in counts {
        assert!((9_400..=10_600).contains(&c), "{e:?}: {c}");
    }
}

#[test]
fn glob_semantics() {
    let set = rules(
        r#"{"rules": [{"glob": "*.db", "errno": "EIO"}, {"glob": "data/*.log", "errno": "EROFS"},
                      {"glob": "**/wal/*", "errno": "EPERM"}]}"#,
    );
    let e = |p: &str| set.evaluate(&call(Op::Read, p)).errno;
    assert!(set.uses_paths());
    assert_eq!(e("x.db"), Some(libc::EIO));
    assert_eq!(
        e("a/b/c/x.db"),
        Some(libc::EIO),
        "a name glob matches in any directory"
    );
    assert_eq!(e("x.db/child"), None, "it matches the file's own name only");
    assert_eq!(e("x.dbx"), None);
    assert_eq!(e(""), None, "the root has no name");
    assert_eq!(e("data/a.log"), Some(libc::EROFS));
    assert_eq!(e("data/sub/a.log"), None, "* does not cross /");
    assert_eq!(
        e("other/data/a.log"),
        None,
        "a path glob matches the whole relative path"
    );
    assert_eq!(e("a.log"), None);
    assert_eq!(e("wal/1"), Some(libc::EPERM));
    assert_eq!(e("x/y/wal/1"), Some(libc::EPERM));
}

#[test]
fn uid_and_pid_selectors() {
    let set =
        rules(r#"{"rules": [{"uid": [0, 1000], "errno": "EIO"}, {"uid": 5, "errno": "EPERM"}]}"#);
    let mut c = call(Op::Read, "");
    assert_eq!(set.evaluate(&c).errno, Some(libc::EIO));
    c.uid = 5;
    assert_eq!(set.evaluate(&c).errno, Some(libc::EPERM));
    c.uid = 6;
    assert_eq!(set.evaluate(&c).errno, None);

    let me = std::process::id();
    let set = rules(&format!(
        r#"{{"rules": [{{"pid": {me}, "errno": "EIO"}}]}}"#
    ));
    let mut c = call(Op::Read, "");
    c.pid = me;
    assert_eq!(set.evaluate(&c).errno, Some(libc::EIO));
    // Another thread of this process is this process too.
    c.pid = u32::try_from(nix::unistd::gettid().as_raw()).expect("a tid is positive");
    assert_eq!(set.evaluate(&c).errno, Some(libc::EIO));
    c.pid = 1;
    assert_eq!(set.evaluate(&c).errno, None);
    c.pid = 0;
    assert_eq!(set.evaluate(&c).errno, None);
}

#[test]
fn comm_matches_this_process() {
    let raw = std::fs::read_to_string("/proc/self/comm").expect("comm");
    let process_name = raw.trim_end_matches('\n').to_owned();
    let thread_name = std::fs::read_to_string("/proc/thread-self/comm").expect("thread comm");
    let thread_name = thread_name.trim_end_matches('\n').to_owned();
    let tid = u32::try_from(nix::unistd::gettid().as_raw()).expect("a tid is positive");
    for name in [&process_name, &thread_name] {
        let set = rules(&format!(
            r#"{{"rules": [{{"comm": {name:?}, "errno": "EIO"}}]}}"#
        ));
        let mut c = call(Op::Read, "");
        c.pid = tid;
        assert_eq!(set.evaluate(&c).errno, Some(libc::EIO), "comm {name}");
        c.pid = 1; // init is not us
        assert_eq!(set.evaluate(&c).errno, None);
    }
    let set = rules(r#"{"rules": [{"comm": ["nope", "neither"], "errno": "EIO"}]}"#);
    let mut c = call(Op::Read, "");
    c.pid = tid;
    assert_eq!(set.evaluate(&c).errno, None);
    assert_eq!(set.stats()[0].matched, 0);
}

#[test]
fn several_rules_combine() {
    let set = rules(
        r#"{"rules": [
            {"latency": "10ms"},
            {"latency": {"delay": "5ms", "jitter": "0s"}},
            {"errno": "EIO", "ops": ["write"]},
            {"errno": "EROFS", "ops": ["write"]},
            {"corrupt": "zeros"},
            {"short": {"bytes": 1}}
        ]}"#,
    );
    let v = set.evaluate(&call(Op::Write, ""));
    assert_eq!(v.delay, Some(Duration::from_millis(15)), "delays add up");
    assert_eq!(v.errno, Some(libc::EIO), "the first errno wins");
    assert_eq!(v.data, None, "a failing request gets no data change");
    let v = set.evaluate(&call(Op::Read, ""));
    assert_eq!(v.errno, None);
    assert_eq!(v.data, Some(DataFault::Corrupt), "the first data rule wins");
    let stats = set.stats();
    let m = |i: usize| (stats[i].matched, stats[i].injected);
    assert_eq!(m(0), (2, 2));
    assert_eq!(m(2), (1, 1));
    assert_eq!(
        m(3),
        (1, 0),
        "a later errno rule matched but did not inject"
    );
    assert_eq!(m(4), (2, 1), "corrupt was moot on the failed write");
    assert_eq!(m(5), (2, 0));

    let set = rules(
        r#"{"rules": [{"attr": {"perm": "0600", "uid": 1}}, {"attr": {"uid": 2, "size": 7}}]}"#,
    );
    let a = set.evaluate(&call(Op::Getattr, "")).attr.expect("attr");
    assert_eq!((a.perm, a.uid, a.size), (Some(0o600), Some(2), Some(7)));

    // An errno rule later in the spec still suppresses an earlier attr rule.
    let set = rules(r#"{"rules": [{"attr": {"uid": 1}}, {"errno": "ENOENT", "ops": ["lookup"]}]}"#);
    let v = set.evaluate(&call(Op::Lookup, ""));
    assert_eq!((v.errno, v.attr), (Some(libc::ENOENT), None));
    assert_eq!(
        set.stats()[0],
        RuleStats {
            matched: 1,
            injected: 0
        }
    );
}

#[test]
fn latency_with_jitter() {
    let set = rules(r#"{"seed": 1, "rules": [{"latency": {"delay": "100ms", "jitter": "50ms"}}]}"#);
    let delays: Vec<Duration> = (0..2000)
        .filter_map(|_| set.evaluate(&call(Op::Read, "")).delay)
        .collect();
    assert_eq!(delays.len(), 2000);
    assert!(
        delays
            .iter()
            .all(|d| (Duration::from_millis(50)..=Duration::from_millis(150)).contains(d))
    );
    assert!(delays.iter().any(|d| *d < Duration::from_millis(60)));
    assert!(delays.iter().any(|d| *d > Duration::from_millis(140)));
}

#[test]
fn full_disk() {
    let set = rules(r#"{"rules": [{"full": true}]}"#);
    let v = set.evaluate(&call(Op::Write, ""));
    assert_eq!((v.errno, v.full), (Some(libc::ENOSPC), true));
    let v = set.evaluate(&call(Op::Statfs, ""));
    assert_eq!((v.errno, v.full), (None, true));
    assert!(set.evaluate(&call(Op::Read, "")).is_pass());
    assert!(set.evaluate(&call(Op::Unlink, "")).is_pass());
    for op in [
        Op::Create,
        Op::Mknod,
        Op::Mkdir,
        Op::Symlink,
        Op::Link,
        Op::Fallocate,
        Op::Setxattr,
    ] {
        assert_eq!(
            set.evaluate(&call(op, "")).errno,
            Some(libc::ENOSPC),
            "{op:?}"
        );
    }
    // `statfs` alone: report no space but let writes through.
    let set = rules(r#"{"rules": [{"full": true, "ops": ["statfs"]}]}"#);
    assert!(set.evaluate(&call(Op::Write, "")).is_pass());
    assert!(set.evaluate(&call(Op::Statfs, "")).full);
}

#[test]
fn short_transfers() {
    let set = rules(r#"{"rules": [{"short": {"bytes": 100}, "ops": ["read"]}]}"#);
    let v = set.evaluate(&call(Op::Read, ""));
    assert_eq!(v.data, Some(DataFault::Short(100)));
    assert_eq!(v.short_len(4096), 100);
    assert_eq!(v.short_len(100), 99, "always fewer than asked");
    assert_eq!(v.short_len(2), 1);
    assert_eq!(
        v.short_len(1),
        1,
        "one byte cannot be shortened (0 would be EOF)"
    );
    assert_eq!(v.short_len(0), 0);
    assert!(set.evaluate(&call(Op::Write, "")).is_pass());

    let set = rules(r#"{"rules": [{"short": {"fraction": 0.5}}]}"#);
    let v = set.evaluate(&call(Op::Write, ""));
    assert_eq!(v.data, Some(DataFault::Short(usize::MAX)));
    assert_eq!(v.short_len(4096), 2048);
    assert_eq!(v.short_len(3), 1);
    let set = rules(r#"{"rules": [{"short": {"fraction": 0.01}}]}"#);
    assert_eq!(
        set.evaluate(&call(Op::Read, "")).short_len(10),
        1,
        "at least one byte"
    );
    assert_eq!(Verdict::default().short_len(10), 10);
}

#[test]
fn corrupt_through_the_verdict() {
    let orig: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let damage = |json: &str| -> Vec<Vec<u8>> {
        let set = rules(json);
        (0..5)
            .map(|_| {
                let v = set.evaluate(&call(Op::Read, ""));
                assert_eq!(v.data, Some(DataFault::Corrupt));
                let mut b = orig.clone();
                v.apply_data(&mut b);
                b
            })
            .collect()
    };
    let changed = |b: &[u8]| b.iter().zip(&orig).filter(|(x, y)| x != y).count();
    let flips = damage(r#"{"seed": 9, "rules": [{"corrupt": "bitflip"}]}"#);
    assert!(flips.iter().all(|b| changed(b) == 1));
    assert_ne!(flips[0], flips[1], "each request has its own stream");
    assert_eq!(
        flips,
        damage(r#"{"seed": 9, "rules": [{"corrupt": "bitflip"}]}"#)
    );
    let flips =
        damage(r#"{"seed": 9, "rules": [{"corrupt": {"mode": "bitflip", "max_bytes": 5}}]}"#);
    assert!(flips.iter().all(|b| changed(b) == 5));
    let zeros = damage(r#"{"rules": [{"corrupt": "zeros"}]}"#);
    assert!(zeros.iter().all(|b| b.iter().all(|&x| x == 0)));
    let random = damage(r#"{"rules": [{"corrupt": {"mode": "random", "max_bytes": 64}}]}"#);
    assert!(random.iter().all(|b| changed(b) == 64));
    // Limited by times.
    let set = rules(r#"{"rules": [{"corrupt": "random", "times": 2}]}"#);
    let n = (0..10)
        .filter(|_| set.evaluate(&call(Op::Read, "")).data.is_some())
        .count();
    assert_eq!(n, 2);
    // Without a corrupt fault, apply_data leaves the buffer alone.
    let mut b = orig.clone();
    Verdict::default().apply_data(&mut b);
    assert_eq!(b, orig);
}

#[test]
fn may_touch() {
    let set = rules(
        r#"{"rules": [{"glob": "*.db", "ops": ["write"], "errno": "EIO"},
                      {"glob": "meta/*", "ops": ["stat"], "errno": "EIO"},
                      {"glob": "*.attr", "attr": {"uid": 0}},
                      {"glob": "*.sync", "ops": ["fsync", "flush"], "latency": "1s"}]}"#,
    );
    let data = |p: &str| set.may_touch_data(Path::new(p));
    let meta = |p: &str| set.may_touch_meta(Path::new(p));
    assert!(data("a.db") && data("x/a.db"));
    assert!(!data("a.txt") && !data("meta/a") && !data("a.attr") && !data("a.sync"));
    assert!(meta("meta/a") && meta("a.attr"));
    assert!(!meta("a.db") && !meta("a.sync") && !meta("a.txt"));
    // No glob: everything; pid/percent are ignored.
    let set = rules(r#"{"rules": [{"errno": "EIO", "percent": 0, "pid": 1}]}"#);
    assert!(set.may_touch_data(Path::new("any")) && set.may_touch_meta(Path::new("any")));
    assert!(!set.uses_paths());
    let set = rules(r#"{"rules": [{"corrupt": "zeros"}]}"#);
    assert!(set.may_touch_data(Path::new("any")) && !set.may_touch_meta(Path::new("any")));
}

#[test]
fn concurrent_evaluation_respects_times() {
    let set = std::sync::Arc::new(rules(r#"{"rules": [{"errno": "EIO", "times": 100}]}"#));
    let hits: usize = (0..4)
        .map(|_| {
            let set = set.clone();
            std::thread::spawn(move || {
                (0..5000)
                    .filter(|_| set.evaluate(&call(Op::Read, "")).errno.is_some())
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .sum();
    assert_eq!(hits, 100);
    assert_eq!(
        set.stats(),
        [RuleStats {
            matched: 20_000,
            injected: 100
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Shorthand.

fn shorthand_error(s: &str) -> String {
    match parse_shorthand(&args(s)) {
        Ok(r) => panic!("{s} parsed as {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shorthand_equals_json() {
    let pairs: &[(&str, &str)] = &[
        ("--errno EIO", r#"{"errno": "EIO"}"#),
        ("--errno EIO,ENOSPC", r#"{"errno": ["EIO", "ENOSPC"]}"#),
        (
            "--errno EIO:3,ENOSPC:1",
            r#"{"errno": {"EIO": 3, "ENOSPC": 1}}"#,
        ),
        (
            "--errno EIO:3,ENOSPC",
            r#"{"errno": {"EIO": 3, "ENOSPC": 1}}"#,
        ),
        ("--latency 200ms", r#"{"latency": "200ms"}"#),
        (
            "--latency 200ms~50ms",
            r#"{"latency": {"delay": "200ms", "jitter": "50ms"}}"#,
        ),
        (
            "--attr perm=0000,uid=0,mtime=2024-01-01T00:00:00Z,kind=dir,size=12",
            r#"{"attr": {"perm": "0000", "uid": 0, "mtime": 1704067200, "kind": "dir", "size": 12}}"#,
        ),
        ("--corrupt bitflip", r#"{"corrupt": "bitflip"}"#),
        (
            "--corrupt bitflip:4",
            r#"{"corrupt": {"mode": "bitflip", "max_bytes": 4}}"#,
        ),
        ("--short 10", r#"{"short": {"bytes": 10}}"#),
        ("--short 0.5", r#"{"short": {"fraction": 0.5}}"#),
        ("--short 25%", r#"{"short": {"fraction": 0.25}}"#),
        ("--full", r#"{"full": true}"#),
        (
            "--errno EIO --percent 50 --ops read,write --glob *.db --pid 1,2 --comm pg --uid 0 --after 1 --every 2 --times 3",
            r#"{"errno": "EIO", "percent": 50, "ops": ["read", "write"], "glob": "*.db",
                "pid": [1, 2], "comm": "pg", "uid": 0, "after": 1, "every": 2, "times": 3}"#,
        ),
        (
            "--errno=EIO --percent=12.5 --glob=data/*",
            r#"{"errno": "EIO", "percent": 12.5, "glob": "data/*"}"#,
        ),
    ];
    for (flags, json) in pairs {
        let got = parse_shorthand(&args(flags)).unwrap_or_else(|e| panic!("{flags}: {e}"));
        let want = spec(&format!(r#"{{"rules": [{json}]}}"#));
        assert_eq!(got.rules, want.rules, "{flags}");
        assert_eq!(got.seed, None);
    }
}

#[test]
fn shorthand_several_rules_and_seed() {
    let s = parse_shorthand(&args(
        "--seed 42 --errno EIO --percent 50 --latency 1s --ops fsync --full",
    ))
    .expect("parse");
    assert_eq!(s.seed, Some(42));
    assert_eq!(s.rules.len(), 3);
    assert!(s.rules[0].errno.is_some() && s.rules[0].percent.is_some());
    assert!(s.rules[1].latency.is_some() && s.rules[1].ops.is_some());
    assert_eq!(s.rules[2].full, Some(true));
    let from_flags = Spec {
        seed: s.seed,
        rules: s.rules,
        ..Spec::default()
    };
    let text = serde_json::to_string(&from_flags).expect("serialize");
    assert_eq!(spec(&text), from_flags);
    assert!(RuleSet::new(from_flags).is_ok());
}

/// `crash_mode` alone is a whole spec (and `--crash-mode` a whole command line); it makes every
/// file one the rules may touch (no passthrough: its writes must reach the undo log).
#[test]
fn crash_mode_needs_no_rule_and_touches_every_file() {
    let j = spec(r#"{"crash_mode": true}"#);
    assert!(j.crash_mode && j.rules.is_empty());
    let set = RuleSet::new(j).expect("crash mode alone compiles");
    assert!(set.crash_mode());
    assert!(set.may_touch_data(std::path::Path::new("any/file")));
    let s = parse_shorthand(&args("--crash-mode")).expect("parse");
    assert!(s.crash_mode && s.rules.is_empty());
    let e = parse_shorthand(&args("--crash-mode=1")).expect_err("a value is refused");
    assert!(e.to_string().contains("--crash-mode takes no value"), "{e}");
    let off = spec(r#"{"rules": [{"errno": "EIO"}]}"#);
    let text = serde_json::to_string(&off).expect("serialize");
    assert!(!text.contains("crash_mode"), "{text}");
}

#[test]
fn low_latency_from_flags_and_json() {
    let s = parse_shorthand(&args("--errno EIO --low-latency")).expect("parse");
    assert!(s.low_latency);
    assert_eq!(s.rules.len(), 1);
    assert!(
        !parse_shorthand(&args("--errno EIO"))
            .expect("parse")
            .low_latency
    );
    let j = spec(r#"{"low_latency": true, "rules": [{"errno": "EIO"}]}"#);
    assert!(j.low_latency);
    // Off is the default and is not written back out.
    let off = spec(r#"{"rules": [{"errno": "EIO"}]}"#);
    assert!(!off.low_latency);
    let text = serde_json::to_string(&off).expect("serialize");
    assert!(!text.contains("low_latency"), "{text}");
    let text = serde_json::to_string(&j).expect("serialize");
    assert_eq!(spec(&text), j);
}

#[test]
fn shorthand_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "--percent 50 --errno EIO",
            "--percent must follow an action flag (--errno, --latency, --attr, --corrupt, --short, --full, --crash)",
        ),
        ("--errno EIO --frob 1", "unknown rule flag --frob"),
        ("--errno EIO stray", "unexpected argument \"stray\""),
        ("--errno", "--errno needs a value"),
        ("--full=yes", "--full takes no value"),
        ("--low-latency=1", "--low-latency takes no value"),
        ("--errno EIOO", "--errno EIOO: unknown errno \"EIOO\""),
        (
            "--errno EIO --percent 150",
            "--errno EIO --percent: must be between 0 and 100, got 150",
        ),
        (
            "--errno EIO --percent lots",
            "--percent: \"lots\" is not a number",
        ),
        (
            "--errno EIO --ops read,wrtie",
            "--errno EIO --ops: unknown op \"wrtie\"",
        ),
        (
            "--corrupt bitflip --ops stat",
            "--corrupt bitflip --ops: corrupt does not apply to getattr",
        ),
        (
            "--errno EIO --percent 5 --percent 6",
            "--percent given twice for the same rule",
        ),
        (
            "--errno EIO --pid abc",
            "--pid: \"abc\" is not a whole number",
        ),
        (
            "--errno EIO --times -1",
            "--times: \"-1\" is not a whole number",
        ),
        (
            "--errno EIO --every 0",
            "--errno EIO --every: must be at least 1",
        ),
        ("--attr perm", "--attr: \"perm\" is not FIELD=VALUE"),
        (
            "--attr colour=red",
            "--attr colour=red: unknown field `colour`",
        ),
        (
            "--latency soon",
            "--latency soon: invalid duration \"soon\"",
        ),
        (
            "--corrupt bitflip:x",
            "--corrupt: \"x\" is not a whole number",
        ),
        (
            "--seed x --errno EIO",
            "--seed: \"x\" is not a whole number",
        ),
        ("--seed 1 --seed 2", "--seed given twice"),
        (
            "--errno EIO --comm waytoolongprocessname",
            "--comm: \"waytoolongprocessname\" is longer than 15 bytes",
        ),
    ];
    for got in expect_errors(cases, shorthand_error) {
        assert!(got.starts_with("invalid rule flags: "), "{got}");
    }
    assert_eq!(parse_shorthand(&[]).map(|s| s.rules.len()).ok(), Some(0));
}

#[test]
fn shorthand_flag_recognition() {
    assert!(is_shorthand_flag("--errno"));
    assert!(is_shorthand_flag("--percent=5"));
    assert!(is_shorthand_flag("--seed"));
    assert!(is_shorthand_flag("--full"));
    assert!(is_shorthand_flag("--low-latency"));
    assert!(!is_shorthand_flag("--path"));
    assert!(!is_shorthand_flag("errno"));
}

#[test]
fn rule_sets_are_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleSet>();
    assert_send_sync::<Verdict>();
}

// ---------------------------------------------------------------------------------------------
// Inputs that mean nothing (issue 11): refused with one line naming the field.

fn assert_one_line(e: &str) {
    assert_eq!(e.lines().count(), 1, "{e:?}");
    assert!(e.len() < 200, "a long message: {e}");
}

#[test]
fn a_spec_is_an_object() {
    for (json, kind) in [
        ("[]", "an array"),
        ("[[], null]", "an array"),
        ("null", "null"),
        ("42", "a number"),
        (r#""rules""#, "a string"),
    ] {
        let e = error(json);
        assert_one_line(&e);
        assert_eq!(
            e,
            format!(
                r#"invalid spec: a spec is a JSON object such as {{"rules": [{{"errno": "EIO"}}]}}, not {kind}"#
            )
        );
    }
    // Serde would read rules and attrs from arrays positionally.
    assert_eq!(
        error(r#"{"rules": [{"errno": "EIO"}, ["EIO"]]}"#),
        r#"invalid spec: rule 1: a rule is a JSON object such as {"errno": "EIO"}, not an array"#
    );
    assert_eq!(
        error(r#"{"rules": [{"attr": ["0644"]}]}"#),
        r#"invalid spec: rule 0: attr: an object such as {"perm": "0644"}, not an array"#
    );
}

#[test]
fn an_injection_needs_a_rule() {
    let want = "invalid spec: rules: at least one rule is needed (to remove every fault, recover the injection; crash_mode alone needs none)";
    assert_eq!(error(r#"{"rules": []}"#), want);
    assert_eq!(error(r#"{"path": "/data"}"#), want);
    // Built in code: refused when compiled; the set without rules is RuleSet::empty().
    let e = RuleSet::new(Spec::default())
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(e, Err(want.to_owned()));
}

#[test]
fn latency_is_bounded() {
    let e = error(r#"{"rules": [{"latency": "1000000h"}]}"#);
    assert_eq!(
        e,
        "invalid spec: rule 0: latency: the delay is more than 1h, the longest a request may be held"
    );
    assert_eq!(
        rule_error(r#"{"latency": {"delay": "59m", "jitter": "2m"}}"#),
        "invalid spec: rule 1: latency: delay + jitter is more than 1h, the longest a request may be held"
    );
    // Up to the bound is fine, a rule or the sum.
    rules(r#"{"rules": [{"latency": "1h"}]}"#);
    rules(r#"{"rules": [{"latency": {"delay": "30m", "jitter": "10m"}}, {"latency": "20m"}]}"#);
    // The delays of several rules add up on a request they all select.
    let e = error(
        r#"{"rules": [{"latency": {"delay": "30m", "jitter": "10m"}}, {"errno": "EIO"},
                      {"ops": ["read"], "latency": "20m 1s"}]}"#,
    );
    assert_one_line(&e);
    assert!(
        e.starts_with("invalid spec: rules: the latency rules add up to more than 1h"),
        "{e}"
    );
    // Durations overflowing a Duration are invalid durations.
    let e = error(r#"{"rules": [{"latency": {"delay": "500000000000y", "jitter": "1ms"}}]}"#);
    assert_one_line(&e);
    assert!(e.starts_with("invalid spec: rule 0: latency"), "{e}");
    assert_eq!(
        shorthand_error("--latency 1000000h"),
        "invalid rule flags: --latency 1000000h: the delay is more than 1h, the longest a request may be held"
    );
    assert_eq!(
        shorthand_error("--latency 50m~11m"),
        "invalid rule flags: --latency 50m~11m: delay + jitter is more than 1h, the longest a request may be held"
    );
}

#[test]
fn duration_is_positive_and_bounded() {
    let rule = r#""rules": [{"errno": "EIO"}]"#;
    for zero in ["0s", "0ms", "0ns"] {
        assert_eq!(
            error(&format!(r#"{{{rule}, "duration": "{zero}"}}"#)),
            format!(
                r#"invalid spec: duration: "{zero}" is not positive (leave duration out to keep the faults until recovered)"#
            )
        );
    }
    assert_eq!(
        error(&format!(r#"{{{rule}, "duration": "1000000000y"}}"#)),
        r#"invalid spec: duration: "1000000000y" is more than 1year (leave duration out to keep the faults until recovered)"#
    );
    // Too large for a Duration at all (would overflow Instant/SystemTime arithmetic otherwise).
    let e = error(&format!(r#"{{{rule}, "duration": "100000000000000y"}}"#));
    assert_one_line(&e);
    assert!(
        e.starts_with("invalid spec: duration: invalid duration"),
        "{e}"
    );
    assert_eq!(Spec::parse_duration("1y").ok(), Some(MAX_DURATION));
    assert_eq!(
        Spec::parse_duration("90s").ok(),
        Some(Duration::from_secs(90))
    );
    // Built in code: checked when compiled.
    let s = Spec {
        duration: Some("0s".into()),
        ..spec(r#"{"rules": [{"errno": "EIO"}]}"#)
    };
    assert!(RuleSet::new(s).is_err());
}

#[test]
fn numbers_are_bounded_and_echoed_short() {
    assert_eq!(
        rule_error(r#"{"errno": "EIO", "percent": 1e308}"#),
        "invalid spec: rule 1: percent: must be between 0 and 100, got 1e+308"
    );
    assert_eq!(
        rule_error(r#"{"errno": "EIO", "percent": -1e-300}"#),
        "invalid spec: rule 1: percent: must be between 0 and 100, got -1e-300"
    );
    assert_eq!(
        rule_error(r#"{"short": {"fraction": 1e308}}"#),
        "invalid spec: rule 1: short: fraction must be more than 0 and less than 1, got 1e+308"
    );
    assert_eq!(
        shorthand_error("--errno EIO --percent 1e308"),
        "invalid rule flags: --errno EIO --percent: must be between 0 and 100, got 1e+308"
    );
    for flag in ["--errno EIO --percent inf", "--errno EIO --percent NaN"] {
        assert_one_line(&shorthand_error(flag));
    }
    // Infinity and NaN are not JSON; a number too large for f64 is a JSON error.
    for json in [
        r#"{"rules": [{"errno": "EIO", "percent": 1e400}]}"#,
        r#"{"rules": [{"errno": "EIO", "percent": NaN}]}"#,
    ] {
        assert!(
            matches!(Spec::from_json(json), Err(crate::Error::SpecJson(_))),
            "{json}"
        );
    }
    // Counts are whole numbers: floats, negatives and more than 2^64 - 1 are refused short.
    for field in ["after", "every", "times"] {
        for v in ["1e308", "-1", "1.5", "18446744073709551616"] {
            let e = rule_error(&format!(r#"{{"errno": "EIO", "{field}": {v}}}"#));
            assert_one_line(&e);
            assert!(
                e.starts_with(&format!("invalid spec: rule 1: {field}: ")),
                "{e}"
            );
        }
        // u64::MAX itself means "never" (after) or "no limit in practice" (every, times).
        rules(&format!(
            r#"{{"rules": [{{"errno": "EIO", "{field}": 18446744073709551615}}]}}"#
        ));
    }
    for rule in [
        r#"{"short": {"bytes": 1e308}}"#,
        r#"{"corrupt": {"mode": "zeros", "max_bytes": 1e308}}"#,
        r#"{"attr": {"size": 1e308}}"#,
        r#"{"attr": {"nlink": 4294967296}}"#,
    ] {
        let e = rule_error(rule);
        assert_one_line(&e);
    }
    let e = error(r#"{"seed": 1e308, "rules": [{"errno": "EIO"}]}"#);
    assert_one_line(&e);
    assert!(e.starts_with("invalid spec: seed: "), "{e}");
    // st_size is signed.
    assert_eq!(
        rule_error(r#"{"attr": {"size": 9223372036854775808}}"#),
        "invalid spec: rule 1: attr.size: 9223372036854775808 is more than 9223372036854775807, \
         the largest size a file can have"
    );
    rules(r#"{"rules": [{"attr": {"size": 9223372036854775807}}]}"#);
    // Times: years 0 to 9999.
    for t in [
        "9223372036854775807",
        "-9223372036854775808",
        "253402300800",
    ] {
        let e = rule_error(&format!(r#"{{"attr": {{"mtime": {t}}}}}"#));
        assert_eq!(
            e,
            format!(
                "invalid spec: rule 1: attr.mtime: {t} is outside years 0 to 9999 \
                 (-62167219200 to 253402300799 seconds since the epoch)"
            )
        );
    }
    rules(r#"{"rules": [{"attr": {"atime": -62167219200, "ctime": 253402300799}}]}"#);
    assert!(
        shorthand_error("--attr mtime=9223372036854775807")
            .starts_with("invalid rule flags: --attr mtime=9223372036854775807: "),
    );
    // Accepted values are echoed short too.
    let s = spec(r#"{"rules": [{"errno": "EIO", "percent": 1e-300}]}"#);
    let text = serde_json::to_string(&s).expect("serialize");
    assert!(text.contains(r#""percent":1e-300"#), "{text}");
}

#[test]
fn crash_rule_fires_on_the_selected_request_and_needs_crash_mode() {
    let j = spec(
        r#"{"crash_mode": true, "rules": [{"crash": {}, "ops": ["fsync"], "after": 2},
            {"crash": {"when": "after"}, "glob": "*.wal", "ops": ["write"]}]}"#,
    );
    let set = RuleSet::new(j).expect("compiles");
    assert_eq!(set.evaluate(&call(Op::Write, "a/db")).crash, None);
    assert_eq!(set.evaluate(&call(Op::Fsync, "a/db")).crash, None);
    assert_eq!(set.evaluate(&call(Op::Fsync, "a/db")).crash, None);
    let v = set.evaluate(&call(Op::Fsync, "a/db"));
    assert_eq!(v.crash.map(|c| c.when), Some(CrashWhen::Before));
    assert!(!v.is_pass());
    assert_eq!(
        set.evaluate(&call(Op::Write, "a/x.wal"))
            .crash
            .map(|c| c.when),
        Some(CrashWhen::After)
    );
    let e = Spec::from_json(r#"{"rules": [{"crash": {}}]}"#).expect_err("no crash mode");
    assert!(
        e.to_string().contains("rule 0: crash: needs crash mode"),
        "{e}"
    );
    let e = Spec::from_json(r#"{"crash_mode": true, "rules": [{"crash": {"when": "later"}}]}"#)
        .expect_err("bad when");
    assert!(e.to_string().contains("when"), "{e}");
    let s = parse_shorthand(&args("--crash-mode --crash --ops fsync --after 99")).expect("parse");
    assert_eq!(s.rules.len(), 1);
    assert_eq!(s.rules[0].crash, Some(CrashSpec::default()));
    assert_eq!(s.rules[0].after, Some(99));
    let e = parse_shorthand(&args("--crash=1")).expect_err("a value is refused");
    assert!(e.to_string().contains("--crash takes no value"), "{e}");
}

#[test]
fn crash_rule_carries_torn_reorder_and_seed() {
    let s = Spec::from_json(
        r#"{"crash_mode": true, "rules": [{"ops": ["fsync"], "crash": {"torn": 2, "reorder": true, "seed": 9}}]}"#,
    )
    .expect("spec");
    let set = RuleSet::new(s).expect("rules");
    let v = set.evaluate(&call(Op::Fsync, "a/db"));
    let c = v.crash.expect("fires");
    assert_eq!(
        (c.when, c.torn, c.reorder, c.seed),
        (CrashWhen::Before, 2, true, 9)
    );
    let e = Spec::from_json(r#"{"crash_mode": true, "rules": [{"crash": {"torn": -1}}]}"#)
        .expect_err("negative torn");
    assert!(e.to_string().contains("torn"), "{e}");
}
