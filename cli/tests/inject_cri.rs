//! Kubernetes pods through containerd's CRI plugin, driven the way the kubelet drives it (no
//! kubelet): a private containerd with the CRI plugin, host-network pods (no CNI), a busybox
//! image imported into `k8s.io` (no registry), the `iochaos` runtime handler configured by
//! packaging/containerd/iochaos-runtime.toml.
//!
//! (a) A pod on plain runc: `iochaos inject k8s://default/POD` and `cri://ID` — faults seen by
//! the container's workload and through the CRI's ExecSync, `status cri://ID`, recover, data and
//! mounts as before; unknown, ambiguous and stopped containers are one line, exit 1.
//! (b) A pod with `runtime_handler: "iochaos"` and the `dev.iochaos.spec` pod annotation: the
//! container's first write fails; StopPodSandbox/RemovePodSandbox leave no mount, journal entry
//! or shim.
//!
//! Privileged: root, FUSE, containerd, ctr, runc, busybox-static, dockerd (to make the image);
//! the shim binary built next to `iochaos` (`cargo build --release -p
//! containerd-shim-iochaos-v2`). Fails without them. One test: the containerd makes this
//! process a child subreaper.

mod inject_common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use engine::runtimes::cri::{self, Cri, api};
use inject_common::{EIO_ON_WRITE, Env, Log, check_data, inject_update_recover};
use iochaos_testsupport::{CRI_IMAGE, Containerd, cri_config, import_cri_image};

/// The annotation of pod (b): every write under /data fails with EIO.
const EIO_SPEC: &str = r#"{"path":"/data","rules":[{"ops":["write"],"errno":"EIO"}]}"#;

/// A pod sandbox, stopped and removed when dropped (also when the test fails).
struct Pod<'a> {
    cri: &'a Cri,
    id: String,
    config: api::PodSandboxConfig,
    dir: PathBuf,
}

impl Pod<'_> {
    /// StopPodSandbox + RemovePodSandbox, as the kubelet does when a pod is deleted.
    fn remove(mut self) -> Result<(), String> {
        let id = std::mem::take(&mut self.id);
        remove_pod(self.cri, &id)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = remove_pod(self.cri, &self.id);
        }
    }
}

fn remove_pod(cri: &Cri, id: &str) -> Result<(), String> {
    let pod_sandbox_id = id.to_owned();
    cri.block_on(cri.client().stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod_sandbox_id.clone(),
    }))
    .map_err(|e| format!("StopPodSandbox: {e}"))?;
    cri.block_on(
        cri.client()
            .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id }),
    )
    .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    Ok(())
}

/// RunPodSandbox as the kubelet does for a host-network pod `default/NAME`.
fn run_pod<'a>(
    cri: &'a Cri,
    env: &Env,
    name: &str,
    handler: &str,
    annotations: HashMap<String, String>,
) -> Pod<'a> {
    let dir = env.path().join(name);
    std::fs::create_dir_all(dir.join("pod-logs")).expect("mkdir");
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        // A host-network pod has the node's hostname (the kubelet sets none).
        log_directory: dir.join("pod-logs").display().to_string(),
        labels: kube_labels(name, None),
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = cri
        .block_on(cri.client().run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        }))
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    Pod {
        cri,
        id,
        config,
        dir,
    }
}

/// The labels the kubelet puts on a pod's sandbox and (with `container`) its containers.
fn kube_labels(pod: &str, container: Option<&str>) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (cri::LABEL_POD_NAMESPACE.to_owned(), "default".to_owned()),
        (cri::LABEL_POD_NAME.to_owned(), pod.to_owned()),
        ("io.kubernetes.pod.uid".to_owned(), format!("uid-{pod}")),
    ]);
    if let Some(c) = container {
        l.insert(cri::LABEL_CONTAINER_NAME.to_owned(), c.to_owned());
    }
    l
}

/// CreateContainer + StartContainer of busybox running the common workload (writes to /data,
/// its log in /log); returns the container id, the volume and the log.
fn start_workload(pod: &Pod, name: &str) -> (String, PathBuf, Log) {
    let vol = pod.dir.join(format!("{name}-data"));
    let logdir = pod.dir.join(format!("{name}-log"));
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::create_dir_all(&logdir).expect("mkdir");
    let pod_name = pod.config.metadata.as_ref().map_or("", |m| m.name.as_str());
    let script = inject_common::workload_script("/data", "/log/log", "usleep 10000");
    let mount = |host: &Path, container: &str| api::Mount {
        container_path: container.to_owned(),
        host_path: host.display().to_string(),
        ..Default::default()
    };
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: CRI_IMAGE.to_owned(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        mounts: vec![mount(&vol, "/data"), mount(&logdir, "/log")],
        labels: kube_labels(pod_name, Some(name)),
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    let cri = pod.cri;
    let id = cri
        .block_on(cri.client().create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        }))
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.block_on(cri.client().start_container(api::StartContainerRequest {
        container_id: id.clone(),
    }))
    .expect("StartContainer");
    (id, vol, Log(logdir.join("log")))
}

/// containerd's log, shown when the test fails.
struct ShowLog<'a>(&'a Containerd);

impl Drop for ShowLog<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.0.log());
        }
    }
}

/// A write through the CRI's ExecSync (as `kubectl exec` does): did it succeed?
fn exec_write(cri: &Cri, id: &str, file: &str) -> bool {
    let res = cri
        .block_on(cri.client().exec_sync(api::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: vec!["/bin/sh".into(), "-c".into(), format!("echo x >> {file}")],
            timeout: 20,
        }))
        .expect("ExecSync")
        .into_inner();
    res.exit_code == 0
}

/// Host mounts whose source or target lies under `dir` (ChaosFS, bind mounts, the pods' shm).
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&d) || l.contains("chaosfs"))
        .map(str::to_owned)
        .collect()
}

fn mountinfo(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo")
}

/// A private containerd with the CRI plugin, the iochaos runtime handler and our shim on its
/// PATH (its journal is `env.run`).
fn containerd(env: &Env) -> Containerd {
    let dir = env.path().join("containerd");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let handler = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/containerd/iochaos-runtime.toml"),
    )
    .expect("packaging/containerd/iochaos-runtime.toml");
    let handler: String = handler
        .lines()
        .filter(|l| !l.starts_with("version"))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = cri_config(&dir, &handler);
    let bin = Path::new(env!("CARGO_BIN_EXE_iochaos"))
        .parent()
        .expect("bin dir")
        .to_owned();
    assert!(
        bin.join("containerd-shim-iochaos-v2").is_file(),
        "build the shim first: cargo build --release -p containerd-shim-iochaos-v2"
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let c = Containerd::start_with_config(
        &dir,
        &config,
        vec![
            ("PATH".to_owned(), OsString::from(path)),
            (
                "IOCHAOS_RUN_DIR".to_owned(),
                env.run.clone().into_os_string(),
            ),
        ],
    );
    import_cri_image(&c);
    c
}

#[test]
fn cri_pods_on_runc_and_on_the_iochaos_runtime() {
    let mut env = Env::new();
    iochaos_testsupport::require_fuse();
    let containerd = containerd(&env);
    // iochaos finds the CRI socket as crictl does; status and recover of a pod on the iochaos
    // runtime find its shim through this containerd's state.
    env.vars.push((
        cri::ENDPOINT_ENV.to_owned(),
        format!("unix://{}", containerd.sock.display()),
    ));
    let state = containerd.state.display().to_string();
    let fails = |args: &[&str]| {
        let (code, err) = env.fails(args);
        assert_eq!(code, 1, "iochaos {args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        err
    };
    let cri = Cri::connect(&containerd.sock).expect("CRI connect");
    let _log = ShowLog(&containerd);

    // (a) A pod on runc, injected by k8s://NAMESPACE/POD, then by cri://ID.
    let pod = run_pod(&cri, &env, "web", "", HashMap::new());
    let (id, vol, log) = start_workload(&pod, "app");
    log.wait_round(1);
    let pid = cri.container(&id).expect("status").pid.expect("running");
    let mi_before = mountinfo(pid);

    inject_update_recover(&env, &["k8s://default/web"], "/data", &log);
    assert_eq!(mountinfo(pid), mi_before);

    let target = format!("cri://{}", &id[..12]);
    let inj = env.inject(&[&target], "/data", EIO_ON_WRITE);
    assert!(
        !exec_write(&cri, &id, "/data/exec"),
        "a write through ExecSync succeeded"
    );
    let st: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--json", &target])).expect("status JSON");
    let st = st.as_array().expect("an array");
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["id"], inj.as_str());
    assert_eq!(st[0]["target"]["namespace"], "cri");
    assert_eq!(st[0]["target"]["container"], id.as_str());
    assert_eq!(st[0]["rules"][0]["spec"]["errno"], "EIO");
    assert_eq!(env.ok(&["recover", "k8s://default/web/app"]), inj);
    log.assert_recovered();
    assert!(
        exec_write(&cri, &id, "/data/exec"),
        "a write failed after recover"
    );
    assert_eq!(mountinfo(pid), mi_before);
    assert!(env.status().is_empty());

    // Unknown, ambiguous, not running: one line, exit 1, nothing injected.
    assert!(
        fails(&[
            "inject",
            "cri://ffffffffffff",
            "--path",
            "/data",
            "--errno",
            "EIO"
        ])
        .contains("No such container")
    );
    assert!(fails(&["status", "k8s://default/nopod"]).contains("no such pod on this node"));
    let (_id2, _, log2) = start_workload(&pod, "sidecar");
    log2.wait_round(1);
    let err = fails(&[
        "inject",
        "k8s://default/web",
        "--path",
        "/data",
        "--errno",
        "EIO",
    ]);
    assert!(err.contains("app, sidecar"), "{err}");
    cri.block_on(cri.client().stop_container(api::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    }))
    .expect("StopContainer");
    let err = fails(&[
        "inject",
        &format!("cri://{id}"),
        "--path",
        "/data",
        "--errno",
        "EIO",
    ]);
    assert!(err.contains("is not running"), "{err}");
    assert!(
        env.run_dir_entries().is_empty(),
        "{:?}",
        env.run_dir_entries()
    );
    drop(pod);
    check_data(&vol, &log);

    // (b) The iochaos runtime handler and the pod annotation: faults from the first write.
    let pod = run_pod(
        &cri,
        &env,
        "chaos",
        "iochaos",
        HashMap::from([("dev.iochaos.spec".to_owned(), EIO_SPEC.to_owned())]),
    );
    let (id, _vol, log) = start_workload(&pod, "app");
    log.wait_round(1);
    let first = log
        .lines()
        .into_iter()
        .find(|l| l.kind == 'W')
        .expect("a write");
    assert!(!first.ok, "the first write succeeded: {first:?}");
    let st: serde_json::Value = serde_json::from_str(&env.ok(&[
        "status",
        "--json",
        "--containerd-state",
        &state,
        &format!("cri://{id}"),
    ]))
    .expect("JSON");
    assert_eq!(st[0]["rules"][0]["spec"]["errno"], "EIO", "{st}");
    let pod_dir = pod.dir.clone();
    pod.remove().expect("StopPodSandbox + RemovePodSandbox");
    inject_common::poll("the journal entry to go", 20, || {
        env.run_dir_entries().is_empty().then_some(())
    });
    inject_common::poll("the shims to exit", 20, || {
        containerd.shims().is_empty().then_some(())
    });
    assert_eq!(mounts_under(&pod_dir), Vec::<String>::new());
    assert_eq!(
        mounts_under(&containerd.state),
        Vec::<String>::new(),
        "containerd's state"
    );
}
