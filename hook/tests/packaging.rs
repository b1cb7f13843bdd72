//! The files in packaging/ are what the hook accepts: the hook.toml example parses, the
//! hooks.d and config.json snippets name real stages and the annotation.

use std::path::Path;

use iochaos_hook::config::HookConfig;
use iochaos_hook::oci::Stage;
use serde_json::Value;

const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging");

fn json(rel: &str) -> Value {
    let p = Path::new(PACKAGING).join(rel);
    serde_json::from_slice(&std::fs::read(&p).expect("packaging file")).expect("valid JSON")
}

#[test]
fn hook_toml_example_parses() {
    let p = Path::new(PACKAGING).join("etc/iochaos/hook.toml");
    let c = HookConfig::load(&p).expect("example config");
    assert!(c.enabled);
    c.check_path(Path::new("/data/db")).expect("allowed path");
    assert!(c.check_path(Path::new("/etc")).is_err());
}

#[test]
fn podman_hooks_run_only_with_the_annotation() {
    for stage in ["createRuntime", "poststop"] {
        let h = json(&format!("podman/hooks.d/iochaos-{stage}.json"));
        assert_eq!(h["version"], "1.0.0");
        assert_eq!(h["stages"], serde_json::json!([stage]));
        assert_eq!(h["hook"]["args"][1], stage);
        stage.parse::<Stage>().expect("a stage the hook knows");
        let when = h["when"]["annotations"]
            .as_object()
            .expect("when.annotations");
        assert_eq!(when.len(), 1);
        let (key, value) = when.iter().next().expect("one");
        assert_eq!(key, r"^dev\.iochaos\.spec$");
        assert_eq!(value, ".*");
        assert_eq!(h["hook"]["path"], "/usr/bin/iochaos-hook");
    }
}

#[test]
fn config_json_snippet_names_known_stages() {
    let h = json("oci/hooks.json");
    let hooks = h["hooks"].as_object().expect("hooks");
    for (stage, list) in hooks {
        let s: Stage = stage.parse().expect("known stage");
        assert_ne!(
            s.action(),
            iochaos_hook::oci::Action::Nothing,
            "{stage} does nothing"
        );
        assert_eq!(list[0]["args"][1], stage.as_str());
    }
}
