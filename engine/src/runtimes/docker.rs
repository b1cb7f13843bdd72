//! Docker containers through the Docker Engine API: `GET /containers/{name}/json` on the
//! daemon's unix socket (`/var/run/docker.sock`, or `DOCKER_HOST=unix://PATH`). Docker itself
//! resolves a name, a full id or a unique id prefix, and answers "No such container" or
//! "Multiple IDs found" in its own words, which we pass on.
//!
//! The HTTP client is hyper's HTTP/1 connection over a tokio `UnixStream`, on a current-thread
//! runtime for the one request (docs/architecture.md says why not bollard).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::{Inspect, RuntimeContainer, check_name};
use crate::error::{Error, Result};

/// The daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The API version we ask for: Docker 20.10 speaks 1.41, and later daemons still serve it.
const API_VERSION: &str = "v1.41";

/// The socket `DOCKER_HOST` names (`unix://PATH`), or the default one.
pub fn socket() -> Result<PathBuf> {
    socket_from(std::env::var("DOCKER_HOST").ok())
}

fn socket_from(docker_host: Option<String>) -> Result<PathBuf> {
    match docker_host {
        Some(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(Error::RuntimeEndpoint {
                runtime: "docker",
                endpoint: host,
                reason: "only unix:// sockets are supported".into(),
            }),
        },
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// The container Docker knows as `name` (a name, a full id or a unique id prefix).
pub fn inspect(name: &str) -> Result<RuntimeContainer> {
    inspect_at(&socket()?, name)
}

/// [`inspect`] through the daemon at `socket`.
pub fn inspect_at(socket: &Path, name: &str) -> Result<RuntimeContainer> {
    check_name("docker container", name)?;
    let (status, body) = get(socket, &format!("/{API_VERSION}/containers/{name}/json"))?;
    if status != hyper::StatusCode::OK {
        // Docker's errors are `{"message": "..."}`.
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        return Err(Error::RuntimeLookup {
            runtime: "docker",
            name: name.to_owned(),
            message,
        });
    }
    let c: Inspect = serde_json::from_slice(&body).map_err(|e| Error::RuntimeEndpoint {
        runtime: "docker",
        endpoint: socket.display().to_string(),
        reason: format!("unexpected answer to GET /containers/{name}/json: {e}"),
    })?;
    Ok(c.into_container("docker"))
}

#[derive(serde::Deserialize)]
struct ApiError {
    message: String,
}

/// One GET over the unix socket: the status and the whole body.
fn get(socket: &Path, path: &str) -> Result<(hyper::StatusCode, Bytes)> {
    let unreachable = |reason: String| Error::RuntimeEndpoint {
        runtime: "docker",
        endpoint: socket.display().to_string(),
        reason,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::sys("starting the runtime for the Docker API", e))?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(format!("cannot connect: {e} (is dockerd running?)")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection is driven while the request waits; it ends when `sender` is dropped.
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(format!("GET {path}: {e}")))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(format!("GET {path}: {e}")))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok((status, body))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        let err = socket_from(Some("tcp://127.0.0.1:2375".into())).expect_err("tcp:// refused");
        assert!(err.to_string().contains("only unix://"), "{err}");
        let ok = socket_from(Some("unix:///tmp/d.sock".into())).expect("unix://");
        assert_eq!(ok, PathBuf::from("/tmp/d.sock"));
        assert_eq!(
            socket_from(None).expect("default"),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn no_daemon_is_one_line_naming_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = inspect_at(&dir.path().join("none.sock"), "web")
            .expect_err("no daemon")
            .to_string();
        assert!(
            err.contains("none.sock") && err.contains("cannot connect"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
