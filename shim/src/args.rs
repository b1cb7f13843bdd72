//! The command line containerd gives a runtime v2 shim (Go `flag` syntax: `-name value`,
//! `--name value`, `-name=value`; booleans alone), and the action after the flags.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// What containerd asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `start`: start (or find) the shim serving this container, print its address.
    Start,
    /// `delete`: clean up after a shim that is gone, print a `DeleteResponse`.
    Delete,
    /// No action: the shim daemon itself (started by `start`, listening socket on fd 3).
    Serve,
    /// `-v`: print the version.
    Version,
}

/// The parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address (`-address`).
    pub address: String,
    pub publish_binary: String,
    /// `-bundle` (given with `delete`).
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    /// `-socket`: the daemon's own socket (given by our `start`; containerd 2 passes one too).
    pub socket: Option<String>,
    /// The wrapped runc shim's ttrpc address (daemon only, given by our `start`).
    pub runc_address: Option<String>,
    /// Every argument as given, for the runc shim.
    pub raw: Vec<OsString>,
    pub action: Option<Action>,
}

impl Args {
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Serve)
    }
}

/// Parse `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Args> {
    let mut a = Args {
        raw: args.clone(),
        ..Args::default()
    };
    let strings: Vec<String> = args
        .into_iter()
        .map(|s| {
            s.into_string()
                .map_err(|s| Error::Usage(format!("argument {s:?} is not UTF-8")))
        })
        .collect::<Result<_>>()?;
    let mut it = strings.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            let action = match arg.as_str() {
                "start" => Action::Start,
                "delete" => Action::Delete,
                other => return Err(Error::Usage(format!("unknown action {other:?}"))),
            };
            if let Some(extra) = it.next() {
                return Err(Error::Usage(format!("unexpected argument {extra:?}")));
            }
            a.action = Some(action);
            break;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        match name {
            "debug" | "v" => {
                let on = match inline.as_deref() {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(v) => return Err(Error::Usage(format!("-{name}={v}: not a boolean"))),
                };
                if name == "v" {
                    if on {
                        a.action = Some(Action::Version);
                    }
                } else {
                    a.debug = on;
                }
            }
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket"
            | "runc-address" => {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| Error::Usage(format!("-{name} needs a value")))?,
                };
                match name {
                    "namespace" => a.namespace = value,
                    "id" => a.id = value,
                    "address" => a.address = value,
                    "publish-binary" => a.publish_binary = value,
                    "bundle" => a.bundle = Some(PathBuf::from(value)),
                    "runc-address" => a.runc_address = Some(value),
                    _ => a.socket = Some(value),
                }
            }
            other => return Err(Error::Usage(format!("unknown flag -{other}"))),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args> {
        parse(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn containerd_start_and_delete_lines() {
        let a = p(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .expect("start");
        assert_eq!(a.action(), Action::Start);
        assert_eq!((a.namespace.as_str(), a.id.as_str()), ("default", "c1"));
        assert!(a.debug);
        assert_eq!(a.raw.len(), 10);
        let a = p(&["--namespace=k8s.io", "-id", "c", "-bundle", "/b", "delete"]).expect("delete");
        assert_eq!(a.action(), Action::Delete);
        assert_eq!(a.bundle, Some(PathBuf::from("/b")));
        assert_eq!(p(&["-id", "c"]).expect("serve").action(), Action::Serve);
        assert_eq!(p(&["-v"]).expect("v").action(), Action::Version);
        assert!(p(&["-id"]).is_err());
        assert!(p(&["-nope", "x"]).is_err());
        assert!(p(&["start", "x"]).is_err());
        assert!(p(&["stop"]).is_err());
    }
}
