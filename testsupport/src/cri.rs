//! containerd's CRI plugin for tests that drive it the way the kubelet does: a configuration
//! with the plugin enabled and no CNI (pods use the host network), and a busybox image in the
//! `k8s.io` namespace that also serves as the pause image (no registry is reachable).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Containerd, busybox_rootfs, expect_success};

/// The image of pods and containers: busybox whose entrypoint sleeps (the sandbox's pause).
pub const CRI_IMAGE: &str = "docker.io/library/iochaos-test-pause:latest";

/// Write `dir/config.toml`: the CRI plugin with [`CRI_IMAGE`] as sandbox image, its streaming
/// server on a free port, CNI directories of its own (empty: host-network pods only), no
/// AppArmor, oom_score_adj kept within what this process may set, and `extra` appended (runtime tables, without a `version` line).
pub fn cri_config(dir: &Path, extra: &str) -> PathBuf {
    let cni = dir.join("cni");
    std::fs::create_dir_all(cni.join("bin")).expect("mkdir cni");
    std::fs::create_dir_all(cni.join("conf")).expect("mkdir cni");
    let text = format!(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{CRI_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Never below this process's own oom_score_adj (the kubelet asks -998 for a sandbox, which
  # needs CAP_SYS_RESOURCE in the machine's user namespace).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
{extra}
"#,
        bin = cni.join("bin").display(),
        conf = cni.join("conf").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config.toml");
    path
}

/// Make [`CRI_IMAGE`] from a busybox rootfs (`docker import` then `docker save`: dockerd as
/// `.ci/run` starts it) and import it into `containerd`'s `k8s.io` namespace.
pub fn import_cri_image(containerd: &Containerd) {
    let dir = containerd.dir.join("image");
    let rootfs = dir.join("rootfs");
    busybox_rootfs(
        &rootfs,
        &["data", "log", "proc", "sys", "dev", "etc", "tmp"],
        &["sh", "cat", "echo", "sleep", "usleep", "true"],
    );
    docker_import(
        &rootfs,
        &[
            "--change",
            r#"ENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]"#,
        ],
        CRI_IMAGE,
    );
    let archive = dir.join("image.tar");
    let archive_s = archive.display().to_string();
    let save = Command::new("docker")
        .args(["save", "-o", &archive_s, CRI_IMAGE])
        .stdin(Stdio::null())
        .output()
        .expect("docker save");
    expect_success(&save, "docker save");
    containerd.ctr_ok(&["-n", "k8s.io", "images", "import", &archive_s]);
}

/// `tar -c ROOTFS | docker import FLAGS - IMAGE` (`flags`: e.g. `--change` and a Dockerfile
/// line); fails the test if either fails.
pub fn docker_import(rootfs: &Path, flags: &[&str], image: &str) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let out = Command::new("docker")
        .arg("import")
        .args(flags)
        .args(["-", image])
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .output()
        .expect("docker must be installed (docker.io; .ci/run installs and starts it)");
    assert!(tar.wait().expect("tar").success(), "tar of the rootfs");
    expect_success(&out, "docker import");
}
