//! The progress line of long work (issue 17): on a terminal (`script` gives the command a pty)
//! `inject` and `recover` draw `iochaos: injecting at PATH (… s)` / `iochaos: recovering ID:
//! moving N fd(s) back (… s)` and erase it (`\r` + EL 2) before their usual output; with stderr
//! a pipe there is no such line and no escape sequence at all. `IOCHAOS_PROGRESS_DELAY_MS=0`
//! shows the line from the start, so the test does not depend on how long the work takes.
//! Privileged (root, FUSE, ptrace); fails without them.

mod inject_common;

use std::process::{Command, Output};

use inject_common::{EIO_ON_WRITE, Env, Workload, check_data, inject_args};

const ERASE: &str = "\r\x1b[2K";

/// `iochaos ARGS` on a pseudo-terminal (stdout and stderr both), through util-linux `script`.
fn on_a_tty(env: &Env, args: &[&str]) -> Output {
    let plain = env.command(args);
    let mut line = vec![plain.get_program().to_string_lossy().into_owned()];
    line.extend(
        plain
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''"))),
    );
    let mut c = Command::new("script");
    c.args([
        "--quiet",
        "--return",
        "--command",
        &line.join(" "),
        "/dev/null",
    ]);
    for (k, v) in plain.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.env("IOCHAOS_PROGRESS_DELAY_MS", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running script (util-linux)")
}

#[test]
fn a_terminal_sees_the_progress_line_erased_and_a_pipe_sees_none() {
    let env = Env::new();
    let mut w = Workload::start(&env, "w");
    let pid = w.pid_arg();

    let args = inject_args(&["--pid", &pid], w.vol_str(), EIO_ON_WRITE);
    let out = on_a_tty(&env, &args);
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{tty}\n{}", env.server_log());
    let shown = tty
        .find(&format!("iochaos: injecting at {}", w.vol_str()))
        .unwrap_or_else(|| panic!("no progress line on the tty: {tty:?}"));
    let erased = tty[shown..].find(ERASE).map(|i| i + shown);
    let id = env.status()[0]["id"]
        .as_str()
        .expect("an injection id")
        .to_owned();
    let printed = tty.rfind(&id).expect("the id printed");
    assert!(
        erased.is_some_and(|e| e < printed),
        "the line is erased before the id is printed: {tty:?}"
    );

    let out = on_a_tty(&env, &["recover", &id]);
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{tty}");
    let shown = tty
        .find(&format!("iochaos: recovering {id}: moving "))
        .unwrap_or_else(|| panic!("no progress line on the tty: {tty:?}"));
    assert!(
        tty[shown..].contains(ERASE) && tty.trim_end().ends_with(&id),
        "{tty:?}"
    );
    assert!(env.status().is_empty(), "recovered");

    // The same with pipes: the usual output only.
    let id = env.inject(&["--pid", &pid], w.vol_str(), EIO_ON_WRITE);
    let out = env
        .command(&["recover", &id])
        .env("IOCHAOS_PROGRESS_DELAY_MS", "0")
        .output()
        .expect("recover");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("recovering") && !err.contains('\x1b'),
        "{err:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);

    env.assert_clean(&[], Some(w.pid()));
    w.stop();
    check_data(&w.vol, &w.log);
}
