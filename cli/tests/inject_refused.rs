//! What `iochaos inject` refuses before it changes anything (docs/inject.md, "What is
//! refused"): PID 1 and iochaos's own ancestors, a target in the host's mount namespace
//! without `--host-namespace`, the root, kernel trees and pseudo filesystems, a path inside or
//! around an injected one, and a journal directory someone else could change. Every refusal is
//! one line, exit 1, with no journal entry, no mount and no stopped process left. Privileged
//! (root, FUSE, ptrace); the targets run in private mount namespaces.

mod inject_common;

use std::process::{Command, Stdio};

use inject_common::{Env, Workload, chaosfs_mounts_under, poll};

/// A refusal: exit 1, one line naming `needle`, nothing journaled, nothing mounted in `pid`'s
/// namespace.
fn refused(env: &Env, (code, err): (i32, String), needle: &str, pid: u32) {
    assert_eq!(code, 1, "exit code for: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    assert!(
        env.run_dir_entries().iter().all(|e| !e.ends_with(".json")),
        "journal entry left after {err}: {:?}",
        env.run_dir_entries()
    );
    assert_eq!(ours_mounted(env, pid), 0, "mounted after {err}");
}

fn ours_mounted(env: &Env, pid: u32) -> usize {
    chaosfs_mounts_under(pid, &env.path()).len()
}

#[test]
fn init_and_our_own_ancestors_are_never_targets() {
    let env = Env::new();
    // PID 1, and this test process (the CLI's parent: an ancestor); both even with
    // --host-namespace.
    let me = std::process::id().to_string();
    for (pid, why) in [
        ("1", "pid 1 is the init process"),
        (&me, "one of its ancestors"),
    ] {
        let (code, err) = env.fails(&[
            "inject",
            "--pid",
            pid,
            "--path",
            "/tmp",
            "--errno",
            "EIO",
            "--host-namespace",
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(env.run_dir_entries().iter().all(|e| !e.ends_with(".json")));
    }
}

/// A process in PID 1's mount namespace is refused without `--host-namespace` and injected with
/// it. So that nothing is mounted in the real host's namespace, the "host" here is a private pid
/// and mount namespace: its PID 1 is the shell below, and the workload shares its mounts.
#[test]
fn host_namespace_is_refused_unless_asked_for() {
    let env = Env::new();
    let vol = env.path().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    let log = env.path().join("log");
    let out = env.path().join("out");
    let exe = env!("CARGO_BIN_EXE_iochaos");
    // PID 1 (this shell) starts a writer, then runs iochaos against it three ways.
    let script = format!(
        r#"
        set -u
        (exec 3>>{vol}/held; i=0; while :; do i=$((i+1));
            if echo h$i >&3; then echo "H $i ok"; else echo "H $i err"; fi; sleep 0.02; done) >>{log} 2>/dev/null &
        w=$!
        while ! grep -q ok {log} 2>/dev/null; do sleep 0.01; done
        {exe} inject --pid $w --path {vol} --errno EIO --ops write >/dev/null 2>{out}.refused
        echo "refused $?" >>{out}
        if id=$({exe} inject --pid $w --path {vol} --errno EIO --ops write --host-namespace 2>{out}.allowed); then
            echo "allowed 0" >>{out}
            n=$(wc -l <{log})
            while ! tail -n +$n {log} | grep -q err; do sleep 0.01; done
            grep " {vol} .* - fuse.chaosfs " /proc/1/mountinfo >/dev/null && echo "init-sees-mount" >>{out}
            {exe} recover "$id" >/dev/null 2>{out}.recover
            echo "recover $?" >>{out}
            n=$(wc -l <{log})
            while ! tail -n +$((n+1)) {log} | grep -q ok; do sleep 0.01; done
        else
            echo "allowed $?" >>{out}
        fi
        kill $w
        echo done >>{out}
        "#,
        vol = vol.display(),
        log = log.display(),
        out = out.display(),
    );
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .envs(
            env.command(&[])
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    // Killing unshare's child (PID 1 there) ends everything in that pid namespace.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Kill(child);
    let status = poll("the host-namespace scenario to finish", 120, || {
        guard.0.try_wait().expect("try_wait")
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let read = |suffix: &str| {
        std::fs::read_to_string(format!("{}.{suffix}", out.display())).unwrap_or_default()
    };
    assert!(status.success(), "scenario failed ({status}): {text}");
    let refusal = read("refused");
    assert!(text.contains("refused 1"), "{text}\n{refusal}");
    assert!(
        refusal.contains("host's mount namespace") && refusal.contains("--host-namespace"),
        "{refusal}"
    );
    assert_eq!(refusal.trim_end().lines().count(), 1, "{refusal:?}");
    assert!(
        text.contains("allowed 0"),
        "{text}\n{}\nserver log:\n{}",
        read("allowed"),
        env.server_log()
    );
    assert!(text.contains("init-sees-mount"), "{text}");
    assert!(text.contains("recover 0"), "{text}\n{}", read("recover"));
    assert!(text.contains("done"), "{text}");
    assert!(env.run_dir_entries().iter().all(|e| !e.ends_with(".json")));
    // PID 1 (the shell) was left out of the swap: the server says so.
    assert!(
        env.server_log().contains("left out of the swap"),
        "{}",
        env.server_log()
    );
}

#[test]
fn kernel_trees_the_root_and_nested_paths_are_refused() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let pid = w.pid_arg();
    for path in [
        "/",
        "/proc",
        "/proc/self",
        "/sys",
        "/dev",
        "/dev/shm",
        "/sys/fs/cgroup",
    ] {
        refused(
            &env,
            env.fails(&["inject", "--pid", &pid, "--path", path, "--errno", "EIO"]),
            "refusing to inject there",
            w.pid(),
        );
    }
    // A pseudo filesystem outside the kernel trees: a cgroup2 mount in the target's namespace.
    let cg = w.vol.join("cg");
    std::fs::create_dir(&cg).expect("mkdir");
    let status = Command::new("nsenter")
        .args(["-t", &pid, "-m", "mount", "-t", "cgroup2", "none"])
        .arg(&cg)
        .status()
        .expect("nsenter mount");
    assert!(status.success(), "mounting cgroup2 in the target");
    let cg_s = cg.to_str().expect("utf-8");
    refused(
        &env,
        env.fails(&["inject", "--pid", &pid, "--path", cg_s, "--errno", "EIO"]),
        "cgroup2",
        w.pid(),
    );
    let status = Command::new("nsenter")
        .args(["-t", &pid, "-m", "umount"])
        .arg(&cg)
        .status()
        .expect("nsenter umount");
    assert!(status.success());

    // Inside and around an injected path.
    let sub = w.vol.join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let id = w.inject(&env, &["--errno", "EIO", "--ops", "fsync"]);
    let inside = sub.to_str().expect("utf-8");
    let (code, err) = env.fails(&["inject", "--pid", &pid, "--path", inside, "--errno", "EIO"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("lies inside") && err.contains(&id),
        "inside: {err}"
    );
    let parent = w.vol.parent().expect("parent").to_str().expect("utf-8");
    let (code, err) = env.fails(&["inject", "--pid", &pid, "--path", parent, "--errno", "EIO"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("contains") && err.contains(&id),
        "parent: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    // Still exactly one injection and one mount.
    assert_eq!(env.status().len(), 1);
    assert_eq!(ours_mounted(&env, w.pid()), 1);
    env.ok(&["recover", &id]);
    assert_eq!(env.run_dir_entries(), Vec::<String>::new());
    assert_eq!(ours_mounted(&env, w.pid()), 0);
}

#[test]
fn a_journal_directory_another_user_owns_is_refused() {
    let env = Env::new();
    std::fs::create_dir(&env.run).expect("mkdir run");
    std::os::unix::fs::chown(&env.run, Some(1000), Some(1000)).expect("chown");
    // A planted entry the root recover must never act on.
    std::fs::write(env.run.join("0000000000aa.json"), "{}").expect("plant");
    for args in [&["status"][..], &["recover", "--all"][..]] {
        let (code, err) = env.fails(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("refusing to trust it"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    }
    let md = std::fs::metadata(&env.run).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.uid(), 1000, "ownership untouched");
    assert!(
        env.run.join("0000000000aa.json").exists(),
        "entry untouched"
    );
    // Let Env's drop find nothing to recover.
    std::fs::remove_dir_all(&env.run).expect("cleanup");
}
