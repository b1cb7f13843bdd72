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
    /// Every stage, in the order of a container's life.
    pub const ALL: [Stage; 6] = [
        Stage::Prestart,
        Stage::CreateRuntime,
        Stage::CreateContainer,
        Stage::StartContainer,
        Stage::Poststart,
        Stage::Poststop,
    ];

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

pub use oci_spec::runtime::{Spec, State};

/// The OCI state a runtime writes on a hook's stdin (runtime-spec `runtime.md`, "State"),
/// read with `oci-spec`. Unknown fields are ignored: runtimes add their own.
pub fn read_state(r: impl Read) -> Result<State> {
    serde_json::from_reader(r).map_err(Error::State)
}

/// The bundle's `<bundle>/config.json`, read with `oci-spec` (only `root` and `annotations`
/// are used).
pub fn read_config(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text)
        .map_err(|source| Error::Engine(engine::Error::Json { path, source }))
}

/// The container's root filesystem as an absolute path (a relative `root.path` is relative
/// to the bundle).
pub fn rootfs(config: &Spec, bundle: &Path) -> PathBuf {
    match config.root() {
        Some(r) if r.path().is_absolute() => r.path().clone(),
        Some(r) => bundle.join(r.path()),
        None => bundle.join("rootfs"),
    }
}

/// The state with the bundle's config.json, read at most once and only when needed.
#[derive(Debug)]
pub struct Container {
    pub state: State,
    config: Option<Spec>,
}

impl Container {
    pub fn new(state: State) -> Container {
        Container {
            state,
            config: None,
        }
    }

    /// config.json, read on first use.
    pub fn config(&mut self) -> Result<&Spec> {
        let config = match self.config.take() {
            Some(c) => c,
            None => read_config(self.state.bundle())?,
        };
        Ok(self.config.insert(config))
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.state.id()
    }

    /// The pid of the container's init, if the state names a live one.
    pub fn pid(&self) -> Option<u32> {
        self.state
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// The container's root filesystem (absolute).
    pub fn rootfs(&mut self) -> Result<PathBuf> {
        let bundle = self.state.bundle().clone();
        Ok(rootfs(self.config()?, &bundle))
    }

    /// The container's annotations: from the state when the runtime put them there (no file
    /// is read), else from config.json.
    pub fn annotations(&mut self) -> Result<BTreeMap<String, String>> {
        if let Some(a) = self.state.annotations() {
            return Ok(a.clone().into_iter().collect());
        }
        Ok(self
            .config()?
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    /// The value of annotation `key`, if the container carries it.
    pub fn annotation(&mut self, key: &str) -> Result<Option<String>> {
        if let Some(a) = self.state.annotations() {
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
            .annotations()
            .as_ref()
            .and_then(|a| a.get(key).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip() {
        for s in Stage::ALL {
            assert_eq!(s.name().parse::<Stage>().ok(), Some(s));
        }
        assert!("create_runtime".parse::<Stage>().is_err());
    }

    #[test]
    fn state_from_runc() {
        let s = read_state(
            br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"created","pid":42,
                "bundle":"/b","annotations":{"dev.iochaos.spec":"{}"},"extra":1}"#
                .as_slice(),
        )
        .expect("state");
        assert_eq!(*s.pid(), Some(42));
        let mut c = Container::new(s);
        assert_eq!(
            c.annotation(crate::ANNOTATION).expect("annotation"),
            Some("{}".into())
        );
        // Present annotations without ours: answered without reading config.json (/b does
        // not exist).
        let mut c = Container::new(
            read_state(br#"{"id":"c","bundle":"/b","annotations":{"a":"b"}}"#.as_slice())
                .expect("state"),
        );
        assert_eq!(c.annotation(crate::ANNOTATION).expect("no read"), None);
    }

    #[test]
    fn rootfs_relative_to_bundle() {
        let c: Spec = serde_json::from_str(r#"{"root":{"path":"rootfs"}}"#).expect("config");
        assert_eq!(rootfs(&c, Path::new("/b")), PathBuf::from("/b/rootfs"));
        let c: Spec = serde_json::from_str(r#"{"root":{"path":"/r"}}"#).expect("config");
        assert_eq!(rootfs(&c, Path::new("/b")), PathBuf::from("/r"));
    }
}
