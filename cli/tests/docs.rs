//! The commands of README.md and docs/ run as written: every fenced block marked ```` ```sh test ````
//! is run by bash (`set -eu`, the built `iochaos` first on PATH, a private journal), and the
//! README's `podman run --annotation ...` runs with its annotation exactly as written (podman
//! parses it as CSV; the quoting the README had before failed with exit 125). Privileged: root,
//! /dev/fuse, podman and runc; fails without them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("reading a doc");
            (f, text)
        })
        .collect()
}

/// The fenced blocks of `text` whose info string is `info`.
fn blocks(text: &str, info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{info}") => current = Some(String::new()),
            Some(_) if line.trim_end() == "```" => out.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Recovers what a failed block left (an injection; its own process group is killed).
struct Cleanup {
    run_dir: PathBuf,
    pgid: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_iochaos"))
            .args(["recover", "--all"])
            .env("IOCHAOS_RUN_DIR", &self.run_dir)
            .output();
        if let Some(pgid) = self.pgid {
            let _ = iochaos_testsupport::kill_group(pgid, iochaos_testsupport::Signal::KILL);
        }
    }
}

#[test]
fn tested_blocks_of_the_docs_run_as_written() {
    iochaos_testsupport::require_root("the examples mount FUSE and inject into a process");
    iochaos_testsupport::require_fuse();
    let bin = Path::new(env!("CARGO_BIN_EXE_iochaos"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = Vec::new();
    for (file, text) in documents() {
        for (i, block) in blocks(&text, "sh test").into_iter().enumerate() {
            let scratch = tempfile::tempdir().expect("tempdir");
            let mut cleanup = Cleanup {
                run_dir: scratch.path().join("run"),
                pgid: None,
            };
            let child = Command::new("bash")
                .args(["-eu", "-c", &block])
                .current_dir(scratch.path())
                .env("PATH", &path)
                .env("IOCHAOS_RUN_DIR", &cleanup.run_dir)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("bash");
            cleanup.pgid = Some(child.id());
            let out = child.wait_with_output().expect("bash");
            let name = format!("{} block {}", file.display(), i + 1);
            assert!(
                out.status.success(),
                "{name} failed ({}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let entries = std::fs::read_dir(&cleanup.run_dir)
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(entries, 0, "{name} left an injection behind");
            ran.push(name);
        }
    }
    // README.md and docs/cli.md each hold one.
    assert!(ran.len() >= 2, "tested blocks: {ran:?}");
}

/// The README's podman command: its `SPEC=` line and its `--annotation` argument as written.
fn readme_podman_annotation() -> (String, String) {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let block = blocks(&readme, "sh")
        .into_iter()
        .find(|b| b.contains("podman run"))
        .expect("the README's podman example");
    let spec = block
        .lines()
        .find(|l| l.starts_with("SPEC="))
        .expect("SPEC= line")
        .to_owned();
    let run = block
        .lines()
        .find(|l| l.starts_with("podman run"))
        .expect("podman run line");
    let arg = run
        .split_once("--annotation ")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.rsplit_once(" \\").map(|(a, _)| a))
        .or_else(|| run.split_once("--annotation ").map(|(_, r)| r))
        .expect("--annotation")
        .split(" --")
        .next()
        .unwrap_or_default()
        .to_owned();
    (spec, arg)
}

/// podman state in a temporary directory, removed (containers first) on drop.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "-af"]).output();
        let _ = self.command().args(["system", "reset", "-f"]).output();
    }
}

#[test]
fn the_readme_podman_annotation_reaches_the_runtime_as_json() {
    iochaos_testsupport::require_root("podman runs containers");
    iochaos_testsupport::require_tools(&["podman", "runc", "busybox"]);
    let (spec_line, arg) = readme_podman_annotation();
    let podman = Podman {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let rootfs = podman.dir.path().join("rootfs");
    iochaos_testsupport::busybox_rootfs(&rootfs, &[], &["true"]);
    // The README's two lines, with this machine's storage, runtime and limits around them
    // (the sandbox's hard RLIMIT_NOFILE/NPROC are below podman's defaults).
    let podman_cmd = podman.command();
    let prefix: Vec<String> = std::iter::once(podman_cmd.get_program())
        .chain(podman_cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let script = format!(
        "{spec_line}\n{} run --name readme --runtime runc --network none \
         --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --annotation {arg} --rootfs '{}' true",
        prefix.join(" "),
        rootfs.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}\nexit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = podman
        .command()
        .args([
            "inspect",
            "--format",
            "{{ index .Config.Annotations \"dev.iochaos.spec\" }}",
            "readme",
        ])
        .output()
        .expect("podman inspect");
    let want = spec_line
        .trim_start_matches("SPEC='")
        .trim_end_matches('\'');
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), want);
}
