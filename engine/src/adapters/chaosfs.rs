//! ChaosFS behind [`FsLauncher`] / [`FsServer`]: the filesystem every injection serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chaosfs::rules::{RuleSet, Spec};
use chaosfs::server::{Config, Server};
use serde_json::Value;

use crate::api::CrashedFile;
use crate::error::{Error, Result};
use crate::inject::{Device, EscapedFile, FsLauncher, FsServer, Mounted};

/// Starts a ChaosFS server on the mounted FUSE device.
#[derive(Debug, Clone)]
pub struct ChaosLauncher {
    /// Server settings (the connection is filled in by [`FsLauncher::start`]).
    pub config: Config,
    /// How long [`FsServer::stop`] waits for the kernel to let go of the connection (files
    /// still open on the detached mount) before it aborts it.
    pub grace: Duration,
}

impl Default for ChaosLauncher {
    fn default() -> Self {
        ChaosLauncher {
            // Locks taken through ChaosFS are real locks on the backing files, seen by
            // processes outside the injection; the swap hands the target's over both ways.
            config: Config {
                forward_locks: true,
                ..Config::default()
            },
            grace: Duration::from_secs(2),
        }
    }
}

/// A running ChaosFS server.
#[derive(Debug)]
pub struct ChaosServer {
    server: Server,
    grace: Duration,
}

impl ChaosServer {
    /// The ChaosFS server itself.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

/// Validate a JSON spec with the rule engine and compile it.
pub fn rule_set(spec: &Value) -> Result<RuleSet> {
    let spec = Spec::from_json(&spec.to_string()).map_err(spec_err)?;
    RuleSet::new(spec).map_err(spec_err)
}

/// A spec the rule engine refuses is the caller's error; a failed system call is ChaosFS's.
fn spec_err(e: chaosfs::Error) -> Error {
    match e {
        chaosfs::Error::Sys { .. } => Error::Filesystem(e),
        _ => Error::InvalidSpec(Box::new(e)),
    }
}

/// The connection directory `N` of `/sys/fs/fuse/connections/N` is the kernel's dev_t
/// `(major << 20) | minor` of the mount.
fn connection(id: u32) -> chaosfs::Connection {
    chaosfs::Connection::from_dev(rustix::fs::makedev(id >> 20, id & 0xf_ffff))
}

impl FsLauncher for ChaosLauncher {
    type Server = ChaosServer;

    fn device(&self) -> Result<Device> {
        Ok(Device::Fuse(chaosfs::mount::open_fuse_device()?))
    }

    fn start(&self, mounted: Mounted, spec: &Value) -> Result<ChaosServer> {
        let Device::Fuse(fuse) = mounted.device else {
            return Err(Error::NotFuseDevice);
        };
        let rules = rule_set(spec)?;
        let mut cfg = self.config.clone();
        cfg.connection = mounted.connection.map(connection);
        let server = Server::start(mounted.backing, fuse, rules, cfg)?;
        Ok(ChaosServer {
            server,
            grace: self.grace,
        })
    }
}

impl FsServer for ChaosServer {
    type Rules = RuleSet;

    fn parse_rules(&self, spec: &Value) -> Result<RuleSet> {
        rule_set(spec)
    }

    fn update_rules(&self, rules: RuleSet) -> Vec<EscapedFile> {
        let report = self.server.update_rules(rules);
        report
            .escaped
            .into_iter()
            .map(|e| EscapedFile {
                ino: e.ino,
                path: e.path,
            })
            .collect()
    }

    fn read_ahead(&self) -> fdswap::ReadAhead {
        // Worth it, and harmless, only where no rule can touch metadata: there no readdir is
        // faulted or delayed and the kernel may cache the entries it returns. Globs match the
        // path relative to the mount or, without a '/', the name alone: ask for both.
        let rules = self.server.rules();
        fdswap::ReadAhead::when(move |dir| may_read_ahead(&rules, dir))
    }

    fn quiesce(&self) {
        // Only release what is parked: replacing the rules now would invalidate every cached
        // entry, and the swap back would then wait on the server for each file.
        self.server.cancel_delays();
    }

    fn forwarded_locks(&self) -> Vec<(u32, fdswap::PosixLock)> {
        self.server
            .forwarded_posix_locks()
            .into_iter()
            .filter_map(|l| {
                let lock = fdswap::PosixLock {
                    write: l.write,
                    start: l.start,
                    end: l.end,
                    dev: l.dev,
                    ino: l.ino,
                    forwarded: true,
                };
                Some((u32::try_from(l.pid).ok()?, lock))
            })
            .collect()
    }

    fn rule_counters(&self) -> Vec<(u64, u64)> {
        self.server
            .stats()
            .into_iter()
            .map(|s| (s.matched, s.injected))
            .collect()
    }

    fn crash(&self, opts: chaosfs::CrashOptions) -> Vec<CrashedFile> {
        self.server
            .crash(opts)
            .into_iter()
            .map(|f| crashed_file(f, Path::new("")))
            .collect()
    }

    fn on_power_cut(&self, kill: Box<dyn Fn() + Send + Sync>) {
        self.server.on_power_cut(kill);
    }

    fn stop(self) -> Result<()> {
        // No faults for whatever is still open on the detached mount, nothing left parked.
        self.server.update_rules(RuleSet::empty());
        self.server.cancel_delays();
        // Once nothing holds the detached mount the kernel ends the connection by itself;
        // abort only what is still held after the grace period.
        let released = self.server.wait_timeout(self.grace);
        if !released {
            let dev = self.server.connection().map(|c| c.id());
            tracing::warn!(
                grace = ?self.grace,
                holders = ?dev.map(holders).unwrap_or_default(),
                "files still open on the detached ChaosFS mount: aborting the connection"
            );
        }
        match self.server.stop() {
            // Aborted by us: the session reports the abort.
            Err(chaosfs::Error::Sys { source, .. })
                if !released
                    && rustix::io::Errno::from_io_error(&source)
                        == Some(rustix::io::Errno::CONNABORTED) =>
            {
                Ok(())
            }
            r => r.map_err(Error::Filesystem),
        }
    }
}

/// May the swap read directory `dir` (relative to the mount) ahead under `rules`? Only if no
/// rule can touch its metadata. Globs match the path relative to the mount or, without a '/',
/// the name alone: both are asked.
fn may_read_ahead(rules: &RuleSet, dir: &Path) -> bool {
    let name = dir.file_name().map_or(Path::new(""), Path::new);
    !rules.may_touch_meta(dir) && !rules.may_touch_meta(name)
}

/// `(pid, fd)` of every open file on the FUSE connection `conn` (diagnostics; cached attributes
/// only, so it never waits for the server).
fn holders(conn: u32) -> Vec<(u32, i32)> {
    let (major, minor) = (conn >> 20, conn & 0xf_ffff);
    let on_conn = |fd_path: &Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            fd_path,
            rustix::fs::AtFlags::STATX_DONT_SYNC,
            rustix::fs::StatxFlags::empty(),
        )
        .is_ok_and(|st| (st.stx_dev_major, st.stx_dev_minor) == (major, minor))
    };
    let mut out = Vec::new();
    for pid in procinfo::pids().unwrap_or_default() {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        for fd in procinfo::fds(&dir).unwrap_or_default() {
            if on_conn(&dir.join("fd").join(fd.to_string())) {
                out.push((pid, fd));
            }
        }
    }
    out
}

/// A file of a ChaosFS crash report as the Chaos API reports it, its path under `dir`.
pub fn crashed_file(f: chaosfs::CrashedFile, dir: &Path) -> CrashedFile {
    CrashedFile {
        path: dir.join(&f.path).display().to_string(),
        size_at_crash: f.size_at_crash,
        durable_size: f.durable_size,
        restored_bytes: f.restored_bytes,
        dropped_bytes: f.dropped_bytes,
        kept_bytes: f.kept_bytes,
        writes: f
            .writes
            .into_iter()
            .map(|w| crate::api::WriteFate {
                offset: w.offset,
                len: w.len,
                kept: w.kept,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> RuleSet {
        rule_set(&serde_json::from_str(json).expect("json")).expect("rules")
    }

    #[test]
    fn read_ahead_only_where_no_rule_touches_metadata() {
        let data_only = rules(r#"{"rules": [{"ops": ["write"], "errno": "EIO"}]}"#);
        assert!(may_read_ahead(&data_only, Path::new("")));
        assert!(may_read_ahead(&data_only, Path::new("a/b")));
        let readdir = rules(r#"{"rules": [{"ops": ["readdir"], "latency": "1s"}]}"#);
        assert!(!may_read_ahead(&readdir, Path::new("")));
        assert!(!may_read_ahead(&readdir, Path::new("a")));
        let named = rules(r#"{"rules": [{"ops": ["readdir"], "glob": "b*", "errno": "EIO"}]}"#);
        assert!(!may_read_ahead(&named, Path::new("sub/backup")));
        assert!(may_read_ahead(&named, Path::new("sub/data")));
    }
}
