//! The fault rule engine: the JSON spec, its validation, and the decision taken for each request.
//!
//! INTERFACE CONTRACT between the filesystem (`crate::fs`) and the rule engine. The filesystem
//! only uses the items below; the engine's internals live in submodules.
//!
//! * [`Spec`]: the JSON document of design.md (`path`, `duration`, `seed`, `rules`), parsed with
//!   `deny_unknown_fields` and validated by [`Spec::from_json`] / [`Spec::validate`].
//! * [`RuleSet`]: a compiled, validated set of rules with live counters. Built once per
//!   spec ([`RuleSet::new`]); replaced as a whole when rules are updated.
//! * [`RuleSet::evaluate`]: called once per FUSE request with a [`Call`]; returns a [`Verdict`]
//!   that says what to do: delay, fail with an errno, or alter data/attributes.
//! * [`RuleSet::may_touch_data`] / [`RuleSet::may_touch_meta`]: conservative, per-path answers
//!   used at open time (passthrough vs direct I/O) and when choosing cache TTLs.

use std::path::Path;
use std::time::Duration;

mod op;

pub use op::{Op, OpSet};

/// The JSON spec (design.md "JSON spec"). Placeholder fields until the engine lands.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Path the spec applies to (informational for chaosfs; used by injectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How long the injection lasts (humantime, e.g. "60s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Seed for every random choice; same seed + same request sequence = same faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

/// What a request looks like to the rule engine.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The operation.
    pub op: Op,
    /// Path relative to the mount root, without a leading `/` (`""` is the root itself).
    /// Only meaningful when [`RuleSet::uses_paths`] is true; otherwise the filesystem may pass `""`.
    pub path: &'a Path,
    /// Caller's pid, uid and gid, as the FUSE request header gives them.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Attribute overrides applied to attributes returned by lookup/getattr/create/mkdir/... replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttrOverride {
    /// Permission bits (the low 12 bits of st_mode).
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// Times as seconds since the epoch.
    pub atime: Option<i64>,
    pub mtime: Option<i64>,
    pub ctime: Option<i64>,
    pub nlink: Option<u32>,
    /// File type as the `S_IFMT` bits of st_mode (e.g. `libc::S_IFREG`).
    pub kind: Option<u32>,
}

/// How corrupted bytes are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptMode {
    Zeros,
    Random,
    BitFlip,
}

/// A data change the filesystem applies to a read's returned buffer or a write's stored buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFault {
    /// Corrupt the buffer; use [`Verdict::apply_data`] to do it.
    Corrupt,
    /// Transfer only this many bytes (always less than asked, possibly 0 only when asked 0).
    Short(usize),
}

/// The decision for one request. `Verdict::default()` means "serve normally".
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Sleep this long before serving (never blocking other requests). Applied before anything else.
    pub delay: Option<Duration>,
    /// Fail the request with this errno (after the delay, without touching the backing file).
    pub errno: Option<i32>,
    /// Override fields in the attributes this reply returns.
    pub attr: Option<AttrOverride>,
    /// Corrupt or shorten the data of a read (after reading) or a write (before writing).
    pub data: Option<DataFault>,
    /// Behave as a full disk: statfs reports no free blocks; write/create/fallocate/mkdir/... fail
    /// with ENOSPC (the engine already sets `errno` for those; statfs uses this flag).
    pub full: bool,
    /// Opaque state for [`Verdict::apply_data`] (which rule, its random stream position).
    corrupt: Option<CorruptPlan>,
}

#[derive(Debug, Clone)]
struct CorruptPlan {
    mode: CorruptMode,
    max_bytes: usize,
    seed: u64,
}

impl Verdict {
    /// True if nothing is to be done.
    pub fn is_pass(&self) -> bool {
        self.delay.is_none()
            && self.errno.is_none()
            && self.attr.is_none()
            && self.data.is_none()
            && !self.full
    }

    /// Corrupt `buf` in place as the matching rule asked (no-op unless `data == Some(Corrupt)`).
    pub fn apply_data(&self, buf: &mut [u8]) {
        let Some(plan) = &self.corrupt else { return };
        let n = buf.len().min(plan.max_bytes);
        let mut x = plan.seed | 1;
        for b in buf.iter_mut().take(n) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match plan.mode {
                CorruptMode::Zeros => *b = 0,
                CorruptMode::Random => *b = x as u8,
                CorruptMode::BitFlip => *b ^= 1 << (x % 8),
            }
        }
    }
}

/// Counters of one rule, readable while mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleStats {
    /// Requests whose op/glob/pid/comm/uid selection matched.
    pub matched: u64,
    /// Faults actually injected (after percent/after/every/times).
    pub injected: u64,
}

/// A compiled rule set with live counters. Cheap to evaluate; `Send + Sync`.
#[derive(Debug, Default)]
pub struct RuleSet {
    spec: Spec,
}

impl RuleSet {
    /// Compile a validated spec.
    pub fn new(spec: Spec) -> crate::Result<Self> {
        Ok(RuleSet { spec })
    }

    /// No rules at all.
    pub fn empty() -> Self {
        RuleSet::default()
    }

    /// The spec this set was built from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// True if any rule selects by glob, so [`Call::path`] must be filled in.
    pub fn uses_paths(&self) -> bool {
        false
    }

    /// Decide what to do with one request. Updates counters.
    pub fn evaluate(&self, call: &Call<'_>) -> Verdict {
        let _ = call;
        Verdict::default()
    }

    /// Could any rule affect `read`/`write` (data or errno or latency) on the file at `path`
    /// (relative to the mount root)? Conservative: true when unsure. Files for which this is
    /// false are opened in kernel passthrough mode, so their reads/writes never reach the rules.
    pub fn may_touch_data(&self, path: &Path) -> bool {
        let _ = path;
        false
    }

    /// Could any rule affect a metadata op (lookup, getattr, readdir, access, readlink, ...) on
    /// `path`, or change attributes returned for it? When false, the filesystem may let the kernel
    /// cache entries and attributes for it.
    pub fn may_touch_meta(&self, path: &Path) -> bool {
        let _ = path;
        false
    }

    /// Counters of each rule, in spec order.
    pub fn stats(&self) -> Vec<RuleStats> {
        Vec::new()
    }
}
