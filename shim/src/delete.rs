//! `delete`: containerd's cleanup after a shim it lost (the daemon died, or never answered).
//! runc's shim cleans up the container (`runc delete --force`, rootfs unmount) and writes the
//! `DeleteResponse` we print; we then make runc's daemon let go of the container and exit, and
//! recover, from the journal alone, whatever injection the dead daemon left: its ChaosFS mount
//! is detached and its FUSE connection aborted, so nothing is left returning ENOTCONN.

use std::path::Path;
use std::time::Duration;

use engine::adapters::start::StartSwapper;
use engine::inject::recover_from_journal;

use crate::args::Args;
use crate::error::{Error, Result, one_line};
use crate::start::{RUNC_ADDRESS_FILE, run_runc_shim};
use crate::wire;

/// How long runc's daemon has to answer one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `delete`; returns the bytes to print (runc shim's `DeleteResponse`).
pub fn delete(args: &Args) -> Result<Vec<u8>> {
    let bundle = match &args.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| Error::io(".", e))?,
    };
    let (runc, out) = run_runc_shim(args, &bundle, &[])?;
    let runc_result = if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(Error::RuncShim {
            binary: runc,
            action: "delete",
            status: out.status,
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    };
    release_runc_daemon(&bundle, &args.id);
    let journal = crate::daemon::journal()?;
    for e in journal.list()? {
        let ours = e
            .target
            .container
            .as_ref()
            .is_some_and(|c| c.id == args.id && c.namespace == args.namespace);
        if !ours
            || e.server_pid
                .is_some_and(|p| p > 0 && engine::api::shim::is_shim(p))
        {
            continue;
        }
        match recover_from_journal(&journal, &e.id, &StartSwapper::default()) {
            Ok(_) => tracing::info!(id = %e.id, "recovered from the journal"),
            Err(err) => tracing::warn!(id = %e.id, error = %one_line(&err), "recover failed"),
        }
        let _ = std::fs::remove_file(journal.socket_path(&e.id));
    }
    runc_result
}

/// If runc's daemon still runs (ours died, not it), make it forget the container and exit once
/// it serves none; remove its socket once it is gone.
fn release_runc_daemon(bundle: &Path, id: &str) {
    let Ok(address) = std::fs::read_to_string(bundle.join(RUNC_ADDRESS_FILE)) else {
        return;
    };
    let address = address.trim();
    if let Ok(client) = ttrpc::Client::connect(address) {
        let delete = wire::encode(&wire::DeleteRequest {
            id: id.to_owned(),
            ..Default::default()
        });
        let shutdown = wire::encode(&wire::ShutdownRequest {
            id: id.to_owned(),
            ..Default::default()
        });
        for (method, payload) in [("Delete", delete), ("Shutdown", shutdown)] {
            let Ok(payload) = payload else { continue };
            let mut req = ttrpc::Request::new();
            req.service = "containerd.task.v2.Task".into();
            req.method = method.into();
            req.timeout_nano = i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
            req.payload = payload;
            if let Err(e) = client.request(req) {
                tracing::debug!(method, error = %e, "runc shim");
            }
        }
    }
    if let Some(path) = address.strip_prefix("unix://")
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        let _ = std::fs::remove_file(path);
    }
}
