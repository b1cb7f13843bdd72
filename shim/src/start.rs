//! `start`: start runc's shim for the container (the same command line, environment, working
//! directory and stdin containerd gave us), then our own daemon in front of it, and print our
//! address. Containers of one group (a Kubernetes pod) share one daemon, as they share one runc
//! shim.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::error::{Error, Result};

/// The file in the bundle that names the runc shim's address (ours is in `address`).
pub const RUNC_ADDRESS_FILE: &str = "iochaos-runc-address";
/// Where shim sockets live (as for runc's shim: containerd 1.6 `shim.SocketAddress`).
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// Annotations that put containers in one shim, in runc's order.
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The wrapped runc shim: `$IOCHAOS_RUNC_SHIM`, default `containerd-shim-runc-v2` on `PATH`.
pub fn runc_shim() -> String {
    std::env::var("IOCHAOS_RUNC_SHIM")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "containerd-shim-runc-v2".into())
}

/// Run the wrapped runc shim with containerd's arguments in `bundle`, `input` on its stdin;
/// its name (for errors) and its output.
pub fn run_runc_shim(args: &Args, bundle: &Path, input: &[u8]) -> Result<(String, Output)> {
    let runc = runc_shim();
    let spawn_error = |source: std::io::Error| Error::Spawn {
        what: runc.clone(),
        source,
    };
    let mut child = Command::new(&runc)
        .args(&args.raw)
        .current_dir(bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| Error::io("the runc shim's stdin", e))?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    Ok((runc, out))
}

/// What `start` prints: containerd 1.6 reads a bare address; containerd 2 may get JSON
/// bootstrap parameters from a newer runc shim, whose address we replace with ours.
fn answer(runc_output: &str, ours: &str) -> (String, String) {
    let out = runc_output.trim();
    if out.starts_with('{')
        && let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(out)
        && let Some(Value::String(runc)) = m.get("address").cloned()
    {
        m.insert("address".into(), Value::String(ours.into()));
        return (runc, Value::Object(m).to_string());
    }
    (out.to_owned(), ours.to_owned())
}

/// Run `start`; returns what to print.
pub fn start(args: &Args) -> Result<String> {
    let bundle = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let mut opts = Vec::new();
    std::io::stdin()
        .read_to_end(&mut opts)
        .map_err(|e| Error::io("stdin", e))?;

    let (runc, out) = run_runc_shim(args, &bundle, &opts)?;
    if !out.status.success() {
        return Err(Error::RuncShim {
            binary: runc,
            action: "start",
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_owned(),
        });
    }
    let ours = socket_address(args, &group(&bundle, &args.id));
    let (runc_address, printed) = answer(&String::from_utf8_lossy(&out.stdout), &ours);
    write_atomic(&bundle.join(RUNC_ADDRESS_FILE), &runc_address)?;

    let path = PathBuf::from(ours.trim_start_matches("unix://"));
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            // The group's daemon runs already.
            write_atomic(&bundle.join("address"), &ours)?;
            return Ok(printed);
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    let mut cmd = Command::new(&exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ])
    .args([
        "-publish-binary",
        &args.publish_binary,
        "-runc-address",
        &runc_address,
    ])
    .args(["-socket", &ours])
    .current_dir(&bundle)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if args.debug {
        cmd.arg("-debug");
    }
    crate::sys::daemon_child(&mut cmd, listener.as_raw_fd());
    if let Err(source) = cmd.spawn() {
        let _ = std::fs::remove_file(&path);
        return Err(Error::Spawn {
            what: exe.display().to_string(),
            source,
        });
    }
    // The daemon is not waited for: it outlives us, and is reparented when we exit.
    drop(listener);
    write_atomic(&bundle.join("address"), &ours)?;
    Ok(printed)
}

/// The container's group: runc's group labels, else its own id.
fn group(bundle: &Path, id: &str) -> String {
    let Ok(annotations) = crate::spec::annotations(bundle) else {
        return id.to_owned();
    };
    GROUP_LABELS
        .iter()
        .find_map(|l| annotations.get(*l))
        .map_or_else(|| id.to_owned(), String::clone)
}

/// Our socket: like runc's shim (`unix:///run/containerd/s/<sha256>`), hashed from
/// containerd's address, the namespace, the group, and our name, so it is never runc's.
fn socket_address(args: &Args, group: &str) -> String {
    let mut h = Sha256::new();
    h.update(
        Path::new(&args.address)
            .join(&args.namespace)
            .join(group)
            .join(engine::api::shim::BINARY)
            .as_os_str()
            .as_encoded_bytes(),
    );
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

/// Write `text` to `path` through a temp file and a rename (mode 0600).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_containerd_s_format() {
        assert_eq!(
            answer("unix:///run/containerd/s/abc\n", "unix:///x"),
            ("unix:///run/containerd/s/abc".into(), "unix:///x".into())
        );
        let (runc, ours) = answer(
            r#"{"version":3,"address":"unix:///r","protocol":"ttrpc"}"#,
            "unix:///x",
        );
        assert_eq!(runc, "unix:///r");
        let v: Value = serde_json::from_str(&ours).expect("json");
        assert_eq!(v["address"], "unix:///x");
        assert_eq!(v["version"], 3);
    }

    #[test]
    fn our_socket_is_not_runcs_and_fits() {
        let a = Args {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            ..Args::default()
        };
        let s = socket_address(&a, "c1");
        assert!(s.len() - "unix://".len() < 108, "{s}");
        assert_ne!(s, socket_address(&a, "c2"));
    }
}
