//! The CONTAINER argument of `inject`, `recover`, `status` and `update`, one syntax for all
//! four: `docker://NAME_OR_ID`, `podman://NAME_OR_ID`, `cri://ID`, `k8s://NAMESPACE/POD[/CONTAINER]`,
//! `containerd://[NAMESPACE/]ID`, or a plain containerd id (or injection id) with `--namespace`.

use std::path::Path;

use anyhow::Context;
use engine::runtimes::{RuntimeContainer, cri, docker, podman};

use crate::args::Usage;

/// A CONTAINER argument, resolved to what the journal records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The containerd id, or the runtime's full id; for a plain argument, also an injection id.
    pub id: String,
    /// The containerd namespace, or the runtime (`docker`, `podman`, `cri`).
    pub namespace: String,
    /// For `docker://`, `podman://`, `cri://` and `k8s://`: what the runtime said (its init pid, if it runs).
    pub runtime: Option<RuntimeContainer>,
}

/// containerd's CRI plugin keeps its containers in this containerd namespace, under their CRI id.
const CRI_CONTAINERD_NAMESPACE: &str = "k8s.io";

impl Named {
    /// The namespace status, update and recover look the container up in: for a CRI container
    /// whose task runs on the iochaos shim (RuntimeClass `iochaos`), the shim's `k8s.io` under
    /// `state_dir`; otherwise the one resolved (`cri` for containers iochaos injected by pid).
    pub fn lookup_namespace(&self, state_dir: &Path) -> &str {
        let on_shim = || {
            engine::api::shim::client(state_dir, CRI_CONTAINERD_NAMESPACE, &self.id)
                .is_ok_and(|c| c.is_some())
        };
        if self.runtime.as_ref().is_some_and(|r| r.runtime == "cri") && on_shim() {
            CRI_CONTAINERD_NAMESPACE
        } else {
            &self.namespace
        }
    }
}

/// The schemes a CONTAINER may start with.
const SCHEMES: &str = "docker://, podman://, cri://, k8s://, containerd://";

/// Resolve `arg`; `namespace` is `--namespace` (for a plain id or `containerd://ID`).
/// `docker://`, `podman://`, `cri://` and `k8s://` ask the runtime (its errors exit 1); an unknown scheme is a usage
/// error (exit 2).
pub fn resolve(arg: &str, namespace: &str) -> anyhow::Result<Named> {
    let Some((scheme, rest)) = arg.split_once("://") else {
        return Ok(Named {
            id: arg.to_owned(),
            namespace: namespace.to_owned(),
            runtime: None,
        });
    };
    if rest.is_empty() {
        return Err(Usage(format!("{arg:?} names no container")).into());
    }
    let runtime = |c: engine::Result<RuntimeContainer>| -> anyhow::Result<Named> {
        let c = c?;
        Ok(Named {
            id: c.id.clone(),
            namespace: c.runtime.to_owned(),
            runtime: Some(c),
        })
    };
    match scheme {
        "docker" => runtime(docker::inspect(rest)),
        "podman" => runtime(podman::inspect(rest)),
        "cri" => runtime(cri::inspect(rest)),
        "k8s" => runtime(cri::inspect_pod(rest)),
        "containerd" => {
            let (ns, id) = match rest.split_once('/') {
                Some((ns, id)) => (ns, id),
                None => (namespace, rest),
            };
            if ns.is_empty() || id.is_empty() || id.contains('/') {
                return Err(Usage(format!(
                    "{arg:?}: expected containerd://NAMESPACE/ID or containerd://ID"
                ))
                .into());
            }
            Ok(Named {
                id: id.to_owned(),
                namespace: ns.to_owned(),
                runtime: None,
            })
        }
        _ => Err(Usage(format!(
            "{arg:?}: unknown container scheme {scheme:?} (one of {SCHEMES}, or a plain containerd id)"
        ))
        .into()),
    }
}

/// [`resolve`] for `inject`: the init pid of a runtime's container, which must run.
pub fn running_pid(arg: &str, named: &Named) -> anyhow::Result<Option<u32>> {
    named
        .runtime
        .as_ref()
        .map(|c| {
            c.running_pid(arg.split_once("://").map_or(arg, |(_, n)| n))
                .context("cannot inject")
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(arg: &str) -> String {
        let e = resolve(arg, "default").expect_err(arg);
        assert!(e.downcast_ref::<Usage>().is_some(), "{e:#}");
        e.to_string()
    }

    #[test]
    fn containerd_with_and_without_namespace() {
        let n = resolve("containerd://k8s.io/web", "default").expect("resolves");
        assert_eq!((n.id.as_str(), n.namespace.as_str()), ("web", "k8s.io"));
        let n = resolve("containerd://web", "moby").expect("resolves");
        assert_eq!((n.id.as_str(), n.namespace.as_str()), ("web", "moby"));
        let n = resolve("web", "moby").expect("resolves");
        assert_eq!(
            (n.id.as_str(), n.namespace.as_str(), n.runtime),
            ("web", "moby", None)
        );
    }

    #[test]
    fn bad_container_arguments_are_usage_errors() {
        assert!(usage("lxc://x").contains("unknown container scheme \"lxc\""));
        assert!(usage("docker://").contains("names no container"));
        assert!(usage("containerd://a/b/c").contains("containerd://NAMESPACE/ID"));
        assert!(usage("containerd:///x").contains("containerd://NAMESPACE/ID"));
    }
}
