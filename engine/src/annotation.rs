//! The OCI annotation that asks for faults from a container's creation (`dev.iochaos.spec`),
//! read by the OCI hook and the containerd shim alike: one parser, one set of messages.

use std::path::{Component, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The annotation key users set on a container (OCI `annotations`, a pod's annotations).
pub const ANNOTATION: &str = "dev.iochaos.spec";

/// An annotation's spec, validated: JSON the rule engine accepts, an absolute `path` without
/// `..` (as the container sees it), a `duration` the rules accept (as `iochaos inject`'s).
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub spec: Value,
    pub path: PathBuf,
    pub duration: Option<Duration>,
}

/// Why an annotation's spec was refused, in one line (without the annotation's name: the
/// caller's error says where it came from).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSpec(pub String);

/// Validate the annotation's text.
pub fn parse(text: &str) -> Result<ContainerSpec, BadSpec> {
    let bad = |reason: String| BadSpec(reason);
    let spec: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    crate::adapters::chaosfs::rule_set(&spec).map_err(|e| match e {
        // The rule engine's own words, without the engine's "invalid spec" wrapper.
        crate::Error::InvalidSpec(inner) => bad(crate::error::one_line(&*inner)),
        e => bad(crate::error::one_line(&e)),
    })?;
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
        Some(Value::String(d)) => Some(
            chaosfs::rules::Spec::parse_duration(d).map_err(|e| bad(crate::error::one_line(&e)))?,
        ),
        Some(_) => return Err(bad("\"duration\" must be a string like \"60s\"".into())),
    };
    Ok(ContainerSpec {
        spec,
        path,
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_needs_rules_the_engine_takes_and_an_absolute_path() {
        let ok =
            parse(r#"{"path":"/data","duration":"5s","rules":[{"errno":"EIO"}]}"#).expect("valid");
        assert_eq!(ok.path, PathBuf::from("/data"));
        assert_eq!(ok.duration, Some(Duration::from_secs(5)));
        for (text, needle) in [
            (r#"{"rules":[{"errno":"EIO"}]}"#, "needs a \"path\""),
            (
                r#"{"path":"data","rules":[{"errno":"EIO"}]}"#,
                "must be absolute",
            ),
            (
                r#"{"path":"/a/../b","rules":[{"errno":"EIO"}]}"#,
                "without ..",
            ),
            (r#"{"path":7,"rules":[{"errno":"EIO"}]}"#, "path"),
            (
                r#"{"path":"/d","duration":"soon","rules":[{"errno":"EIO"}]}"#,
                "\"soon\"",
            ),
            (r#"{"path":"/d","rules":[{"errno":"EBOGUS"}]}"#, "EBOGUS"),
            ("{", "EOF"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{text}: {e}");
        }
    }
}
