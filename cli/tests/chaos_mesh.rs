//! `iochaos convert --from chaos-mesh` and `iochaos inject --chaos-mesh` with a Chaos Mesh
//! IOChaos file, into a real process (privileged: root, FUSE, ptrace; fails without them).

mod inject_common;

use inject_common::{Env, Workload, check_data};

fn iochaos_yaml(vol: &str, extra: &str) -> String {
    format!(
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: IOChaos\nmetadata:\n  name: data-eio\n\
         spec:\n  action: fault\n  mode: one\n  volumePath: {vol}\n  path: {vol}/data\n  \
         errno: 5\n  methods: [WRITE]\n{extra}"
    )
}

#[test]
fn convert_then_inject_into_a_process() {
    let env = Env::new();
    let mut w = Workload::start(&env, "w");
    let file = env.path().join("iochaos.yaml");
    std::fs::write(&file, iochaos_yaml(w.vol_str(), "")).expect("write yaml");
    let file = file.to_str().expect("utf-8");

    let printed = env.ok(&["convert", "--from", "chaos-mesh", file]);
    let spec: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        spec,
        serde_json::json!({ "path": w.vol_str(),
            "rules": [{ "glob": "data", "ops": ["write"], "errno": "EIO" }] })
    );

    // No --path: the file's volumePath is the path.
    let id = env.ok(&["inject", "--pid", &w.pid_arg(), "--chaos-mesh", file]);
    let failed = w.log.wait_for('W', false, w.log.last_round());
    // Only `data` is selected: writes through the held fd to `held` go on working.
    w.log.wait_round(failed + 1);
    assert!(
        w.log
            .lines()
            .iter()
            .filter(|l| l.round >= failed)
            .all(|l| l.kind != 'H' || l.ok),
        "writes to held failed: the glob did not select only data"
    );
    let status = env.status();
    assert_eq!(status[0]["spec"]["rules"][0]["errno"], "EIO");
    assert_eq!(env.ok(&["recover", &id]), id);
    w.log.assert_recovered();
    env.assert_clean(&[], Some(w.pid()));
    w.stop();
    check_data(&w.vol, &w.log);
}

#[test]
fn fields_it_cannot_honour_exit_2_naming_the_field() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let pid = w.pid_arg();
    let file = env.path().join("bad.yaml");
    let file_arg = file.to_str().expect("utf-8");
    for (extra, field) in [
        (
            "  selector:\n    labelSelectors:\n      app: etcd\n",
            "spec.selector",
        ),
        ("  containerNames: [etcd]\n", "spec.containerNames"),
        ("  mode2: one\n", "mode2"),
    ] {
        std::fs::write(&file, iochaos_yaml(w.vol_str(), extra)).expect("write yaml");
        for args in [
            vec!["convert", "--from", "chaos-mesh", file_arg],
            vec!["inject", "--pid", &pid, "--chaos-mesh", file_arg],
        ] {
            let (code, err) = env.fails(&args);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
            assert!(err.contains(field), "{err:?} does not name {field}");
        }
        assert!(env.run_dir_entries().is_empty(), "journal not empty");
        assert_eq!(w.chaosfs_mounts(), 0);
    }
    let (code, err) = env.fails(&[
        "inject",
        "--pid",
        &pid,
        "--chaos-mesh",
        file_arg,
        "--errno",
        "EIO",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--chaos-mesh cannot be combined"), "{err}");
}
