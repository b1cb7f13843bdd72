//! The annotation `dev.iochaos.spec` of a bundle's config.json.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// A validated spec: JSON the rule engine accepts, an absolute path without `..`.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub spec: Value,
    pub path: PathBuf,
    pub duration: Option<Duration>,
}

/// The annotations of `<bundle>/config.json`, read with `oci-spec` (the rest of the spec is
/// runc's business).
pub fn annotations(bundle: &Path) -> Result<HashMap<String, String>> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&text).map_err(|e| Error::json(&path, e))?;
    Ok(spec.annotations().clone().unwrap_or_default())
}

/// CRI's annotation telling a pod's sandbox (pause) container from its workloads.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The spec the bundle asks for, if any. A Kubernetes pod's sandbox container gets the pod's
/// annotations too (`pod_annotations`), but faults are for the workloads: it gets none.
pub fn of_bundle(bundle: &Path) -> Result<Option<Parsed>> {
    let annotations = annotations(bundle)?;
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(None);
    }
    annotations
        .get(engine::api::shim::ANNOTATION)
        .map(|s| parse(s))
        .transpose()
}

pub fn parse(text: &str) -> Result<Parsed> {
    let bad = |reason: String| Error::Annotation { reason };
    let spec: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    engine::adapters::chaosfs::rule_set(&spec).map_err(|e| bad(crate::error::one_line(&e)))?;
    let path = match spec.get("path") {
        Some(Value::String(p)) => PathBuf::from(p),
        Some(_) => return Err(bad("\"path\" must be a string".into())),
        None => return Err(bad("the spec needs a \"path\"".into())),
    };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!(
            "path {:?} must be absolute, without .. (as the container sees it)",
            path.display()
        )));
    }
    let duration = match spec.get("duration") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => {
            Some(humantime::parse_duration(d).map_err(|e| bad(format!("duration {d:?}: {e}")))?)
        }
        Some(_) => return Err(bad("\"duration\" must be a string like \"60s\"".into())),
    };
    Ok(Parsed {
        spec,
        path,
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_get_no_faults() {
        let d = tempfile::tempdir().expect("tempdir");
        let write = |annotations: &str| {
            std::fs::write(
                d.path().join("config.json"),
                format!(r#"{{"ociVersion":"1.0.2","annotations":{annotations}}}"#),
            )
            .expect("write")
        };
        let spec = r#""dev.iochaos.spec":"{\"path\":\"/d\",\"rules\":[{\"errno\":\"EIO\"}]}""#;
        write(&format!(
            r#"{{{spec},"io.kubernetes.cri.container-type":"sandbox"}}"#
        ));
        assert!(of_bundle(d.path()).expect("sandbox").is_none());
        write(&format!(
            r#"{{{spec},"io.kubernetes.cri.container-type":"container"}}"#
        ));
        assert!(of_bundle(d.path()).expect("container").is_some());
        write("{}");
        assert!(of_bundle(d.path()).expect("none").is_none());
    }

    #[test]
    fn specs() {
        let p =
            parse(r#"{"path":"/data","duration":"2s","rules":[{"ops":["write"],"errno":"EIO"}]}"#)
                .expect("valid");
        assert_eq!(p.path, PathBuf::from("/data"));
        assert_eq!(p.duration, Some(Duration::from_secs(2)));
        for bad in [
            "nope",
            r#"{"rules":[{"errno":"EIO"}]}"#,
            r#"{"path":"data","rules":[{"errno":"EIO"}]}"#,
            r#"{"path":"/a/../b","rules":[{"errno":"EIO"}]}"#,
            r#"{"path":"/a","rules":[{"ops":["write"],"errno":"ENOPE"}]}"#,
            r#"{"path":"/a","duration":5,"rules":[{"errno":"EIO"}]}"#,
            r#"{"path":"/a","rules":[]}"#,
            r#"{"path":"/a","duration":"0s","rules":[{"errno":"EIO"}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
