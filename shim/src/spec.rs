//! The annotation `dev.iochaos.spec` of a bundle's config.json.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// A validated spec (the hook's parser: [`engine::annotation::parse`]).
pub type Parsed = engine::annotation::ContainerSpec;

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
    engine::annotation::parse(text).map_err(|e| Error::Annotation { reason: e.0 })
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
    fn a_bad_spec_is_an_invalid_argument_naming_the_annotation() {
        // What is valid is engine::annotation's (tested there); here only how the shim says it.
        let e = parse(r#"{"path":"data","rules":[{"errno":"EIO"}]}"#).expect_err("relative");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        let text = e.to_string();
        assert!(
            text.starts_with("annotation dev.iochaos.spec: ") && text.contains("must be absolute"),
            "{text}"
        );
        assert!(parse(r#"{"path":"/d","rules":[{"errno":"EIO"}]}"#).is_ok());
    }
}
