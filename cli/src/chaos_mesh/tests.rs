//! The examples of Chaos Mesh's IOChaos documentation (one per action, written out here from
//! its field list, without the pod selector iochaos refuses), and every refusal.

use serde_json::json;

use super::{convert, go_duration};

const HEAD: &str = "apiVersion: chaos-mesh.org/v1alpha1\nkind: IOChaos\nmetadata:\n  name: io-example\n  namespace: chaos-mesh\n";

fn doc(spec: &str) -> String {
    format!("{HEAD}spec:\n{spec}")
}

fn ok(spec: &str) -> serde_json::Value {
    let value = convert(&doc(spec), None).expect("converts");
    // What convert prints is a spec --spec accepts.
    chaosfs::rules::Spec::from_json(&value.to_string()).expect("a valid iochaos spec");
    value
}

fn err(spec: &str) -> String {
    let e = convert(&doc(spec), None).expect_err("refused");
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn latency_example() {
    let spec = ok(
        "  action: latency\n  mode: one\n  volumePath: /var/run/etcd\n  path: /var/run/etcd/**/*\n  delay: '100ms'\n  percent: 50\n  duration: '400s'\n",
    );
    assert_eq!(
        spec,
        json!({ "path": "/var/run/etcd", "duration": "6m 40s",
                "rules": [{ "glob": "**/*", "percent": 50, "latency": "100ms" }] })
    );
}

#[test]
fn fault_example() {
    let spec = ok(
        "  action: fault\n  mode: one\n  volumePath: /var/run/etcd\n  path: /var/run/etcd/**/*\n  errno: 5\n  percent: 50\n  duration: '400s'\n",
    );
    assert_eq!(
        spec["rules"],
        json!([{ "glob": "**/*", "percent": 50, "errno": "EIO" }])
    );
}

#[test]
fn attr_override_example() {
    let spec = ok(
        "  action: attrOverride\n  mode: one\n  volumePath: /var/run/etcd\n  path: /var/run/etcd/**/*\n  attr:\n    perm: 72\n    kind: regularFile\n    mtime:\n      sec: 1700000000\n      nsec: 0\n  percent: 10\n  duration: '400s'\n",
    );
    assert_eq!(
        spec["rules"],
        json!([{ "glob": "**/*", "percent": 10,
                 "attr": { "perm": 72, "kind": "file", "mtime": 1_700_000_000 } }])
    );
}

#[test]
fn mistake_example() {
    let spec = ok(
        "  action: mistake\n  mode: one\n  volumePath: /var/run/etcd\n  path: /var/run/etcd/**/*\n  mistake:\n    filling: zero\n    maxOccurrences: 1\n    maxLength: 10\n  methods:\n    - READ\n    - WRITE\n  percent: 10\n  duration: '400s'\n",
    );
    assert_eq!(
        spec["rules"],
        json!([{ "glob": "**/*", "ops": ["read", "write"], "percent": 10,
                 "corrupt": { "mode": "zeros", "max_bytes": 10 } }])
    );
}

#[test]
fn defaults_and_methods() {
    // No path, percent or methods: every file, every request, every op.
    let spec = ok("  action: fault\n  volumePath: /data/\n  errno: 28\n");
    assert_eq!(
        spec,
        json!({ "path": "/data/", "rules": [{ "errno": "ENOSPC" }] })
    );
    // Every method Chaos Mesh names that ChaosFS has, in any case.
    let spec = ok(
        "  action: latency\n  volumePath: /data\n  delay: 1.5ms\n  methods: [lookup, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink, rename, link, open, read, write, flush, release, fsync, opendir, readdir, releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr, access, Create]\n",
    );
    assert_eq!(spec["rules"][0]["ops"].as_array().map(Vec::len), Some(28));
    assert_eq!(spec["rules"][0]["latency"], "1ms 500us");
}

#[test]
fn refusals_name_the_field() {
    let base = "  volumePath: /data\n";
    for (spec, field) in [
        (
            "  action: fault\n  errno: 5\n  selector:\n    labelSelectors:\n      app: etcd\n",
            "spec.selector",
        ),
        (
            "  action: fault\n  errno: 5\n  containerNames: [etcd]\n",
            "spec.containerNames",
        ),
        ("  action: fault\n  errno: 5\n  mode: fixed\n", "spec.mode"),
        (
            "  action: fault\n  errno: 5\n  mode: one\n  value: '2'\n",
            "spec.value",
        ),
        (
            "  action: fault\n  errno: 5\n  remoteCluster: c1\n",
            "remoteCluster",
        ),
        (
            "  action: fault\n  errno: 5\n  methods: [getlk]\n",
            "\"getlk\" has no iochaos equivalent",
        ),
        (
            "  action: fault\n  errno: 5\n  methods: [setlk]\n",
            "\"setlk\"",
        ),
        (
            "  action: fault\n  errno: 5\n  methods: [forget]\n",
            "\"forget\"",
        ),
        (
            "  action: fault\n  errno: 5\n  methods: [bmap]\n",
            "\"bmap\"",
        ),
        (
            "  action: fault\n  errno: 5\n  methods: [fallocate]\n",
            "\"fallocate\" is no Chaos Mesh",
        ),
        (
            "  action: fault\n  errno: 5\n  path: /etc/**\n",
            "spec.path",
        ),
        (
            "  action: fault\n  errno: 5\n  percent: 0\n",
            "spec.percent",
        ),
        (
            "  action: fault\n  errno: 5\n  percent: 101\n",
            "spec.percent",
        ),
        ("  action: fault\n", "spec.errno: required"),
        ("  action: fault\n  errno: 9999\n", "spec.errno: 9999"),
        (
            "  action: fault\n  errno: 5\n  delay: 1s\n",
            "spec.delay: only for action latency",
        ),
        ("  action: latency\n", "spec.delay: required"),
        ("  action: latency\n  delay: -1s\n", "spec.delay"),
        ("  action: latency\n  delay: 1d\n", "spec.delay"),
        (
            "  action: latency\n  delay: 1s\n  duration: 0s\n",
            "spec.duration",
        ),
        (
            "  action: attrOverride\n  attr:\n    ino: 7\n",
            "spec.attr.ino",
        ),
        (
            "  action: attrOverride\n  attr:\n    blocks: 7\n",
            "spec.attr.blocks",
        ),
        (
            "  action: attrOverride\n  attr:\n    rdev: 7\n",
            "spec.attr.rdev",
        ),
        (
            "  action: attrOverride\n  attr:\n    atime:\n      sec: 1\n      nsec: 5\n",
            "spec.attr.atime.nsec",
        ),
        (
            "  action: attrOverride\n  attr:\n    kind: door\n",
            "spec.attr.kind",
        ),
        (
            "  action: mistake\n  mistake:\n    filling: zero\n    maxOccurrences: 3\n    maxLength: 1\n",
            "spec.mistake.maxOccurrences",
        ),
        (
            "  action: mistake\n  mistake:\n    filling: ones\n    maxLength: 1\n",
            "spec.mistake.filling",
        ),
        (
            "  action: mistake\n  mistake:\n    filling: zero\n",
            "spec.mistake.maxLength",
        ),
        ("  action: delay\n", "spec.action"),
    ] {
        let e = err(&format!("{base}{spec}"));
        assert!(e.contains(field), "{spec:?}: {e}");
    }
    assert!(err("  action: fault\n  errno: 5\n").contains("spec.volumePath: required"));
    let e = convert(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nspec:\n  action: fault\n  errno: 5\n  volumePath: /d\n",
        None,
    );
    assert!(e.expect_err("refused").contains("kind"));
    let e = convert(
        &format!("{HEAD}spec:\n  action: fault\n  errno: 5\n  volumePath: /d\nextra: 1\n"),
        None,
    );
    let e = e.expect_err("refused");
    assert!(e.contains("extra"), "{e}");
    eprintln!("unknown field: {e}");
}

#[test]
fn container_names_must_name_the_target() {
    let text = doc("  action: fault\n  errno: 5\n  volumePath: /d\n  containerNames: [web, db]\n");
    assert!(convert(&text, Some("db")).is_ok());
    let e = convert(&text, Some("cache")).expect_err("refused");
    assert!(
        e.contains("spec.containerNames") && e.contains("cache"),
        "{e}"
    );
}

#[test]
fn go_durations() {
    let ms = |t: &str| go_duration(t).map(|d| d.as_nanos());
    assert_eq!(ms("300ms"), Ok(300_000_000));
    assert_eq!(ms("1.5h"), Ok(5_400_000_000_000));
    assert_eq!(ms("2h45m"), Ok(9_900_000_000_000));
    assert_eq!(ms("1us"), Ok(1_000));
    assert_eq!(ms("1µs"), Ok(1_000));
    assert_eq!(ms(".5s"), Ok(500_000_000));
    for bad in ["", "5", "1x", "-1s", "0s", "s", ".s", "1.2.3s"] {
        assert!(go_duration(bad).is_err(), "{bad:?}");
    }
}
