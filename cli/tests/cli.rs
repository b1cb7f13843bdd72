//! The command line as a user meets it (issue 17), run through the real `iochaos` binary: help
//! and version, `help SUBCOMMAND`, global flags before the subcommand, "did you mean", and one
//! exit code per kind of mistake (2 for every usage error, under every subcommand).
//! These need no privileges: every case fails (or prints) before anything is touched.

use std::process::{Command, Output};

fn iochaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iochaos"))
        .args(args)
        // A journal no test shares, so that nothing here can see or touch real injections.
        .env(
            "IOCHAOS_RUN_DIR",
            std::env::temp_dir().join("iochaos-cli-test-none"),
        )
        .output()
        .expect("running iochaos")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `args` succeeds; its stdout.
fn ok(args: &[&str]) -> String {
    let out = iochaos(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `args` is a usage error: exit 2, one line on stderr starting `iochaos: ` and naming `needle`,
/// nothing on stdout.
fn usage_error(args: &[&str], needle: &str) {
    let out = iochaos(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(err.starts_with("iochaos: "), "{args:?}: {err:?}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
}

const SUBCOMMANDS: &[&str] = &[
    "run",
    "inject",
    "recover",
    "status",
    "update",
    "crash",
    "setup",
    "convert",
    "demo",
    "completions",
    "man",
];

#[test]
fn every_subcommand_has_its_own_help_with_examples() {
    for sub in SUBCOMMANDS {
        for flag in ["-h", "--help"] {
            let help = ok(&[sub, flag]);
            assert!(
                help.contains(&format!("Usage: iochaos {sub}")),
                "{sub} {flag}: {help}"
            );
            assert!(
                help.contains("Example"),
                "{sub} {flag}: no examples: {help}"
            );
        }
        // `iochaos help SUB` is the same page as `iochaos SUB --help`.
        assert_eq!(ok(&["help", sub]), ok(&[sub, "--help"]), "help {sub}");
    }
    // The rule flags are documented where they are taken.
    for sub in ["run", "inject", "update"] {
        let help = ok(&[sub, "--help"]);
        for flag in [
            "--errno",
            "--latency",
            "--ops",
            "--glob",
            "--percent",
            "--spec",
        ] {
            assert!(help.contains(flag), "{sub} --help lacks {flag}");
        }
    }
    let top = ok(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "--help lacks {sub}");
    }
    assert!(
        !top.contains("__serve") && !top.contains("__demo-workload"),
        "{top}"
    );
    assert!(top.contains("Exit status"), "{top}");
}

#[test]
fn version_names_the_commit() {
    let v = ok(&["--version"]);
    assert_eq!(ok(&["-V"]), v);
    let want = format!("iochaos {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v:?}");
    let commit = v
        .trim_end()
        .strip_prefix(&want)
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{v:?}"));
    // Built from a git checkout (as here): the commit it was built from.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    if head.status.success() {
        assert!(
            commit.len() >= 7 && text(&head.stdout).starts_with(commit),
            "{v:?} is not HEAD {}",
            text(&head.stdout)
        );
    } else {
        assert_eq!(commit, "unknown");
    }
    // Subcommands answer --version too.
    assert_eq!(ok(&["inject", "--version"]).lines().count(), 1);
}

#[test]
fn global_flags_may_come_before_the_subcommand() {
    // Both parse; both then need root and the journal (exit 1 as nobody, 0 as root).
    for args in [&["--json", "status"][..], &["status", "--json"]] {
        let out = iochaos(args);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    usage_error(&["--json", "demo"], "--json does not apply");
}

#[test]
fn mistakes_say_did_you_mean() {
    usage_error(&["injct"], "'inject'");
    usage_error(&["inject", "--pid", "1", "--erno", "EIO"], "'--errno'");
    usage_error(&["status", "--jsn"], "'--json'");
}

/// Each of these exited 1 under one subcommand and 2 under another (or was taken for something
/// else); all are usage errors now, one line, exit 2.
#[test]
fn every_usage_error_exits_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["inject", "--pid", "1", "--path", "/d", "--errno", "EBOGUS"],
            "EBOGUS",
        ),
        (
            &["run", "--path", "/d", "--errno", "EBOGUS", "--", "true"],
            "EBOGUS",
        ),
        (&["update", "0000000000zz", "--errno", "EBOGUS"], "EBOGUS"),
        (
            &[
                "inject", "--pid", "1", "--path", "relative", "--errno", "EIO",
            ],
            "absolute",
        ),
        (
            &["inject", "--pid", "abc", "--path", "/d", "--errno", "EIO"],
            "abc",
        ),
        (
            &["inject", "--pid", "0", "--path", "/d", "--errno", "EIO"],
            "--pid",
        ),
        (
            &[
                "inject", "--pid", "1", "--path", "/d", "--errno", "EIO", "--ops", "wirte",
            ],
            "wirte",
        ),
        (
            &["inject", "--pid", "1", "--path", "/d", "--latency", "soon"],
            "soon",
        ),
        (
            &[
                "inject",
                "--pid",
                "1",
                "--path",
                "/d",
                "--errno",
                "EIO",
                "--duration",
                "x",
            ],
            "x",
        ),
        (
            &["inject", "--pid", "1", "--path", "/d", "--percent", "5"],
            "action",
        ),
        (&["inject", "--pid", "1", "--path", "/d"], "rule"),
        (&["inject", "--path", "/d", "--errno", "EIO"], "--pid"),
        (
            &["inject", "--pid", "1", "web", "--errno", "EIO"],
            "cannot be used",
        ),
        (
            &["inject", "--pid", "1", "--namespace", "x", "--errno", "EIO"],
            "--namespace",
        ),
        (&["run", "--errno", "EIO", "--", "true"], "--path"),
        (&["run", "--path", "/d", "--errno", "EIO"], "CMD"),
        (
            &[
                "run", "--path", "/d", "--spec", "f", "--errno", "EIO", "--", "x",
            ],
            "--spec",
        ),
        (&["recover"], "recover"),
        (&["recover", "--all", "x"], "cannot be used"),
        (&["recover", "--pid", "x"], "--pid"),
        (&["status", "a", "b"], "'b'"),
        (&["update", "--errno", "EIO"], "ID"),
        (&["demo", "extra"], "extra"),
        (&["completions", "tcsh"], "tcsh"),
        (&["man", "nosuch"], "nosuch"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        usage_error(args, needle);
    }
    // `--help` anywhere is help, not "unknown flag".
    let help = ok(&["run", "--path", "/d", "--help"]);
    assert!(help.contains("Usage: iochaos run"));
    // No subcommand: the help, on stderr, exit 2.
    let out = iochaos(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: iochaos"));
}

/// A bad spec file is the same mistake as a bad rule flag: exit 2 under run, inject and update.
#[test]
fn a_bad_spec_file_exits_2_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"rules":[{"errno":"EBOGUS"}]}"#).expect("write");
    let spec = spec.to_str().expect("utf-8");
    let d = dir.path().to_str().expect("utf-8");
    for args in [
        &["run", "--path", d, "--spec", spec, "--", "true"][..],
        &["inject", "--pid", "1", "--path", "/d", "--spec", spec],
        &["update", "0000000000zz", "--spec", spec],
    ] {
        usage_error(args, "EBOGUS");
    }
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&["completions", shell]);
        assert!(!script.is_empty(), "{shell}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        // fish writes `-l errno`, the others `--errno`.
        for flag in ["errno", "path", "json", "namespace"] {
            assert!(script.contains(flag), "{shell} completion lacks --{flag}");
        }
        assert!(!script.contains("__serve"), "{shell}: a hidden subcommand");
    }
}

#[test]
fn man_pages_for_iochaos_and_each_subcommand() {
    let top = ok(&["man"]);
    assert!(
        top.starts_with(".ie") || top.contains(".TH iochaos"),
        "{top}"
    );
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "iochaos.1 lacks {sub}");
        let page = ok(&["man", sub]);
        assert!(
            page.contains(&format!(".TH iochaos-{sub}")),
            "{sub}: {page}"
        );
    }
    assert!(ok(&["man", "inject"]).contains("errno"));
    // --dir writes them all.
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = ok(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = SUBCOMMANDS
        .iter()
        .map(|s| format!("iochaos-{s}.1"))
        .chain(["iochaos.1".to_owned()])
        .collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(listed.lines().count(), want.len());
    for n in &names {
        let len = std::fs::metadata(dir.path().join(n)).expect("stat").len();
        assert!(len > 0, "{n} is empty");
    }
}

/// `iochaos args` with `drop` taken out of the capability bounding set (so the process runs as
/// root without it).
fn iochaos_without(drop: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--bounding-set", &format!("-{drop}"), "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_iochaos"))
        .args(args)
        .env(
            "IOCHAOS_RUN_DIR",
            std::env::temp_dir().join("iochaos-cli-test-none"),
        )
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn each_command_asks_for_the_capabilities_it_uses_and_names_a_missing_one() {
    // Dropping a capability from the bounding set needs CAP_SETPCAP: fail loudly without it.
    assert!(rustix::process::geteuid().is_root(), "needs root");
    let d = std::env::temp_dir();
    let d = d.to_str().expect("utf-8");
    let fails_naming = |drop: &str, args: &[&str], cap: &str| {
        let out = iochaos_without(drop, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} without {drop}: {err}");
        assert!(
            err.starts_with("iochaos: ") && err.contains(cap) && err.lines().count() == 1,
            "{args:?} without {drop}: {err:?}"
        );
    };
    // Tracing is for inject and recover; mounting for those and run.
    fails_naming(
        "sys_ptrace",
        &["inject", "--pid", "1", "--path", d, "--errno", "EIO"],
        "CAP_SYS_PTRACE",
    );
    fails_naming("sys_ptrace", &["recover", "0000000000zz"], "CAP_SYS_PTRACE");
    fails_naming(
        "sys_admin",
        &["run", "--path", d, "--errno", "EIO", "--", "true"],
        "CAP_SYS_ADMIN",
    );
    // status reads the journal only: it needs neither.
    for drop in ["sys_ptrace", "sys_admin"] {
        let out = iochaos_without(drop, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "[]");
    }
}
