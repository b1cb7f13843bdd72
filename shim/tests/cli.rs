//! The shim binary run by hand: its errors are one line each.

use std::process::Command;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-iochaos-v2");

#[test]
fn without_arguments_the_error_is_printed_once() {
    // No `log` fifo in the working directory: the log would go to stderr too.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(SHIM)
        .current_dir(dir.path())
        .env_remove("IOCHAOS_LOG")
        .output()
        .expect("run the shim");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        ["containerd-shim-iochaos-v2: containerd runs this shim with `start` or `delete`"],
        "{err}"
    );
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(SHIM)
        .current_dir(dir.path())
        .arg("bogus")
        .output()
        .expect("run the shim");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}
