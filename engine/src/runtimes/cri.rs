//! Containers of a CRI runtime (containerd's CRI plugin, CRI-O) on this node: `cri://ID` (a CRI
//! container id or a unique prefix of one) and `k8s://NAMESPACE/POD[/CONTAINER]` (through the
//! labels the kubelet puts on every container). Asked over the CRI v1 gRPC API on the runtime's
//! unix socket — `/run/containerd/containerd.sock`, or `CONTAINER_RUNTIME_ENDPOINT` as crictl
//! reads it — with the client the `k8s-cri` crate generates, on tonic over a tokio
//! `UnixStream`. `ContainerStatus` with `verbose` gives the init pid in its `info` JSON.
//!
//! [`Cri`] is public so that tests can drive the runtime the way the kubelet does.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::RuntimeContainer;
use crate::error::{Error, Result};

/// containerd's socket, where its CRI plugin listens.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// The environment variable naming the socket (crictl's): `unix:///path` or a path.
pub const ENDPOINT_ENV: &str = "CONTAINER_RUNTIME_ENDPOINT";

/// The labels the kubelet sets on each container.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// The container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What the journal records for CRI containers (`cri/<id>`).
const RUNTIME: &str = "cri";

/// The socket `CONTAINER_RUNTIME_ENDPOINT` names, or containerd's.
pub fn socket() -> Result<PathBuf> {
    socket_from(std::env::var(ENDPOINT_ENV).ok())
}

fn socket_from(endpoint: Option<String>) -> Result<PathBuf> {
    match endpoint {
        Some(e) if !e.is_empty() => match e.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None if e.starts_with('/') => Ok(PathBuf::from(e)),
            None => Err(Error::RuntimeEndpoint {
                runtime: RUNTIME,
                endpoint: e,
                reason: format!("{ENDPOINT_ENV}: only unix:// sockets are supported"),
            }),
        },
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// A CRI runtime service client on its own current-thread tokio runtime: every call is one
/// [`Cri::block_on`].
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

impl Cri {
    /// Connect to the runtime at `socket`.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::sys("starting the runtime for the CRI API", e))?;
        let path = socket.to_owned();
        let channel = rt
            .block_on(async {
                // The URI is required by tonic and unused: the connector always dials the socket.
                Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .map_err(|e| Error::RuntimeEndpoint {
                runtime: RUNTIME,
                endpoint: socket.display().to_string(),
                reason: format!(
                    "cannot connect: {} (is containerd running?)",
                    source_chain(&e)
                ),
            })?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
            socket: socket.to_owned(),
        })
    }

    /// The generated client (cheap to clone), for [`Cri::block_on`].
    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// Run one call to completion.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The error for a failed call `what`.
    fn failed(&self, what: &str, status: &tonic::Status) -> Error {
        Error::RuntimeEndpoint {
            runtime: RUNTIME,
            endpoint: self.socket.display().to_string(),
            reason: format!("{what}: {}", status.message()),
        }
    }

    /// The containers whose labels include all of `labels` (every container when empty).
    pub fn containers(&self, labels: HashMap<String, String>) -> Result<Vec<api::Container>> {
        let req = api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        };
        self.block_on(self.client().list_containers(req))
            .map(|r| r.into_inner().containers)
            .map_err(|s| self.failed("ListContainers", &s))
    }

    /// Container `id` (a full id) with its init pid, if it runs.
    pub fn container(&self, id: &str) -> Result<RuntimeContainer> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let res = self
            .block_on(self.client().container_status(req))
            .map_err(|s| self.failed("ContainerStatus", &s))?
            .into_inner();
        let running = res
            .status
            .as_ref()
            .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
        let pid = res
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<VerboseInfo>(info).ok())
            .map_or(0, |i| i.pid);
        Ok(RuntimeContainer {
            runtime: RUNTIME,
            id: id.to_owned(),
            pid: super::pid_of(running, pid),
        })
    }
}

/// The part of the verbose `info["info"]` JSON we use (containerd and CRI-O both give `pid`).
#[derive(serde::Deserialize)]
struct VerboseInfo {
    #[serde(default)]
    pid: i64,
}

/// An error and its sources on one line (tonic's transport error alone says "transport error").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `cri://ID`: the container whose CRI id is `id` or starts with it.
pub fn inspect(id: &str) -> Result<RuntimeContainer> {
    inspect_at(&socket()?, id)
}

/// [`inspect`] through the runtime at `socket`.
pub fn inspect_at(socket: &Path, id: &str) -> Result<RuntimeContainer> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::InvalidContainerName {
            what: "CRI id",
            value: id.to_owned(),
        });
    }
    let cri = Cri::connect(socket)?;
    let ids: Vec<String> = cri
        .containers(HashMap::new())?
        .into_iter()
        .map(|c| c.id)
        .filter(|c| c.starts_with(id))
        .collect();
    let full = one_of(RUNTIME, id, ids, "No such container")?;
    cri.container(&full)
}

/// `k8s://NAMESPACE/POD[/CONTAINER]`: the pod's container on this node (CONTAINER may be left
/// out when the pod has one).
pub fn inspect_pod(target: &str) -> Result<RuntimeContainer> {
    inspect_pod_at(&socket()?, target)
}

/// [`inspect_pod`] through the runtime at `socket`.
pub fn inspect_pod_at(socket: &Path, target: &str) -> Result<RuntimeContainer> {
    let parts: Vec<&str> = target.split('/').collect();
    let (ns, pod, name) = match parts.as_slice() {
        [ns, pod] => (*ns, *pod, None),
        [ns, pod, c] => (*ns, *pod, Some(*c)),
        _ => ("", "", None),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !(valid(ns) && valid(pod) && name.is_none_or(valid)) {
        return Err(Error::InvalidContainerName {
            what: "path (expected k8s://NAMESPACE/POD[/CONTAINER])",
            value: target.to_owned(),
        });
    }
    let cri = Cri::connect(socket)?;
    let mut labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_owned(), ns.to_owned()),
        (LABEL_POD_NAME.to_owned(), pod.to_owned()),
    ]);
    if let Some(n) = name {
        labels.insert(LABEL_CONTAINER_NAME.to_owned(), n.to_owned());
    }
    let mut found = cri.containers(labels)?;
    // A restarted container leaves its exited predecessor: prefer the one that runs.
    if found.len() > 1 && name.is_some() {
        found.retain(|c| c.state == api::ContainerState::ContainerRunning as i32);
    }
    match found.as_slice() {
        [one] => cri.container(&one.id),
        [] => Err(Error::RuntimeLookup {
            runtime: "k8s",
            name: target.to_owned(),
            message: match name {
                Some(_) => "no such container in this pod on this node".into(),
                None => "no such pod on this node".into(),
            },
        }),
        many => {
            let mut names: Vec<&str> = many
                .iter()
                .map(|c| {
                    c.labels
                        .get(LABEL_CONTAINER_NAME)
                        .map_or(c.id.as_str(), String::as_str)
                })
                .collect();
            names.sort_unstable();
            names.dedup();
            Err(Error::RuntimeLookup {
                runtime: "k8s",
                name: target.to_owned(),
                message: format!(
                    "the pod has containers {}: name one as k8s://{ns}/{pod}/CONTAINER",
                    names.join(", ")
                ),
            })
        }
    }
}

/// The one id of `ids`, or Docker's words for none and many.
fn one_of(runtime: &'static str, name: &str, ids: Vec<String>, none: &str) -> Result<String> {
    let mut ids = ids;
    match ids.len() {
        1 => Ok(ids.remove(0)),
        0 => Err(Error::RuntimeLookup {
            runtime,
            name: name.to_owned(),
            message: none.to_owned(),
        }),
        _ => Err(Error::RuntimeLookup {
            runtime,
            name: name.to_owned(),
            message: format!(
                "Multiple IDs found with provided prefix: {}",
                ids.join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_a_unix_socket() {
        assert_eq!(
            socket_from(Some("unix:///run/crio/crio.sock".into())).expect("unix://"),
            PathBuf::from("/run/crio/crio.sock")
        );
        assert_eq!(
            socket_from(Some("/tmp/c.sock".into())).expect("path"),
            PathBuf::from("/tmp/c.sock")
        );
        assert_eq!(
            socket_from(None).expect("default"),
            PathBuf::from(DEFAULT_SOCKET)
        );
        let err = socket_from(Some("tcp://h:1".into())).expect_err("tcp refused");
        assert!(err.to_string().contains("only unix://"), "{err}");
    }

    #[test]
    fn bad_names_are_refused_before_any_request() {
        let none = Path::new("/nonexistent/cri.sock");
        for bad in ["", "../x", "a b"] {
            let e = inspect_at(none, bad).expect_err(bad).to_string();
            assert!(e.contains("invalid container CRI id"), "{e}");
        }
        for bad in ["ns", "ns/", "/pod", "a/b/c/d", "ns/p d", "ns/pod/"] {
            let e = inspect_pod_at(none, bad).expect_err(bad).to_string();
            assert!(e.contains("k8s://NAMESPACE/POD"), "{e}");
        }
    }

    #[test]
    fn no_runtime_is_one_line_naming_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = inspect_at(&dir.path().join("none.sock"), "abc")
            .expect_err("no runtime")
            .to_string();
        assert!(
            err.contains("none.sock") && err.contains("cannot connect"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn prefixes_resolve_to_one_id() {
        assert_eq!(
            one_of("cri", "ab", vec!["abc".into()], "No such container").expect("one"),
            "abc"
        );
        let e = one_of("cri", "a", vec![], "No such container").expect_err("none");
        assert!(e.to_string().contains("No such container"), "{e}");
        let e = one_of("cri", "a", vec!["ab".into(), "ac".into()], "x").expect_err("many");
        assert!(e.to_string().contains("Multiple IDs found"), "{e}");
    }
}
