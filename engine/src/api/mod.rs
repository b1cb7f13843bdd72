//! The Chaos ttrpc API (`iochaos.v1.Chaos`): `Status`, `UpdateRules`, `Recover`, served by each
//! injection server on `/run/iochaos/<id>.sock`.
//!
//! [`Status`] is both what the API carries and the object `iochaos status --json` prints.

pub mod client;
pub mod proto;
pub mod server;
pub mod shim;

use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::journal::ProcessOpenMode;
use proto::chaos as pb;

pub use client::ChaosClient;
pub use server::{ApiServer, ChaosService, RecoveredNotifier};

/// What an injection was aimed at.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetStatus {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Inode of the target's mount namespace.
    pub mnt_ns: u64,
}

/// One rule of the spec with its counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleStatus {
    /// The rule as given in the spec.
    pub spec: Value,
    /// Requests whose selection matched.
    pub matched: u64,
    /// Faults injected.
    pub injected: u64,
}

/// An fd (or the cwd: -1, a mapping: -2) of a target process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdEntry {
    pub pid: u32,
    pub fd: i32,
    pub path: String,
    /// Why the fd was left alone or could not be handled; absent for swapped fds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One live injection: the `iochaos status --json` object.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub id: String,
    pub path: String,
    pub target: TargetStatus,
    pub pids: Vec<u32>,
    pub server_pid: u32,
    /// The whole current spec.
    pub spec: Value,
    pub rules: Vec<RuleStatus>,
    /// fds moved onto ChaosFS.
    pub swapped: Vec<FdEntry>,
    /// fds left alone, each with its reason.
    pub skipped: Vec<FdEntry>,
    /// Unix time (seconds) the injection became live.
    pub created_unix: u64,
    /// Per process whose files moved at inject: `handoff` or `in-stub open`.
    #[serde(default)]
    pub open_modes: Vec<ProcessOpenMode>,
}

/// What `Recover` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoverReport {
    /// fds moved back to the original mount.
    pub restored: Vec<FdEntry>,
    /// fds that could not be moved back, each with its reason.
    pub failed: Vec<FdEntry>,
}

/// What a crash did to one file (`iochaos crash`, docs/crash.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CrashedFile {
    /// Path as the target sees it.
    pub path: String,
    /// Size when the power was cut.
    pub size_at_crash: u64,
    /// Size after the rollback (its last durable point).
    pub durable_size: u64,
    /// Bytes put back where they had been overwritten, punched or truncated away.
    pub restored_bytes: u64,
    /// Byte positions whose content the crash took back: `restored_bytes` plus what was cut
    /// past the durable size, less `kept_bytes`.
    pub dropped_bytes: u64,
    /// Bytes of unsynced writes that survived (a torn or reordered crash).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kept_bytes: u64,
    /// Every unsynced write in order and what survived of it (a torn or reordered crash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<WriteFate>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a torn or reordered crash did with one unsynced write of a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteFate {
    /// Where the write was in the file.
    pub offset: u64,
    pub len: u64,
    /// Bytes from `offset` on that survived: `len` whole, 0 lost, else torn at
    /// `offset + kept` (a multiple of 512).
    pub kept: u64,
}

/// How a crash treats the writes that were never made durable (docs/crash.md). The default
/// loses them all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashOptions {
    /// Seed of the crash's random choices; one is drawn (and reported) when torn or reorder
    /// needs one and none is given.
    pub seed: Option<u64>,
    /// The last `torn` unsynced writes of each file survive up to a 512 B boundary.
    pub torn: u32,
    /// Any seeded subset of the unsynced writes survives.
    pub reorder: bool,
}

/// What `Crash` did: `iochaos crash --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CrashReport {
    /// The processes killed (SIGKILL).
    pub killed: Vec<u32>,
    /// Every file changed since its last durable point, rolled back.
    pub files: Vec<CrashedFile>,
    /// The recovery that followed.
    pub recovered: RecoverReport,
    /// The crash's seed, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl From<&CrashReport> for pb::CrashResponse {
    fn from(r: &CrashReport) -> Self {
        pb::CrashResponse {
            killed: r.killed.clone(),
            files: r
                .files
                .iter()
                .map(|f| pb::CrashedFile {
                    path: f.path.clone(),
                    size_at_crash: f.size_at_crash,
                    durable_size: f.durable_size,
                    restored_bytes: f.restored_bytes,
                    dropped_bytes: f.dropped_bytes,
                    kept_bytes: f.kept_bytes,
                    writes: f
                        .writes
                        .iter()
                        .map(|w| pb::WriteFate {
                            offset: w.offset,
                            len: w.len,
                            kept: w.kept,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            recovered: protobuf::MessageField::some((&r.recovered).into()),
            seed: r.seed.unwrap_or_default(),
            seeded: r.seed.is_some(),
            ..Default::default()
        }
    }
}

impl From<pb::CrashResponse> for CrashReport {
    fn from(r: pb::CrashResponse) -> Self {
        CrashReport {
            killed: r.killed,
            files: r
                .files
                .into_iter()
                .map(|f| CrashedFile {
                    path: f.path,
                    size_at_crash: f.size_at_crash,
                    durable_size: f.durable_size,
                    restored_bytes: f.restored_bytes,
                    dropped_bytes: f.dropped_bytes,
                    kept_bytes: f.kept_bytes,
                    writes: f
                        .writes
                        .into_iter()
                        .map(|w| WriteFate {
                            offset: w.offset,
                            len: w.len,
                            kept: w.kept,
                        })
                        .collect(),
                })
                .collect(),
            recovered: r
                .recovered
                .into_option()
                .map(Into::into)
                .unwrap_or_default(),
            seed: r.seeded.then_some(r.seed),
        }
    }
}

fn to_json(v: &Value) -> String {
    // Serializing a Value cannot fail (its map keys are strings).
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json(s: &str, what: &str) -> Result<Value> {
    if s.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(s).map_err(|e| Error::Remote {
        code: ttrpc::Code::INTERNAL,
        message: format!("malformed {what} JSON in the answer: {e}"),
    })
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<&FdEntry> for pb::FdEntry {
    fn from(f: &FdEntry) -> Self {
        pb::FdEntry {
            pid: f.pid,
            fd: f.fd,
            path: f.path.clone(),
            reason: f.reason.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

impl From<pb::FdEntry> for FdEntry {
    fn from(f: pb::FdEntry) -> Self {
        FdEntry {
            pid: f.pid,
            fd: f.fd,
            path: f.path,
            reason: opt(f.reason),
        }
    }
}

impl From<&Status> for pb::StatusResponse {
    fn from(s: &Status) -> Self {
        pb::StatusResponse {
            id: s.id.clone(),
            path: s.path.clone(),
            target: protobuf::MessageField::some(pb::Target {
                pid: s.target.pid,
                container: s.target.container.clone().unwrap_or_default(),
                namespace: s.target.namespace.clone().unwrap_or_default(),
                mnt_ns: s.target.mnt_ns,
                ..Default::default()
            }),
            pids: s.pids.clone(),
            server_pid: s.server_pid,
            spec_json: to_json(&s.spec),
            rules: s
                .rules
                .iter()
                .map(|r| pb::RuleStatus {
                    spec_json: to_json(&r.spec),
                    matched: r.matched,
                    injected: r.injected,
                    ..Default::default()
                })
                .collect(),
            swapped: s.swapped.iter().map(Into::into).collect(),
            skipped: s.skipped.iter().map(Into::into).collect(),
            created_unix: s.created_unix,
            open_modes: s
                .open_modes
                .iter()
                .map(|m| pb::OpenMode {
                    pid: m.pid,
                    mode: m.mode.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

impl TryFrom<pb::StatusResponse> for Status {
    type Error = Error;
    fn try_from(s: pb::StatusResponse) -> Result<Self> {
        let t = s.target.into_option().unwrap_or_default();
        Ok(Status {
            id: s.id,
            path: s.path,
            target: TargetStatus {
                pid: t.pid,
                container: opt(t.container),
                namespace: opt(t.namespace),
                mnt_ns: t.mnt_ns,
            },
            pids: s.pids,
            server_pid: s.server_pid,
            spec: from_json(&s.spec_json, "spec")?,
            rules: s
                .rules
                .into_iter()
                .map(|r| {
                    Ok(RuleStatus {
                        spec: from_json(&r.spec_json, "rule")?,
                        matched: r.matched,
                        injected: r.injected,
                    })
                })
                .collect::<Result<_>>()?,
            swapped: s.swapped.into_iter().map(Into::into).collect(),
            skipped: s.skipped.into_iter().map(Into::into).collect(),
            created_unix: s.created_unix,
            open_modes: s
                .open_modes
                .into_iter()
                .map(|m| ProcessOpenMode {
                    pid: m.pid,
                    mode: m.mode,
                })
                .collect(),
        })
    }
}

impl From<&RecoverReport> for pb::RecoverResponse {
    fn from(r: &RecoverReport) -> Self {
        pb::RecoverResponse {
            restored: r.restored.iter().map(Into::into).collect(),
            failed: r.failed.iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

impl From<pb::RecoverResponse> for RecoverReport {
    fn from(r: pb::RecoverResponse) -> Self {
        RecoverReport {
            restored: r.restored.into_iter().map(Into::into).collect(),
            failed: r.failed.into_iter().map(Into::into).collect(),
        }
    }
}
