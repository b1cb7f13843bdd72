//! The admin configuration, `/etc/iochaos/hook.toml` (or `$IOCHAOS_HOOK_CONFIG`). A missing
//! file means the defaults: annotation-driven faults on, any path, any container. It is read
//! only for containers that carry the annotation.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobMatcher};

use crate::error::{Error, Result};

/// The default location.
pub const DEFAULT_PATH: &str = "/etc/iochaos/hook.toml";

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    allowed_paths: Option<Vec<PathBuf>>,
    #[serde(default)]
    allowed_containers: Option<Vec<String>>,
    #[serde(default)]
    required_annotations: BTreeMap<String, String>,
    #[serde(default)]
    allow_shared_mounts: bool,
    #[serde(default)]
    server_log: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// The validated admin configuration.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Where it was read from (named in every refusal).
    pub source: PathBuf,
    /// False: every container carrying the annotation fails to be created.
    pub enabled: bool,
    /// Absolute path prefixes (whole components) that may be faulted; `None`: any path.
    pub allowed_paths: Option<Vec<PathBuf>>,
    /// Container id globs, one of which must match; `None`: any container.
    allowed_containers: Option<Vec<(String, GlobMatcher)>>,
    /// Annotations the container must carry, each with a value glob.
    required_annotations: Vec<(String, String, GlobMatcher)>,
    /// Allow a path on a shared mount (the mount then propagates to its peers).
    pub allow_shared_mounts: bool,
    /// Where injection servers write their log (default: nowhere).
    pub server_log: Option<PathBuf>,
}

impl HookConfig {
    /// Read `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<HookConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => HookConfig::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HookConfig::parse(path, ""),
            Err(source) => Err(Error::io(path, source)),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<HookConfig> {
        let bad = |reason: String| Error::AdminConfig {
            path: path.to_owned(),
            reason,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
        let glob = |what: &str, g: &str| {
            Glob::new(g)
                .map(|g| g.compile_matcher())
                .map_err(|e| bad(format!("{what} {g:?}: {e}")))
        };
        if let Some(paths) = &raw.allowed_paths {
            for p in paths {
                if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                    return Err(bad(format!(
                        "allowed_paths entry {} must be absolute, without ..",
                        p.display()
                    )));
                }
            }
        }
        Ok(HookConfig {
            source: path.to_owned(),
            enabled: raw.enabled,
            allowed_paths: raw.allowed_paths,
            allowed_containers: raw
                .allowed_containers
                .map(|v| {
                    v.iter()
                        .map(|g| Ok((g.clone(), glob("allowed_containers glob", g)?)))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?,
            required_annotations: raw
                .required_annotations
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.clone(), glob("required_annotations glob", v)?)))
                .collect::<Result<Vec<_>>>()?,
            allow_shared_mounts: raw.allow_shared_mounts,
            server_log: raw.server_log,
        })
    }

    /// May container `id` with `annotations` be faulted at all?
    pub fn check_container(&self, id: &str, annotations: &BTreeMap<String, String>) -> Result<()> {
        if !self.enabled {
            return Err(Error::Disabled {
                config: self.source.clone(),
            });
        }
        let denied = |why: String| Error::ContainerDenied {
            id: id.to_owned(),
            why,
            config: self.source.clone(),
        };
        if let Some(globs) = &self.allowed_containers
            && !globs.iter().any(|(_, m)| m.is_match(id))
        {
            let list: Vec<&str> = globs.iter().map(|(g, _)| g.as_str()).collect();
            return Err(denied(format!(
                "its id matches none of allowed_containers [{}]",
                list.join(", ")
            )));
        }
        for (key, pattern, m) in &self.required_annotations {
            match annotations.get(key) {
                Some(v) if m.is_match(v) => {}
                Some(v) => {
                    return Err(denied(format!(
                        "annotation {key}={v:?} does not match {pattern:?}"
                    )));
                }
                None => {
                    return Err(denied(format!(
                        "it lacks the required annotation {key} (matching {pattern:?})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// May `path` (absolute, as the container sees it) be faulted? Checked on the spec's path
    /// before anything starts, and again on the path resolved inside the container (symlinks
    /// followed) before mounting.
    pub fn check_path(&self, path: &Path) -> Result<()> {
        match &self.allowed_paths {
            None => Ok(()),
            Some(allowed) => check_path(allowed, &self.source, path),
        }
    }
}

/// Is `path` under one of the `allowed` prefixes (whole components, no `..`)? `config` is
/// named in the refusal.
pub fn check_path(allowed: &[PathBuf], config: &Path, path: &Path) -> Result<()> {
    let lexical: PathBuf = path.components().collect();
    let ok = !lexical.components().any(|c| c == Component::ParentDir)
        && allowed.iter().any(|p| lexical.starts_with(p));
    if ok {
        return Ok(());
    }
    Err(Error::PathDenied {
        path: path.to_owned(),
        allowed: if allowed.is_empty() {
            "none (allowed_paths = [])".to_owned()
        } else {
            allowed
                .iter()
                .map(|p| format!("{} and below", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        },
        config: config.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> HookConfig {
        HookConfig::parse(Path::new("/t/hook.toml"), text).expect("valid config")
    }

    #[test]
    fn defaults_allow_everything() {
        let c = cfg("");
        assert!(c.enabled);
        c.check_container("any", &BTreeMap::new()).expect("allowed");
        c.check_path(Path::new("/anything")).expect("allowed");
    }

    #[test]
    fn missing_file_is_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = HookConfig::load(&dir.path().join("none.toml")).expect("defaults");
        assert!(c.enabled && c.allowed_paths.is_none());
    }

    #[test]
    fn disabled() {
        let e = cfg("enabled = false")
            .check_container("c", &BTreeMap::new())
            .expect_err("disabled");
        assert!(e.to_string().contains("switched off"), "{e}");
    }

    #[test]
    fn paths_are_whole_component_prefixes() {
        let c = cfg(r#"allowed_paths = ["/data", "/var/lib/app"]"#);
        c.check_path(Path::new("/data")).expect("allowed");
        c.check_path(Path::new("/data/x/y")).expect("allowed");
        c.check_path(Path::new("/var/lib/app/")).expect("allowed");
        for p in ["/database", "/etc", "/data/../etc", "/"] {
            let e = c.check_path(Path::new(p)).expect_err(p);
            assert!(e.to_string().contains("/data and below"), "{e}");
        }
        let e = cfg("allowed_paths = []")
            .check_path(Path::new("/data"))
            .expect_err("none allowed");
        assert!(e.to_string().contains("none"), "{e}");
    }

    #[test]
    fn containers_by_id_and_annotation() {
        let c = cfg(r#"
            allowed_containers = ["test-*", "db"]
            [required_annotations]
            "chaos.example/allowed" = "yes*"
        "#);
        let mut a = BTreeMap::new();
        a.insert("chaos.example/allowed".to_owned(), "yes-please".to_owned());
        c.check_container("test-1", &a).expect("allowed");
        c.check_container("db", &a).expect("allowed");
        let e = c.check_container("prod", &a).expect_err("id");
        assert!(
            e.to_string().contains("allowed_containers [test-*, db]"),
            "{e}"
        );
        let e = c
            .check_container("db", &BTreeMap::new())
            .expect_err("annotation");
        assert!(
            e.to_string().contains("lacks the required annotation"),
            "{e}"
        );
        a.insert("chaos.example/allowed".to_owned(), "no".to_owned());
        assert!(c.check_container("db", &a).is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        for text in [
            "enabeld = true",
            "allowed_paths = [\"data\"]",
            "allowed_containers = [\"[\"]",
            "enabled = 1",
        ] {
            let e = HookConfig::parse(Path::new("/t/hook.toml"), text).expect_err(text);
            assert!(e.to_string().starts_with("/t/hook.toml: "), "{e}");
        }
    }
}
