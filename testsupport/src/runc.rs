//! runc containers of a bundle, with their own state directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// A bind mount for a runc bundle: (host source, destination, read-only).
pub type Bind<'a> = (&'a Path, &'a str, bool);

/// runc containers with their own state directory, deleted (`runc delete -f`) on drop. Needs
/// root and runc; the test fails without them.
pub struct Runc {
    /// runc's `--root`.
    pub state: PathBuf,
    ids: Vec<String>,
}

impl Runc {
    /// runc with its state in `state` (created by runc).
    pub fn new(state: PathBuf) -> Runc {
        Runc {
            state,
            ids: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.state).stdin(Stdio::null());
        c
    }

    /// Write BUNDLE/config.json (from `runc spec`: `args`, the root read-only if `readonly`,
    /// `binds` and `env` added, then `edit` applied last, e.g. for a user namespace; `|_| {}`
    /// for none) and `runc run -d` it; the container's init pid.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        id: &str,
        bundle: &Path,
        args: &[&str],
        readonly: bool,
        binds: &[Bind<'_>],
        env: &[String],
        edit: impl FnOnce(&mut Value),
    ) -> u32 {
        let mut c = spec(bundle);
        c["process"]["terminal"] = Value::Bool(false);
        c["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        if let Some(e) = c["process"]["env"].as_array_mut() {
            e.extend(env.iter().map(|v| Value::from(v.as_str())));
        }
        c["root"]["readonly"] = Value::Bool(readonly);
        if let Some(m) = c["mounts"].as_array_mut() {
            for (src, dst, ro) in binds {
                m.push(serde_json::json!({
                    "destination": dst,
                    "type": "bind",
                    "source": src,
                    "options": ["rbind", if *ro { "ro" } else { "rw" }],
                }));
            }
        }
        edit(&mut c);
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&c).expect("json"),
        )
        .expect("write config.json");
        // Detached, runc hands its stdio to the container: a pipe would never see EOF.
        let err_path = bundle.join("runc.err");
        let err = std::fs::File::create(&err_path).expect("runc.err");
        let status = self
            .cmd()
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .expect("runc run");
        assert!(
            status.success(),
            "runc run: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        self.ids.push(id.to_owned());
        self.pid(id)
    }

    /// The init pid of container `id` (`runc state`).
    pub fn pid(&self, id: &str) -> u32 {
        let out = self.cmd().args(["state", id]).output().expect("runc state");
        let v: Value = serde_json::from_slice(&out.stdout).expect("runc state JSON");
        v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .expect("pid")
    }

    /// `runc delete -f ID`.
    pub fn delete(&mut self, id: &str) {
        let _ = self.cmd().args(["delete", "-f", id]).output();
        self.ids.retain(|i| i != id);
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            let _ = self.cmd().args(["delete", "-f", &id]).output();
        }
    }
}

/// Give an OCI config its own user namespace whose root is host uid and gid 100000 (65536 ids
/// mapped); for [`Runc::run`]'s `edit`.
pub fn add_user_namespace(config: &mut Value) {
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(serde_json::json!({ "type": "user" }));
    let map = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
    config["linux"]["uidMappings"] = map.clone();
    config["linux"]["gidMappings"] = map;
}

/// `runc spec --bundle BUNDLE`: the default config, parsed.
fn spec(bundle: &Path) -> Value {
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle)
        .output()
        .expect("runc must be installed");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(bundle.join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config.json is JSON")
}
