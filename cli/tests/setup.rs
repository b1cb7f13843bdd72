//! `iochaos setup containerd` (issue 17) on containerd's own default configuration: the runtime
//! it adds is what containerd itself reads back (`containerd config dump`), a second run changes
//! no byte, `--dry-run` writes nothing and prints a diff that `patch` applies to the same
//! result, `--remove` gives back the original bytes, bad input changes nothing.
//! Needs the `containerd` and `patch` binaries (installed by .ci/run); fails without them.

use std::path::Path;
use std::process::{Command, Output};

fn iochaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iochaos"))
        .args(args)
        .output()
        .expect("running iochaos")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn setup(config: &Path, extra: &[&str]) -> Output {
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec!["setup", "containerd", "--config", config];
    args.extend_from_slice(extra);
    iochaos(&args)
}

/// `containerd config default`: the file a containerd 1.6 install starts from.
fn default_config() -> String {
    let out = Command::new("containerd")
        .args(["config", "default"])
        .output()
        .expect("running containerd (install the containerd package)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// What containerd reads from `config` (its merged, typed configuration).
fn dump(config: &Path) -> String {
    let out = Command::new("containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("running containerd");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The lines of `dump`'s table `header`, up to the next table.
fn table<'a>(dump: &'a str, header: &str) -> Vec<&'a str> {
    dump.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

const RUNTIME: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.iochaos]"#;

#[test]
fn containerd_reads_the_runtime_setup_adds_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let original = default_config();
    std::fs::write(&config, &original).expect("writing the config");
    assert!(
        table(&dump(&config), RUNTIME).is_empty(),
        "containerd's default has no iochaos runtime"
    );

    // --dry-run: a diff on stdout, the file untouched.
    let dry = setup(&config, &["--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    assert_eq!(std::fs::read_to_string(&config).expect("config"), original);
    let diff = text(&dry.stdout);
    assert!(diff.contains(&format!("+{RUNTIME}")), "{diff}");

    let done = setup(&config, &[]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    assert!(
        text(&done.stdout).contains("added"),
        "{}",
        text(&done.stdout)
    );
    let written = std::fs::read_to_string(&config).expect("config");
    assert!(
        written.starts_with(original.trim_end()),
        "the user's file is kept as it was, the runtime appended"
    );
    let dumped = dump(&config);
    let runtime = table(&dumped, RUNTIME);
    for want in [
        r#"runtime_type = "io.containerd.iochaos.v2""#,
        r#"pod_annotations = ["dev.iochaos.*"]"#,
        r#"container_annotations = ["dev.iochaos.*"]"#,
    ] {
        assert!(
            runtime.contains(&want),
            "containerd reads {runtime:?}, lacks {want}"
        );
    }

    // The dry run's diff is exactly the change the real run made.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &original).expect("copy");
    let patched = Command::new("patch")
        .arg("--quiet")
        .arg(&copy)
        .stdin(
            std::fs::File::open({
                let p = dir.path().join("diff");
                std::fs::write(&p, diff.as_bytes()).expect("diff");
                p
            })
            .expect("diff"),
        )
        .output()
        .expect("running patch (install the patch package)");
    assert!(patched.status.success(), "{}", text(&patched.stderr));
    assert_eq!(std::fs::read_to_string(&copy).expect("copy"), written);

    // Idempotent: no byte changes, and it says so.
    let again = setup(&config, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("nothing to change"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(std::fs::read_to_string(&config).expect("config"), written);

    // --remove: the original bytes back.
    let removed = setup(&config, &["--remove"]);
    assert_eq!(removed.status.code(), Some(0), "{}", text(&removed.stderr));
    assert_eq!(std::fs::read_to_string(&config).expect("config"), original);
    assert!(table(&dump(&config), RUNTIME).is_empty());
}

#[test]
fn a_file_that_is_not_toml_or_not_containerds_is_one_line_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (body, needle) in [
        ("version = [\n", "not TOML"),
        ("version = 7\n", "config version 7"),
        (
            "version = 2\nplugins = \"none\"\n",
            "plugins is not a table",
        ),
    ] {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, body).expect("config");
        let out = setup(&config, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{body:?}: {err:?}");
        assert!(err.contains(needle), "{body:?}: {err:?}");
        assert_eq!(std::fs::read_to_string(&config).expect("config"), body);
    }
    // Someone else's runtime under the name is not removed.
    let config = dir.path().join("config.toml");
    let theirs = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.iochaos]\n\
                  runtime_type = \"io.containerd.runc.v2\"\n";
    std::fs::write(&config, theirs).expect("config");
    let out = setup(&config, &["--remove"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not iochaos's"));
    assert_eq!(std::fs::read_to_string(&config).expect("config"), theirs);
}
