//! `iochaos run` end to end: the real binary, a real FUSE mount in a private mount namespace,
//! real commands observing the faults. Needs root and /dev/fuse; fails loudly without them.

use std::path::Path;
use std::process::{Command, Output};

/// A scratch directory of a test that mounts FUSE (it fails without root and /dev/fuse).
fn privileged_tempdir() -> tempfile::TempDir {
    iochaos_testsupport::require_root("it mounts FUSE file systems");
    iochaos_testsupport::require_fuse();
    tempfile::tempdir().expect("tempdir")
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn iochaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iochaos"))
        .args(args)
        .output()
        .expect("spawning iochaos")
}

/// The arguments of `iochaos run --path PATH RULES... -- COMMAND...`.
fn run_args<'a>(path: &'a str, rules: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--path", path];
    args.extend_from_slice(rules);
    args.push("--");
    args.extend_from_slice(command);
    args
}

/// `iochaos run --path PATH RULES... -- COMMAND...`.
fn run(path: &str, rules: &[&str], command: &[&str]) -> Output {
    iochaos(&run_args(path, rules, command))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines of our mountinfo that mention `dir` (the run's mount lives in its own namespace, so
/// nothing may ever show up here).
fn host_mounts_of(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let dir = dir.to_string_lossy();
    info.lines()
        .filter(|l| l.contains(dir.as_ref()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn write_fails_with_the_errno_the_rule_names_and_the_backing_file_is_untouched() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    std::fs::write(dir.path().join("f"), "before\n").expect("seeding");
    let script = format!("cat {d}/f && echo after | tee {d}/f >/dev/null");
    let out = run(
        d,
        &["--errno", "ENOSPC", "--ops", "write"],
        &["sh", "-c", &script],
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        text(&out.stdout),
        "before\n",
        "reads still work; stderr: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the shell should see ENOSPC from write: {stderr}"
    );
    assert_ne!(out.status.code(), Some(0));
    // The open with O_TRUNC succeeded, the write did not: the file is empty on the backing fs.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f")).expect("reading"),
        ""
    );
    assert!(host_mounts_of(dir.path()).is_empty());
}

#[test]
fn exit_status_of_the_command_is_returned() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    let out = run(
        d,
        &["--errno", "EIO", "--ops", "mkdir"],
        &["sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let out = run(d, &["--errno", "EIO"], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = run(d, &["--errno", "EIO"], &["/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("cannot run /nonexistent/cmd"));
}

#[test]
fn the_mount_is_only_visible_to_the_command_and_gone_after() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    let script = format!("grep -c ' {d} .* - fuse.chaosfs ' /proc/self/mountinfo");
    let out = run(
        d,
        &["--latency", "1ms", "--ops", "statfs"],
        &["sh", "-c", &script],
    );
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout).trim(), "1", "stderr: {stderr}");
    assert!(host_mounts_of(dir.path()).is_empty());
}

#[test]
fn bad_input_is_one_line_exit_2_and_nothing_mounted() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    let rules: [(&str, &[&str]); 5] = [
        (d, &["--errno", "EWHAT"]),
        (d, &["--percent", "50"]),
        (d, &["--latency", "soon"]),
        (d, &["--errno", "EIO", "--ops", "wirte"]),
        ("/nonexistent/dir", &["--errno", "EIO"]),
    ];
    let mut cases: Vec<Vec<&str>> = rules
        .iter()
        .map(|(path, rules)| run_args(path, rules, &["true"]))
        .collect();
    // No command.
    cases.push(vec!["run", "--path", d, "--errno", "EIO"]);
    for args in &cases {
        let out = iochaos(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?} should print one line: {stderr}"
        );
        assert!(stderr.starts_with("iochaos: "), "{stderr}");
    }
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"rules":[{"errno":"EIO","colour":"red"}]}"#).expect("writing");
    let out = run(d, &["--spec", utf8(&spec)], &["true"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(host_mounts_of(dir.path()).is_empty());
}

/// Inputs that mean nothing (issue 11) are usage errors found before anything is mounted: one
/// line, exit 2, and the command never starts (it would leave a file behind; ChaosFS is mounted
/// before the command starts).
#[test]
fn meaningless_rules_are_refused_before_anything_is_mounted() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    // Outside DIR, so that without the checks the command would run (not hang on a delay).
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let marker = elsewhere.path().join("ran");
    let touch = format!("touch {}", utf8(&marker));
    let spec = dir.path().join("spec.json");
    let spec_arg = utf8(&spec);
    let cases: &[(Option<&str>, &[&str], &str)] = &[
        (
            None,
            &["--latency", "1000000h"],
            "the delay is more than 1h",
        ),
        (
            None,
            &["--errno", "EIO", "--percent", "1e308"],
            "must be between 0 and 100, got 1e+308",
        ),
        (Some("[]"), &[], "a spec is a JSON object"),
        (
            Some(r#"{"rules":[]}"#),
            &[],
            "rules: at least one rule is needed",
        ),
        (
            Some(r#"{"rules":[{"errno":"EIO"}],"duration":"0s"}"#),
            &[],
            "duration: \"0s\" is not positive",
        ),
        (
            Some(r#"{"rules":[{"errno":"EIO"}],"duration":"1000000000y"}"#),
            &[],
            "duration: \"1000000000y\" is more than 1year",
        ),
        (
            Some(r#"{"rules":[{"latency":"40m"},{"ops":["read"],"latency":"21m"}]}"#),
            &[],
            "the latency rules add up to more than 1h",
        ),
    ];
    for (json, flags, needle) in cases {
        let mut rules = Vec::new();
        if let Some(json) = json {
            std::fs::write(&spec, json).expect("writing the spec");
            rules.extend(["--spec", spec_arg]);
        }
        rules.extend_from_slice(flags);
        let args = run_args(d, &rules, &["sh", "-c", &touch]);
        let out = iochaos(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
        assert!(!marker.exists(), "{args:?}: the command ran");
    }
    assert!(host_mounts_of(dir.path()).is_empty());
}

#[test]
fn duration_removes_the_faults_while_the_command_goes_on() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"duration":"300ms","rules":[{"ops":["write"],"errno":"EIO"}]}"#,
    )
    .expect("writing");
    // Poll until a write succeeds (bounded), recording whether one failed first.
    let script = format!(
        "failed=0; i=0; while [ $i -lt 100 ]; do \
           if echo x > {d}/f 2>/dev/null; then echo ok failed=$failed; exit 0; fi; \
           failed=1; i=$((i+1)); sleep 0.05; done; echo never; exit 1"
    );
    let out = run(d, &["--spec", utf8(&spec)], &["sh", "-c", &script]);
    assert_eq!(
        text(&out.stdout).trim(),
        "ok failed=1",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f")).expect("reading"),
        "x\n"
    );
}

/// `--low-latency`: `iochaos run` holds a CPU wake-up latency request (an open
/// /dev/cpu_dma_latency) while the command runs, and only then.
#[test]
fn low_latency_holds_a_cpu_latency_request_while_the_command_runs() {
    let dir = privileged_tempdir();
    let d = utf8(dir.path());
    // The command's parent is `iochaos run` itself.
    let script = "ls -l /proc/$PPID/fd";
    let rules = ["--errno", "EIO", "--ops", "fsync"];
    let with = run(
        d,
        &[&rules[..], &["--low-latency"]].concat(),
        &["sh", "-c", script],
    );
    assert!(with.status.success(), "{}", text(&with.stderr));
    assert!(
        text(&with.stdout).contains("/dev/cpu_dma_latency"),
        "no latency request held: {}",
        text(&with.stdout)
    );
    let without = run(d, &rules, &["sh", "-c", script]);
    assert!(without.status.success(), "{}", text(&without.stderr));
    assert!(
        !text(&without.stdout).contains("/dev/cpu_dma_latency"),
        "a latency request held without --low-latency: {}",
        text(&without.stdout)
    );
}

/// F_GETLK of a whole-file write lock on `path`, from a process outside the run (python3):
/// the type of the lock that would block it (`F_UNLCK` if none).
fn outside_getlk(path: &Path) -> i32 {
    let script = "import fcntl, struct, sys; f = open(sys.argv[1], 'r+'); \
        r = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); \
        print(struct.unpack('hhqqi', r)[0])";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("spawning python3");
    let t = iochaos_testsupport::expect_success(&out, "F_GETLK from outside");
    t.trim().parse().expect("a lock type")
}

#[test]
fn a_lock_the_command_holds_is_seen_from_outside_the_run() {
    use std::io::{BufRead, BufReader};
    let dir = privileged_tempdir();
    iochaos_testsupport::require_tools(&["python3"]);
    let db = dir.path().join("db");
    std::fs::write(&db, "data").expect("seeding");
    // The command takes a write lock through ChaosFS, says so, and holds it until its stdin
    // closes.
    let script = format!(
        "import fcntl, sys; f = open({:?}, 'r+'); fcntl.lockf(f, fcntl.LOCK_EX); \
         print('locked', flush=True); sys.stdin.read()",
        utf8(&db)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_iochaos"))
        .args(run_args(
            utf8(dir.path()),
            &["--errno", "EIO", "--ops", "mkdir"],
            &["python3", "-c", &script],
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning iochaos run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the command's output");
    assert_eq!(line.trim(), "locked");
    // Outside the run's mount namespace the path is the backing directory.
    let seen = outside_getlk(&db);
    drop(child.stdin.take());
    let status = child.wait().expect("waiting for iochaos run");
    assert_eq!(
        (seen, libc::F_UNLCK),
        (libc::F_WRLCK, libc::F_UNLCK),
        "the lock type the outsider saw (F_UNLCK: none)"
    );
    assert!(status.success(), "{status}");
    // Released with the command's exit.
    assert_eq!(outside_getlk(&db), libc::F_UNLCK);
}
