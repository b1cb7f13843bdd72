//! What the hook reads from the runtime: the stage name, the OCI state on stdin, and the
//! bundle's `config.json` (only the annotations and the root path).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// An OCI hook stage (runtime-spec `config.md`, "POSIX-platform Hooks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::CreateContainer => "createContainer",
            Stage::StartContainer => "startContainer",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    /// What the hook does at this stage.
    pub fn action(self) -> Action {
        match self {
            Stage::CreateRuntime | Stage::Prestart => Action::Inject,
            Stage::Poststop => Action::Cleanup,
            Stage::CreateContainer | Stage::StartContainer | Stage::Poststart => Action::Nothing,
        }
    }
}

impl FromStr for Stage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Stage> {
        Ok(match s {
            "prestart" => Stage::Prestart,
            "createRuntime" => Stage::CreateRuntime,
            "createContainer" => Stage::CreateContainer,
            "startContainer" => Stage::StartContainer,
            "poststart" => Stage::Poststart,
            "poststop" => Stage::Poststop,
            _ => return Err(Error::UnknownStage(s.to_owned())),
        })
    }
}

/// What a stage is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Mount ChaosFS before the workload runs (`createRuntime`; `prestart` for runtimes or
    /// hook registrations without it).
    Inject,
    /// Remove the container's injections (`poststop`).
    Cleanup,
    /// Exit 0 at once.
    Nothing,
}

/// The OCI state a runtime writes on a hook's stdin (runtime-spec `runtime.md`, "State").
/// Unknown fields are ignored: runtimes add their own.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion", default)]
    pub oci_version: String,
    pub id: String,
    #[serde(default)]
    pub status: String,
    /// The container's init process (absent or 0 once it is gone).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// runc and crun copy config.json's annotations here; when absent, config.json is read.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl State {
    pub fn read(r: impl Read) -> Result<State> {
        serde_json::from_reader(r).map_err(Error::State)
    }
}

/// What the hook uses of the bundle's `config.json` (other fields are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct BundleConfig {
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Root {
    pub path: PathBuf,
}

impl BundleConfig {
    /// `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<BundleConfig> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text)
            .map_err(|source| Error::Engine(engine::Error::Json { path, source }))
    }

    /// The container's root filesystem as an absolute path (a relative `root.path` is
    /// relative to the bundle).
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        match &self.root {
            Some(r) if r.path.is_absolute() => r.path.clone(),
            Some(r) => bundle.join(&r.path),
            None => bundle.join("rootfs"),
        }
    }
}

/// The state with the bundle's config.json, read at most once and only when needed.
#[derive(Debug)]
pub struct Container {
    pub state: State,
    config: Option<BundleConfig>,
}

impl Container {
    pub fn new(state: State) -> Container {
        Container {
            state,
            config: None,
        }
    }

    /// config.json, read on first use.
    pub fn config(&mut self) -> Result<&BundleConfig> {
        if self.config.is_none() {
            self.config = Some(BundleConfig::read(&self.state.bundle)?);
        }
        Ok(self.config.get_or_insert_default())
    }

    /// The container's annotations: from the state when the runtime put them there (no file
    /// is read), else from config.json.
    pub fn annotations(&mut self) -> Result<BTreeMap<String, String>> {
        if let Some(a) = &self.state.annotations {
            return Ok(a.clone());
        }
        Ok(self.config()?.annotations.clone().unwrap_or_default())
    }

    /// The value of annotation `key`, if the container carries it.
    pub fn annotation(&mut self, key: &str) -> Result<Option<String>> {
        if let Some(a) = &self.state.annotations {
            if let Some(v) = a.get(key) {
                return Ok(Some(v.clone()));
            }
            // runc and crun copy every annotation into the state: not there means not set.
            if !a.is_empty() {
                return Ok(None);
            }
        }
        Ok(self
            .config()?
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip() {
        for s in [
            Stage::Prestart,
            Stage::CreateRuntime,
            Stage::CreateContainer,
            Stage::StartContainer,
            Stage::Poststart,
            Stage::Poststop,
        ] {
            assert_eq!(s.name().parse::<Stage>().ok(), Some(s));
        }
        assert!("create_runtime".parse::<Stage>().is_err());
    }

    #[test]
    fn state_from_runc() {
        let s = State::read(
            br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"created","pid":42,
                "bundle":"/b","annotations":{"dev.iochaos.spec":"{}"},"extra":1}"#
                .as_slice(),
        )
        .expect("state");
        assert_eq!(s.pid, Some(42));
        let mut c = Container::new(s);
        assert_eq!(
            c.annotation(crate::ANNOTATION).expect("annotation"),
            Some("{}".into())
        );
        // Present annotations without ours: answered without reading config.json (/b does
        // not exist).
        let mut c = Container::new(
            State::read(br#"{"id":"c","bundle":"/b","annotations":{"a":"b"}}"#.as_slice())
                .expect("state"),
        );
        assert_eq!(c.annotation(crate::ANNOTATION).expect("no read"), None);
    }

    #[test]
    fn rootfs_relative_to_bundle() {
        let c: BundleConfig =
            serde_json::from_str(r#"{"root":{"path":"rootfs"}}"#).expect("config");
        assert_eq!(c.rootfs(Path::new("/b")), PathBuf::from("/b/rootfs"));
        let c: BundleConfig = serde_json::from_str(r#"{"root":{"path":"/r"}}"#).expect("config");
        assert_eq!(c.rootfs(Path::new("/b")), PathBuf::from("/r"));
    }
}
