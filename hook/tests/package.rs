//! The Debian package, end to end on this machine: `bash packaging/deb.sh` builds it,
//! `dpkg -i` installs it, the installed `iochaos --version` runs, a podman container with the
//! annotation is faulted through the installed hooks.d file (podman's default hooks dir, no
//! `--hooks-dir`), and `dpkg -r` leaves only the conffile. Root, dpkg and podman (runc) are
//! required; the test fails when iochaos is already installed rather than replace it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const WORKLOAD: &str = "grep ' /data ' /proc/self/mountinfo; \
     echo hi > /data/f && echo WRITE-OK || echo WRITE-FAILED";
const SPEC: &str = r#"{"path":"/data","rules":[{"ops":["write"],"errno":"ENOSPC"}]}"#;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    eprintln!(
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "iochaos"]));
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("installed")
}

/// Purges the package (and its conffile) however the test ends.
struct Package;
impl Drop for Package {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "iochaos"])
            .stdin(Stdio::null())
            .status();
    }
}

/// Removes the podman container (and its temporary storage) however the test ends.
struct Podman {
    dir: tempfile::TempDir,
}
impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("timeout");
        c.args(["120", "podman", "--root"])
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c
    }
}
impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "-f", "iochaos-package-test"])
            .stdin(Stdio::null())
            .output();
    }
}

#[test]
fn deb_installs_faults_a_podman_container_and_removes_cleanly() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the package test needs root (dpkg -i)"
    );
    assert!(
        !installed(),
        "iochaos is already installed here: the test installs and removes it"
    );
    let deb = ok(Command::new("bash")
        .arg("packaging/deb.sh")
        .current_dir(ROOT));
    let deb = Path::new(ROOT).join(deb.lines().last().expect("deb path").trim());
    assert!(
        deb.starts_with(Path::new(ROOT).join("target/debian")),
        "{deb:?}"
    );

    // What the package holds, as dpkg-deb lists it.
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<PathBuf> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .map(|p| PathBuf::from(p.trim_start_matches('.')))
        .collect();
    for want in [
        "/usr/bin/iochaos",
        "/usr/bin/iochaos-hook",
        "/usr/bin/containerd-shim-iochaos-v2",
        "/usr/share/containers/oci/hooks.d/iochaos-createRuntime.json",
        "/usr/share/containers/oci/hooks.d/iochaos-poststop.json",
        "/etc/iochaos/hook.toml",
        "/usr/share/iochaos/containerd/iochaos-runtime.toml",
        "/usr/share/iochaos/kubernetes/runtimeclass.yaml",
        "/usr/share/bash-completion/completions/iochaos",
        "/usr/share/zsh/vendor-completions/_iochaos",
        "/usr/share/fish/vendor_completions.d/iochaos.fish",
        "/usr/share/man/man1/iochaos.1.gz",
        "/usr/share/man/man1/iochaos-inject.1.gz",
        "/usr/lib/tmpfiles.d/iochaos.conf",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(want)),
            "{want} not in the package"
        );
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/iochaos/hook.toml");

    let _package = Package;
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let version = ok(Command::new("/usr/bin/iochaos").arg("--version"));
    assert!(
        version.starts_with(&format!("iochaos {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(
        Path::new("/run/iochaos").is_dir(),
        "tmpfiles.d made no /run/iochaos"
    );

    // A container with the annotation, through podman's default hooks dir.
    let podman = Podman {
        dir: tempfile::Builder::new()
            .prefix("iochaos-package-test.")
            .tempdir()
            .expect("tempdir"),
    };
    let rootfs = podman.dir.path().join("rootfs");
    iochaos_testsupport::busybox_rootfs(
        &rootfs,
        &["data", "proc", "dev", "sys", "tmp"],
        &["sh", "echo", "grep"],
    );
    let out = ok(podman
        .cmd()
        .args(["run", "--rm", "--name", "iochaos-package-test"])
        .args(["--network", "none", "--runtime", "runc"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg("--annotation")
        .arg(format!(
            "\"dev.iochaos.spec={}\"",
            SPEC.replace('"', "\"\"")
        ))
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["sh", "-c", WORKLOAD]));
    assert!(out.contains("fuse.chaosfs"), "no ChaosFS at /data: {out}");
    assert!(
        out.contains("WRITE-FAILED"),
        "the write was not faulted: {out}"
    );
    let left: Vec<_> = std::fs::read_dir("/run/iochaos")
        .expect("/run/iochaos")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "poststop left {left:?} in /run/iochaos");

    ok(Command::new("dpkg").args(["-r", "iochaos"]));
    let status = ok(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "iochaos"]));
    assert_eq!(status, "deinstall ok config-files");
    for f in &files {
        let conffile = f == Path::new("/etc/iochaos/hook.toml");
        assert_eq!(f.exists(), conffile, "{f:?} after dpkg -r");
    }
    assert!(
        !Path::new("/run/iochaos").exists(),
        "dpkg -r left /run/iochaos"
    );
}
