//! The hook's command line, run as the real binary: help, version, usage errors (exit 2, one
//! line naming the stages), and stages without work exit 0 after reading their state.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const HOOK: &str = env!("CARGO_BIN_EXE_iochaos-hook");

fn hook(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(HOOK)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iochaos-hook");
    // A hook that exits without reading closes the pipe: not an error here.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_names_the_stages_and_the_registration() {
    for flag in ["--help", "-h"] {
        let out = hook(&[flag], b"");
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        let help = text(&out.stdout);
        assert!(help.contains("Usage: iochaos-hook"), "{help}");
        for stage in ["createRuntime", "poststop", "prestart"] {
            assert!(help.contains(stage), "{flag} lacks {stage}: {help}");
        }
        assert!(help.contains("hooks.d"), "{help}");
        assert!(
            !help.contains("__serve"),
            "the internal server shows: {help}"
        );
    }
}

#[test]
fn version_prints_the_version() {
    for flag in ["--version", "-V"] {
        let out = hook(&[flag], b"");
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("iochaos-hook {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_stages() {
    for args in [
        &[][..],
        &["createruntime"],
        &["create_runtime"],
        &["createRuntime", "extra"],
        &["--bogus"],
    ] {
        let out = hook(args, b"{}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.contains("Usage: iochaos-hook") || err.contains("try '--help'"),
            "{args:?}: {err}"
        );
    }
    let err = text(&hook(&["createruntime"], b"{}").stderr);
    assert!(err.contains("createRuntime"), "no suggestion: {err}");
}

#[test]
fn stages_without_work_read_the_state_and_exit_0() {
    for stage in ["createContainer", "startContainer", "poststart"] {
        let out = hook(&[stage], br#"{"id":"c","bundle":"/nonexistent"}"#);
        assert_eq!(out.status.code(), Some(0), "{stage}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{stage}: {}", text(&out.stderr));
    }
}

#[test]
fn a_bad_state_is_one_line_and_exit_1() {
    let out = hook(&["createRuntime"], b"not json");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("iochaos-hook: createRuntime: the OCI state on stdin:"),
        "{err}"
    );
}

#[test]
fn without_cap_sys_admin_the_error_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = serde_json::json!({
        "id": "c", "bundle": dir.path().join("bundle"), "pid": 1,
        "annotations": {"dev.iochaos.spec": r#"{"path":"/data","rules":[{"errno":"EIO"}]}"#}
    });
    let mut child = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-sys_admin",
            "--inh-caps=-all",
            HOOK,
            "createRuntime",
        ])
        .env("IOCHAOS_HOOK_CONFIG", dir.path().join("hook.toml"))
        .env("IOCHAOS_RUN_DIR", dir.path().join("run"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(state.to_string().as_bytes())
        .expect("state");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("iochaos-hook: createRuntime: missing capability CAP_SYS_ADMIN"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "something was started");
}
