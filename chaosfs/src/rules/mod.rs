//! The fault rule engine: the JSON spec, its validation, and the decision taken for each request.
//!
//! INTERFACE CONTRACT between the filesystem (`crate::fs`) and the rule engine. The filesystem
//! only uses the items below; the engine's internals live in submodules (`spec`: the JSON form
//! and its checks; `shorthand`: the command-line form; `engine`: compiled rules and counters;
//! `caller`: pid/comm lookups; `data`: deterministic randomness and corruption; `errno`).
//!
//! * [`Spec`]: the JSON document of design.md (`path`, `duration`, `seed`, `rules`), parsed with
//!   `deny_unknown_fields` and validated by [`Spec::from_json`] / [`Spec::validate`].
//! * [`parse_shorthand`]: the same rules from command-line flags.
//! * [`RuleSet`]: a compiled, validated set of rules with live counters. Built once per
//!   spec ([`RuleSet::new`]); replaced as a whole when rules are updated.
//! * [`RuleSet::evaluate`]: called once per FUSE request with a [`Call`]; returns a [`Verdict`]
//!   that says what to do: delay, fail with an errno, or alter data/attributes.
//! * [`RuleSet::may_touch_data`] / [`RuleSet::may_touch_meta`]: conservative, per-path answers
//!   used at open time (passthrough vs direct I/O) and when choosing cache TTLs.
//!
//! # A rule
//!
//! A rule is a selection plus exactly one action. Selection fields (all optional):
//!
//! | field | value | meaning |
//! |---|---|---|
//! | `ops` | list of op names | which requests ([`Op::parse_names`]: FUSE names plus syscall aliases such as `stat`, `open`, `close`); default: the action's natural ops (below) |
//! | `glob` | pattern | path relative to the mount root, no leading `/`. Without `/` it matches the file's own name in any directory (`*.db`); with `/` the whole relative path (`data/*.db`, `**/wal/*`). `*`/`?` never cross `/`, `**` does |
//! | `percent` | 0–100, decimals allowed | chance that a selected request is faulted (default 100) |
//! | `pid` | number or list | caller's process id (any of its threads) or thread id, in the server's pid namespace |
//! | `comm` | name or list (≤ 15 bytes) | caller thread's or process's name, as in `/proc/PID/comm` |
//! | `uid` | number or list | caller's filesystem uid |
//! | `after` | N | leave the first N selected requests alone |
//! | `every` | N ≥ 1 | then fault only every Nth selected request (the Nth, 2Nth, ...) |
//! | `times` | N | fault at most N times in total |
//!
//! Actions:
//!
//! | field | value | natural ops |
//! |---|---|---|
//! | `errno` | `"EIO"` (any Linux errno name), `["EIO","ENOSPC"]` (equal odds), `{"EIO": 3, "ENOSPC": 1}` (weights) | all |
//! | `latency` | `"200ms"` or `{"delay": "200ms", "jitter": "50ms"}`: uniform in delay ± jitter, never negative; delay + jitter at most [`MAX_LATENCY`] (1 h), also summed over all latency rules | all |
//! | `attr` | `{"perm": "0644" or 420, "uid", "gid", "size" (≤ 2^63 − 1), "atime", "mtime", "ctime" (seconds or RFC 3339, years 0 to 9999), "nlink", "kind": "file\|dir\|symlink\|fifo\|socket\|char\|block"}` | lookup, getattr, setattr, create, mkdir, mknod, symlink, link (only these allowed) |
//! | `corrupt` | `"zeros"`, `"random"`, `"bitflip"` or `{"mode": ..., "max_bytes": N}`; `max_bytes` defaults to 1 for bitflip and to the whole buffer otherwise | read, write (only these allowed) |
//! | `short` | `{"bytes": N}` (at most N ≥ 1 bytes) or `{"fraction": 0.5}` (0 < f < 1); always at least 1 byte and fewer than asked (a 1-byte request is served whole) | read, write (only these allowed) |
//! | `full` | `true`: ENOSPC on write, create, mknod, mkdir, symlink, link, fallocate, setxattr; statfs reports no free space | those + statfs (only these allowed) |
//! | `crash` | `{}` or `{"when": "before" \| "after", "torn": N, "reorder": true, "seed": S}`: cut the power (crash mode only, docs/crash.md): before the request is served (default; it never happens) or right after (before its reply); `torn`/`reorder`/`seed` as `iochaos crash --torn N --reorder --seed S` (seed default 0) | all |
//!
//! # Deciding one request
//!
//! A rule *matches* a request when its ops, glob, uid, pid and comm select it; every matching
//! rule counts it in `matched`, and that count is the request's sequence number in the rule.
//! `after`, then `every`, then `percent`, then `times` decide whether the rule *fires*; a rule
//! that fires and takes effect counts in `injected`. When several rules match one request:
//!
//! * the delays of all firing `latency` rules add up, and are served before anything else;
//! * the first firing `errno` (or `full`, on an ENOSPC op) rule in spec order fails the request;
//!   later errno rules count the match but not an injection;
//! * a request that fails gets no attribute override and no data change (those rules count the
//!   match only);
//! * `attr` overrides of firing rules merge in spec order, a later rule overriding the fields it
//!   sets;
//! * the first firing `corrupt` or `short` rule changes the data; later ones count the match only;
//! * a firing `crash` rule cuts the power whatever the others decided (the first in spec order
//!   says before or after; once the power is cut every change fails with EIO).
//!
//! Randomness (percent, the weighted errno choice, jitter, corrupted bytes) is a hash of (seed,
//! rule index, the rule's sequence number, purpose): the same seed and the same sequence of
//! requests give the same faults, without a shared random generator. Without a `seed` one is
//! picked when the [`RuleSet`] is built and recorded in [`RuleSet::spec`] and [`RuleSet::seed`].
//!
//! A spec is a JSON object with at least one rule (an injection without rules is refused; to
//! remove every fault, recover it); its `duration` is more than 0 and at most [`MAX_DURATION`]
//! (one year).
//!
//! Errors name the rule by its 0-based index in `rules` and the field:
//! `rule 2: errno: unknown errno "EIOO"`.

use std::path::Path;
use std::time::Duration;

mod actions;
mod caller;
mod data;
mod engine;
mod errno;
mod op;
mod shorthand;
mod spec;
#[cfg(test)]
mod tests;
mod values;

pub use actions::{AttrSpec, CorruptSpec, CrashSpec, CrashWhen, ErrnoSpec, LatencySpec, ShortSpec};
pub use caller::prepare_proc;
pub(crate) use data::mix;
pub use errno::Errno;
pub use op::{Op, OpSet};
pub use shorthand::{Shorthand, is_shorthand_flag, parse_shorthand, shorthand_takes_value};
pub use spec::{MAX_DURATION, MAX_LATENCY, RuleSpec};
pub use values::{Comm, FileKind, GlobPattern, OneOrMany, OpName, Percent, Perm, Timestamp};

/// The JSON spec (design.md "JSON spec"). Parse it with [`Spec::from_json`], which validates it
/// completely; a spec built in code is validated by [`Spec::validate`] or [`RuleSet::new`].
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Path the spec applies to (informational for chaosfs; used by injectors).
    pub path: Option<String>,
    /// How long the injection lasts (humantime, e.g. "60s"); see [`Spec::duration_value`].
    pub duration: Option<String>,
    /// Seed for every random choice; same seed + same request sequence = same faults.
    pub seed: Option<u64>,
    /// Hold a 0 µs CPU wake-up latency request (`/dev/cpu_dma_latency`) while the faults are
    /// live: idle CPUs poll instead of sleeping, so each FUSE round trip wakes a running CPU
    /// (about twice as fast on a VM whose idle vCPUs halt), at the price of CPUs that never
    /// idle. Applied by whoever serves the spec (`iochaos run`, the injection server); the
    /// request ends when they stop. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub low_latency: bool,
    /// Crash mode (docs/crash.md): ChaosFS keeps what it needs to roll every file back to its
    /// last durable state, so that a crash (`iochaos crash`) loses exactly what was never
    /// made durable. Every file is then served with direct I/O (no kernel passthrough). The
    /// only field a spec needs: `rules` may be empty. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_mode: bool,
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
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

/// How corrupted bytes are produced (`"zeros"`, `"random"`, `"bitflip"` in specs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Transfer fewer bytes than asked. The value is the rule's byte cap (`usize::MAX` for a
    /// fraction); the exact count depends on the request size: use [`Verdict::short_len`],
    /// which also guarantees fewer bytes than asked.
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
    /// Cut the power (a `crash` rule fired): before serving the request (it fails with EIO and
    /// never happens) or right after (before its reply is sent). Crash mode only.
    pub crash: Option<CrashSpec>,
    /// Opaque state for [`Verdict::apply_data`] (the firing rule's mode and random stream).
    corrupt: Option<data::CorruptPlan>,
    /// Opaque state for [`Verdict::short_len`].
    short: Option<ShortSpec>,
}

impl Verdict {
    /// True if nothing is to be done.
    pub fn is_pass(&self) -> bool {
        self.delay.is_none()
            && self.errno.is_none()
            && self.attr.is_none()
            && self.data.is_none()
            && !self.full
            && self.crash.is_none()
    }

    /// Corrupt `buf` in place as the firing rule asked (no-op unless `data == Some(Corrupt)`).
    /// Deterministic for a given seed and request sequence. `zeros`/`random` change one run of
    /// `min(len, max_bytes)` bytes at a random offset (`random` makes each byte differ from
    /// the original); `bitflip` flips exactly one bit in each of `min(len, max_bytes)` bytes.
    pub fn apply_data(&self, buf: &mut [u8]) {
        if let Some(plan) = &self.corrupt {
            plan.apply(buf);
        }
    }

    /// For `data == Some(Short(_))`: how many of the `asked` bytes to transfer — the rule's
    /// `bytes` (or `floor(asked × fraction)`), kept between 1 and `asked - 1`; a request for 0
    /// or 1 byte is served whole. Without a short fault, `asked`.
    pub fn short_len(&self, asked: usize) -> usize {
        match &self.short {
            Some(s) => s.len(asked),
            None => asked,
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
    /// `None` when there are no rules: evaluation returns at once.
    engine: Option<engine::Engine>,
}

impl RuleSet {
    /// Validate and compile a spec (at least one rule: [`RuleSet::empty`] is the set without
    /// rules). Without a seed in the spec, one is picked at random and
    /// recorded in [`RuleSet::spec`]. Also opens `/proc` for `pid`/`comm` selectors
    /// ([`prepare_proc`]).
    pub fn new(mut spec: Spec) -> crate::Result<Self> {
        spec.validate()?;
        let seed = *spec.seed.get_or_insert_with(random_seed);
        prepare_proc();
        let engine = engine::Engine::new(&spec.rules, seed)
            .map_err(|(i, e)| crate::Error::SpecInvalid(e.in_rule(i)))?;
        Ok(RuleSet {
            spec,
            engine: Some(engine),
        })
    }

    /// No rules at all.
    pub fn empty() -> Self {
        RuleSet::default()
    }

    /// The spec this set was built from (with the seed in use filled in).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The seed every random choice derives from.
    pub fn seed(&self) -> u64 {
        self.engine
            .as_ref()
            .map_or(self.spec.seed.unwrap_or(0), engine::Engine::seed)
    }

    /// The spec asks for crash mode ([`Spec::crash_mode`]).
    pub fn crash_mode(&self) -> bool {
        self.spec.crash_mode
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.engine.is_none()
    }

    /// True if any rule selects by glob, so [`Call::path`] must be filled in.
    pub fn uses_paths(&self) -> bool {
        self.engine.as_ref().is_some_and(engine::Engine::uses_paths)
    }

    /// Decide what to do with one request. Updates counters.
    #[inline]
    pub fn evaluate(&self, call: &Call<'_>) -> Verdict {
        match &self.engine {
            None => Verdict::default(),
            Some(e) => e.evaluate(call),
        }
    }

    /// Could any rule affect `read`/`write` (data or errno or latency) on the file at `path`
    /// (relative to the mount root)? Conservative: true when unsure. Files for which this is
    /// false are opened in kernel passthrough mode, so their reads/writes never reach the rules.
    /// (A rule counts if its ops include read or write and its glob matches `path`; pid, comm,
    /// uid and percent are ignored.)
    /// In crash mode every file counts (its writes must reach the undo log).
    pub fn may_touch_data(&self, path: &Path) -> bool {
        self.spec.crash_mode || self.engine.as_ref().is_some_and(|e| e.may_touch_data(path))
    }

    /// Could any rule affect a metadata op (lookup, getattr, readdir, access, readlink, ...) on
    /// `path`, or change attributes returned for it? When false, the filesystem may let the kernel
    /// cache entries and attributes for it. (A rule counts if it is an `attr` rule or its ops
    /// include anything but read, write, flush, release and fsync, and its glob matches `path`.)
    pub fn may_touch_meta(&self, path: &Path) -> bool {
        self.engine.as_ref().is_some_and(|e| e.may_touch_meta(path))
    }

    /// Counters of each rule, in spec order.
    pub fn stats(&self) -> Vec<RuleStats> {
        self.engine
            .as_ref()
            .map(engine::Engine::stats)
            .unwrap_or_default()
    }
}

/// A seed for specs that give none (not cryptographic; only needs to differ between runs).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
