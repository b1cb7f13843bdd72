//! The hook under real runtimes: runc and crun with the hook in config.json, podman with
//! `--annotation` and `--hooks-dir`. Root, /dev/fuse, runc, crun and podman are required.
//!
//! Each runtime: the workload's first write under the path fails as the spec says; a
//! container without the annotation is untouched; a bad annotation fails creation with the
//! reason; after the container is deleted nothing remains (journal entries, sockets, servers,
//! the FUSE connection). runc also: the admin config, and `status`/`update`/`recover` over the
//! Chaos API on a hook-started injection.

mod common;

use std::time::Duration;

use common::*;
use engine::api::ChaosClient;
use engine::journal::Journal;

/// Faults from the first write; nothing left after the runtime deleted the container.
fn faults_from_first_write(rt: Runtime, name: &str) {
    let scene = Scene::new(rt);
    let id = &scene.id(name);
    scene.write_config(WORKLOAD, Some(ENOSPC_SPEC), &[]);
    let out = scene.run(id);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run failed");
    assert!(stdout.contains("fuse.chaosfs"), "no ChaosFS at /data");
    assert!(stdout.contains("WRITE-FAILED"), "the write did not fail");
    assert!(
        stderr.contains("No space left on device"),
        "not the spec's errno"
    );
    // `run` deleted the container (poststop ran).
    assert!(scene.state(id).is_none());
    scene.assert_clean(chaosfs_connection(&stdout));
}

/// No annotation: the hook does nothing (not even create the journal directory).
fn untouched_without_annotation(rt: Runtime, name: &str) {
    let scene = Scene::new(rt);
    let id = &scene.id(name);
    scene.write_config(
        WORKLOAD,
        None,
        &["prestart", "createContainer", "poststart"],
    );
    let out = scene.run(id);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "run failed");
    assert!(!stdout.contains("fuse.chaosfs"));
    assert!(stdout.contains("WRITE-OK"));
    assert_eq!(
        std::fs::read_to_string(scene.rootfs().join("data/f")).expect("written"),
        "hi\n"
    );
    assert!(!scene.run_dir().exists(), "the hook touched the run dir");
    scene.assert_clean(None);
}

/// A bad annotation fails the creation with the hook's one-line reason.
fn bad_annotation_fails(rt: Runtime, name: &str) {
    let scene = Scene::new(rt);
    let id = &scene.id(name);
    for (spec, reason) in [
        (
            r#"{"path":"/data","rules":[{"ops":["write"],"errno":"EBOGUS"}]}"#,
            "unknown errno",
        ),
        (
            r#"{"path":"/data","rules":"#,
            "invalid dev.iochaos.spec annotation",
        ),
        (
            r#"{"path":"/nonexistent","rules":[{"errno":"EIO"}]}"#,
            "/nonexistent",
        ),
    ] {
        scene.write_config(WORKLOAD, Some(spec), &[]);
        let out = scene.run(id);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{spec}: created anyway");
        assert!(
            stderr.contains("iochaos-hook: ") && stderr.contains(reason),
            "{spec}: reason {reason:?} not shown"
        );
        assert!(!stdout.contains("WRITE-"), "{spec}: the workload ran");
        assert!(scene.state(id).is_none(), "{spec}: container left");
        scene.assert_clean(None);
    }
}

/// The scenarios above, one test per runtime: `TEST: RUNTIME [tools needed] => SCENARIO(tag)`.
macro_rules! per_runtime {
    ($($test:ident: $rt:ident $tools:expr => $scenario:ident($($arg:expr),*);)*) => {
        $(
            #[test]
            fn $test() {
                require(&$tools);
                $scenario(Runtime::$rt $(, $arg)*);
            }
        )*
    };
}

per_runtime! {
    runc_faults_from_first_write: Runc ["runc"] => faults_from_first_write("faults");
    runc_untouched_without_annotation: Runc ["runc"] => untouched_without_annotation("plain");
    runc_bad_annotation_fails_creation: Runc ["runc"] => bad_annotation_fails("bad");
    crun_faults_from_first_write: Crun ["crun", "unshare"] => faults_from_first_write("faults");
    crun_untouched_without_annotation: Crun ["crun", "unshare"] =>
        untouched_without_annotation("plain");
    crun_bad_annotation_fails_creation: Crun ["crun", "unshare"] => bad_annotation_fails("bad");
}

/// Registered on prestart and createRuntime both (runc runs prestart first): one injection.
#[test]
fn runc_prestart_and_create_runtime_inject_once() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    let script = format!("{WORKLOAD}; grep -c fuse.chaosfs /proc/self/mountinfo");
    scene.write_config(&script, Some(ENOSPC_SPEC), &["prestart"]);
    let out = scene.run(&scene.id("twice"));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("WRITE-FAILED"));
    assert_eq!(stdout.lines().last(), Some("1"), "one ChaosFS mount");
    scene.assert_clean(chaosfs_connection(&stdout));
}

/// The admin config: switched off, paths outside the allowed prefixes (also through a
/// symlink), containers outside the allowed ids or without the required annotation.
#[test]
fn runc_admin_config_refuses() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    std::os::unix::fs::symlink("/tmp", scene.rootfs().join("data/link")).expect("symlink");
    let cases = [
        ("enabled = false", ENOSPC_SPEC, "switched off"),
        (
            r#"allowed_paths = ["/srv"]"#,
            ENOSPC_SPEC,
            "path /data may not be faulted: allowed are /srv and below",
        ),
        (
            r#"allowed_paths = ["/data"]"#,
            r#"{"path":"/data/link","rules":[{"errno":"EIO"}]}"#,
            "resolved to /tmp",
        ),
        (
            r#"allowed_containers = ["db-*"]"#,
            ENOSPC_SPEC,
            "matches none of allowed_containers [db-*]",
        ),
        (
            "[required_annotations]\n\"test.iochaos/other\" = \"y*\"",
            ENOSPC_SPEC,
            "does not match",
        ),
        ("enabeld = true", ENOSPC_SPEC, "hook.toml: "),
    ];
    for (config, spec, reason) in cases {
        std::fs::write(scene.config_path(), config).expect("hook.toml");
        scene.write_config(WORKLOAD, Some(spec), &[]);
        let out = scene.run(&scene.id("admin"));
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{config}: created anyway");
        assert!(
            stderr.contains(reason),
            "{config}: reason {reason:?} not shown"
        );
        assert!(!stdout.contains("WRITE-"), "{config}: the workload ran");
        scene.assert_clean(None);
    }
    // Allowed: the same container runs with faults.
    std::fs::write(
        scene.config_path(),
        "allowed_paths = [\"/data\"]\nallowed_containers = [\"hook-runc-*\"]\n\
         [required_annotations]\n\"test.iochaos/other\" = \"x\"\n",
    )
    .expect("hook.toml");
    scene.write_config(WORKLOAD, Some(ENOSPC_SPEC), &[]);
    let out = scene.run(&scene.id("admin"));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("WRITE-FAILED"));
    scene.assert_clean(chaosfs_connection(&stdout));
}

/// `status`, `update` and `recover` over the Chaos API (what `iochaos` uses) on hook-started
/// injections, between `create` and `start`.
#[test]
fn runc_status_update_recover() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    let script = format!("{WORKLOAD}; while [ ! -e /data/done ]; do sleep 0.1; done");
    scene.write_config(&script, Some(ENOSPC_SPEC), &[]);
    let journal = Journal::open(scene.run_dir()).expect("journal");

    // Update: the rules change before the workload starts.
    let id1 = &scene.id("api1");
    let out_file = scene.dir.path().join("out1");
    let (status, _) = scene.create(id1, &out_file);
    assert!(status.success(), "create failed");
    let entries = journal.list().expect("journal entries");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    let server = e.server_pid.expect("server pid");
    let conn = e.mount.as_ref().and_then(|m| m.fuse_connection);
    let client = ChaosClient::connect(&journal.socket_path(&e.id)).expect("connect");
    let st = client.status().expect("status");
    assert_eq!(st.path, "/data");
    assert_eq!(st.target.container.as_deref(), Some(id1.as_str()));
    assert_eq!(st.target.namespace.as_deref(), Some("oci"));
    assert_eq!(st.rules.len(), 1);
    client
        .update_rules(r#"{"path":"/data","rules":[{"ops":["write"],"errno":"EACCES"}]}"#)
        .expect("update");
    let pid = iochaos_testsupport::json_pid(&scene.state(id1).expect("state")["pid"]);
    scene.start(id1);
    // The workload wrote and now waits for /data/done: read the counters while it lives.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out_file)
        .unwrap_or_default()
        .contains("WRITE-")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload never wrote"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = client.status().expect("status while the workload runs");
    assert_eq!(st.rules[0].injected, 1, "{st:?}");
    std::fs::write(scene.rootfs().join("data/done"), "").expect("done");
    assert!(engine::target::wait_exit(pid, Duration::from_secs(60)));
    let stdout = std::fs::read_to_string(&out_file).expect("output");
    assert!(stdout.contains("WRITE-FAILED"), "{stdout}");
    let stderr = std::fs::read_to_string(out_file.with_extension("err")).expect("stderr");
    assert!(
        stderr.contains("Permission denied"),
        "not the updated errno"
    );
    assert!(scene.delete(id1).status.success());
    // poststop waited for the server to exit (init reaps it).
    assert!(
        engine::target::wait_exit(server, Duration::ZERO),
        "server {server} runs"
    );
    scene.assert_clean(conn);

    // Recover: faults gone before the workload starts; the server exits; poststop finds
    // nothing to do.
    let id2 = &scene.id("api2");
    let out_file = scene.dir.path().join("out2");
    let (status, _) = scene.create(id2, &out_file);
    assert!(status.success(), "create failed");
    let e = journal.list().expect("journal").remove(0);
    let server = e.server_pid.expect("server pid");
    ChaosClient::connect(&journal.socket_path(&e.id))
        .expect("connect")
        .recover()
        .expect("recover");
    assert!(engine::target::wait_exit(server, Duration::from_secs(20)));
    assert_eq!(scene.run_dir_entries(), Vec::<String>::new());
    let pid = iochaos_testsupport::json_pid(&scene.state(id2).expect("state")["pid"]);
    scene.start(id2);
    assert!(engine::target::wait_exit(pid, Duration::from_secs(60)));
    let stdout = std::fs::read_to_string(&out_file).expect("output");
    assert!(stdout.contains("WRITE-OK"), "{stdout}");
    assert!(scene.delete(id2).status.success());
    scene.assert_clean(None);
}

/// Deleted before it ever started: poststop (and the server, seeing the init gone) remove
/// everything.
#[test]
fn runc_delete_without_start() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    scene.write_config(WORKLOAD, Some(ENOSPC_SPEC), &[]);
    let id = &scene.id("nostart");
    let (status, _) = scene.create(id, &scene.dir.path().join("out"));
    assert!(status.success(), "create failed");
    assert_eq!(scene.servers().len(), 1);
    let out = scene.runtime_call(&["delete", "--force", id]);
    show(&out);
    assert!(out.status.success());
    scene.assert_clean(None);
}

/// podman with the hooks.d files and `--annotation`, running `rt`.
fn podman_faults_untouched_bad(rt: Runtime) {
    let scene = Scene::new(rt);
    let out = scene.podman_run(&scene.id("pfaults"), Some(ENOSPC_SPEC), WORKLOAD);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "podman run failed");
    assert!(stdout.contains("WRITE-FAILED"));
    assert!(stderr.contains("No space left on device"));
    scene.assert_clean(chaosfs_connection(&stdout));

    let plain = Scene::new(rt);
    let out = plain.podman_run(&plain.id("pplain"), None, WORKLOAD);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "podman run failed");
    assert!(stdout.contains("WRITE-OK"));
    assert!(!stdout.contains("fuse.chaosfs"));
    assert!(
        !plain.run_dir().exists(),
        "the hook ran without the annotation"
    );

    let out = scene.podman_run(
        &scene.id("pbad"),
        Some(r#"{"path":"/data","rules":[{"ops":["write"],"errno":"EBOGUS"}]}"#),
        WORKLOAD,
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "created anyway");
    // podman shows the hook's reason from runc; from crun only crun's own line (crun
    // discards the hook's stderr and podman reads crun's error from its log file).
    let reason = match rt {
        Runtime::Runc => "iochaos-hook: createRuntime: invalid dev.iochaos.spec annotation",
        Runtime::Crun => "error executing hook",
    };
    assert!(stderr.contains(reason), "reason {reason:?} not shown");
    assert!(!stdout.contains("WRITE-"));
    scene.assert_clean(None);
}

per_runtime! {
    podman_runc_faults_untouched_bad: Runc ["podman", "runc"] => podman_faults_untouched_bad();
    podman_crun_faults_untouched_bad: Crun ["podman", "crun", "unshare"] =>
        podman_faults_untouched_bad();
}

/// A user-namespaced container (root mapped to 100000): the hook mounts from the initial user
/// namespace, files are created with the container's (host) ids.
#[test]
fn runc_user_namespace() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    let script = format!("{WORKLOAD}; echo ok > /data/g; ls -ln /data/g");
    let spec = r#"{"path":"/data","rules":[{"ops":["write"],"glob":"f","errno":"ENOSPC"}]}"#;
    scene.write_config(&script, Some(spec), &[]);
    scene.edit_config(iochaos_testsupport::add_user_namespace);
    // The mapped root must reach and own the rootfs.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scene.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let status = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(scene.bundle())
        .status()
        .expect("chown");
    assert!(status.success());
    let out = scene.run(&scene.id("userns"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run failed");
    assert!(stdout.contains("fuse.chaosfs") && stdout.contains("WRITE-FAILED"));
    assert!(stderr.contains("No space left on device"));
    // ls -ln inside shows the container's ids (0), the host sees the mapped ones.
    assert!(stdout.contains(" 0        0 "), "{stdout}");
    let md = std::fs::metadata(scene.rootfs().join("data/g")).expect("g");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid()), (100000, 100000));
    scene.assert_clean(chaosfs_connection(&stdout));
}

/// A read-only rootfs: runc remounts the root read-only after pivot_root, and the ChaosFS
/// mount (made before) still answers like the native filesystem: EROFS from the backing.
#[test]
fn runc_readonly_rootfs() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    let spec = r#"{"path":"/data","rules":[{"ops":["fsync"],"latency":"1ms"}]}"#;
    scene.write_config(WORKLOAD, Some(spec), &[]);
    scene.edit_config(|c| c["root"]["readonly"] = serde_json::json!(true));
    let out = scene.run(&scene.id("ro"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run failed");
    assert!(stdout.contains("fuse.chaosfs") && stdout.contains("WRITE-FAILED"));
    assert!(stderr.contains("Read-only file system"), "not EROFS");
    scene.assert_clean(chaosfs_connection(&stdout));
}

/// A bind-mounted volume at the path: the runtime mounts it before createRuntime, ChaosFS goes
/// on top of it, the host directory gets the files. A volume with shared propagation is
/// refused (the mount would propagate to the host's directory) unless the admin allows it.
fn volume(rt: Runtime) {
    let scene = Scene::new(rt);
    let vol = scene.dir.path().join("volume");
    std::fs::create_dir(&vol).expect("volume dir");
    let script = format!("{WORKLOAD}; echo ok > /data/g");
    let spec = r#"{"path":"/data","rules":[{"ops":["write"],"glob":"f","errno":"ENOSPC"}]}"#;
    let with_volume = |propagation: &str| {
        scene.write_config(&script, Some(spec), &[]);
        let vol = vol.display().to_string();
        scene.edit_config(|c| {
            c["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!({
                    "destination": "/data", "type": "bind", "source": vol,
                    "options": ["rbind", "rw", propagation]
                }));
        });
    };
    with_volume("rprivate");
    let out = scene.run(&scene.id("vol"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run failed");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(" /data ")).collect();
    assert_eq!(lines.len(), 2, "volume and ChaosFS on /data");
    assert!(lines[1].contains("fuse.chaosfs"), "ChaosFS is not on top");
    assert!(stderr.contains("No space left on device"));
    assert_eq!(
        std::fs::read_to_string(vol.join("g")).expect("through ChaosFS to the volume"),
        "ok\n"
    );
    scene.assert_clean(chaosfs_connection(&stdout));

    with_volume("rshared");
    let out = scene.run(&scene.id("volshared"));
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "a shared volume was faulted");
    assert!(!stdout.contains("WRITE-"));
    assert!(
        stderr.contains("shared with peer group"),
        "reason not shown"
    );
    scene.assert_clean(None);

    std::fs::write(scene.config_path(), "allow_shared_mounts = true\n").expect("hook.toml");
    let out = scene.run(&scene.id("volshared2"));
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "run failed");
    assert!(stdout.contains("WRITE-FAILED"));
    scene.assert_clean(chaosfs_connection(&stdout));
}

per_runtime! {
    runc_volume: Runc ["runc"] => volume();
    crun_volume: Crun ["crun", "unshare"] => volume();
}

/// The spec's `duration`: faults end while the container runs, and the server is gone.
#[test]
fn runc_duration() {
    require(&["runc"]);
    let scene = Scene::new(Runtime::Runc);
    let spec = r#"{"path":"/data","duration":"200ms","rules":[{"ops":["write"],"errno":"EIO"}]}"#;
    let script = "echo x > /data/f && echo OK1 || echo FAIL1; sleep 2; \
                  echo y > /data/g && echo OK2 || echo FAIL2; grep -c fuse.chaosfs /proc/self/mountinfo; true";
    scene.write_config(script, Some(spec), &[]);
    let out = scene.run(&scene.id("duration"));
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "run failed");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["FAIL1", "OK2", "0"],
        "faults did not end after 200ms"
    );
    scene.assert_clean(None);
}
