//! The JSON form of a rule ([`RuleSpec`]) and its validation; the value types its fields hold
//! are in `values` and `actions`.
//!
//! Every field is checked while it is parsed (an errno name, a duration, a percentage…), so a
//! parse error already names the field; what needs several fields (exactly one action, ops that
//! suit the action) is checked by [`Spec::validate`] when the rules are compiled.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::actions::{AttrSpec, CorruptSpec, CrashSpec, ErrnoSpec, LatencySpec, ShortSpec};
use super::op::Op;
use super::values::{
    Comm, GlobPattern, OneOrMany, OpName, Percent, RuleError, format_duration, parse_duration,
};
use super::{AttrOverride, Spec};
use crate::{Error, Result};

/// One rule as written in a spec: a selection (every field optional) plus exactly one action.
///
/// Selection: `ops`, `glob`, `percent`, `pid`, `comm`, `uid`, `after`, `every`, `times`.
/// Action (exactly one): `errno`, `latency`, `attr`, `corrupt`, `short`, `full`, `crash`.
/// See the module documentation for what each one means.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Operation names ([`Op::parse_names`]); default: the action's natural ops.
    pub ops: Option<Vec<OpName>>,
    /// Glob over the path relative to the mount root.
    pub glob: Option<GlobPattern>,
    /// Chance that a selected request is faulted (default 100).
    pub percent: Option<Percent>,
    /// Caller's process id (or thread id).
    pub pid: Option<OneOrMany<u32>>,
    /// Caller's command name, as in `/proc/PID/comm`.
    pub comm: Option<OneOrMany<Comm>>,
    /// Caller's (filesystem) user id.
    pub uid: Option<OneOrMany<u32>>,
    /// Leave the first N selected requests alone.
    pub after: Option<u64>,
    /// Fault only every Nth selected request (after `after`).
    pub every: Option<u64>,
    /// Fault at most N times.
    pub times: Option<u64>,
    /// Action: fail the request with an errno.
    pub errno: Option<ErrnoSpec>,
    /// Action: delay the request.
    pub latency: Option<LatencySpec>,
    /// Action: override returned attributes.
    pub attr: Option<AttrSpec>,
    /// Action: corrupt read or written data.
    pub corrupt: Option<CorruptSpec>,
    /// Action: transfer fewer bytes than asked.
    pub short: Option<ShortSpec>,
    /// Action: behave as a full disk (must be `true`).
    pub full: Option<bool>,
    /// Action: cut the power (crash mode only, docs/crash.md).
    pub crash: Option<CrashSpec>,
}

// ---------------------------------------------------------------------------------------------
// Spec-level parsing and validation.

impl Spec {
    /// Parse and fully validate a JSON spec. Errors are one line naming the rule index
    /// (0-based, as in `rules[2]`) and the field, e.g. `rule 2: errno: unknown errno "EIOO"`.
    pub fn from_json(text: &str) -> Result<Spec> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(Error::SpecJson)?;
        check_objects(&value).map_err(Error::SpecInvalid)?;
        let spec: Spec = serde_path_to_error::deserialize(value).map_err(|e| {
            let segments: Vec<_> = e.path().iter().cloned().collect();
            let msg = e.into_inner().to_string();
            Error::SpecInvalid(describe_spec_error(&segments, &msg))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Check what parsing alone cannot: at least one rule, exactly one action per rule, ops
    /// that suit the action, values in their bounds ([`MAX_LATENCY`], [`MAX_DURATION`]), a
    /// valid duration. [`RuleSet::new`](super::RuleSet::new) calls this too.
    pub fn validate(&self) -> Result<()> {
        self.duration_value()?;
        if self.rules.is_empty() && !self.crash_mode {
            return Err(Error::SpecInvalid(
                "rules: at least one rule is needed (to remove every fault, recover the injection; \
                 crash_mode alone needs none)"
                    .into(),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.check().map_err(|e| Error::SpecInvalid(e.in_rule(i)))?;
            if rule.crash.is_some() && !self.crash_mode {
                return Err(Error::SpecInvalid(
                    RuleError::new(
                        Some("crash"),
                        "needs crash mode (\"crash_mode\": true, --crash-mode): without the undo \
                         log there is nothing to roll back",
                    )
                    .in_rule(i),
                ));
            }
        }
        // The delays of every firing latency rule add up on one request.
        let total = self
            .rules
            .iter()
            .filter_map(|r| r.latency.as_ref())
            .try_fold(Duration::ZERO, |sum, l| sum.checked_add(l.longest()?));
        if total.is_none_or(|t| t > MAX_LATENCY) {
            return Err(Error::SpecInvalid(format!(
                "rules: the latency rules add up to more than {} (delay + jitter of each): a \
                 request they all select would be held longer than that",
                format_duration(MAX_LATENCY)
            )));
        }
        Ok(())
    }

    /// The `duration` field as a [`Duration`] (`None` when absent: until recovered); checked
    /// as [`Spec::parse_duration`] does.
    pub fn duration_value(&self) -> Result<Option<Duration>> {
        self.duration
            .as_deref()
            .map(Spec::parse_duration)
            .transpose()
    }

    /// Parse an injection's duration (the spec's `duration`, `--duration`): humantime text,
    /// more than zero and at most [`MAX_DURATION`].
    pub fn parse_duration(text: &str) -> Result<Duration> {
        let bad = |msg: String| Error::SpecInvalid(format!("duration: {msg}"));
        let d = parse_duration(text).map_err(bad)?;
        if d.is_zero() {
            return Err(bad(format!(
                "{text:?} is not positive (leave duration out to keep the faults until recovered)"
            )));
        }
        if d > MAX_DURATION {
            return Err(bad(format!(
                "{text:?} is more than {} (leave duration out to keep the faults until recovered)",
                format_duration(MAX_DURATION)
            )));
        }
        Ok(d)
    }
}

/// The longest one request may be held by latency rules: a rule's delay + jitter, and the sum
/// over all latency rules of a spec (their delays add up on a request they all select). A
/// request held longer is a hang, not latency; a kernel with `fs.fuse.max_request_timeout` set
/// would abort the whole connection (ENOTCONN for everything under the path) instead.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// The longest `duration` an injection may be given: one year (`"1y"`, 365.25 days). Faults
/// meant to last longer are given no duration (until recovered).
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// The spec and each rule must be JSON objects: serde would also read a struct from an array
/// (positionally), so `[]` would be a spec with no rules and `[["EIO"]]`... a rule.
fn check_objects(value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let Value::Object(spec) = value else {
        return Err(format!(
            "a spec is a JSON object such as {{\"rules\": [{{\"errno\": \"EIO\"}}]}}, not {}",
            kind(value)
        ));
    };
    let Some(Value::Array(rules)) = spec.get("rules") else {
        return Ok(());
    };
    for (i, rule) in rules.iter().enumerate() {
        let Value::Object(fields) = rule else {
            return Err(format!(
                "rule {i}: a rule is a JSON object such as {{\"errno\": \"EIO\"}}, not {}",
                kind(rule)
            ));
        };
        if let Some(attr @ Value::Array(_)) = fields.get("attr") {
            return Err(format!(
                "rule {i}: attr: an object such as {{\"perm\": \"0644\"}}, not {}",
                kind(attr)
            ));
        }
    }
    Ok(())
}

fn describe_spec_error(segments: &[serde_path_to_error::Segment], msg: &str) -> String {
    use serde_path_to_error::Segment;
    if let [Segment::Map { key }, Segment::Seq { index }, rest @ ..] = segments
        && key == "rules"
    {
        return RuleError::at(rest, msg.to_owned()).in_rule(*index);
    }
    let e = RuleError::at(segments, msg.to_owned());
    match e.field {
        Some(path) => format!("{path}: {}", e.msg),
        None => e.msg,
    }
}

/// Ops whose replies carry attributes (`readdirplus` is served as `readdir`'s entries and
/// `lookup`s, so it is not listed).
pub(crate) const ATTR_OPS: super::OpSet = super::OpSet::of(&[
    Op::Lookup,
    Op::Getattr,
    Op::Setattr,
    Op::Create,
    Op::Mkdir,
    Op::Mknod,
    Op::Symlink,
    Op::Link,
]);

/// Ops whose data `corrupt` and `short` change.
pub(crate) const DATA_OPS: super::OpSet = super::OpSet::of(&[Op::Read, Op::Write]);

/// Ops a full disk fails with ENOSPC.
pub(crate) const ENOSPC_OPS: super::OpSet = super::OpSet::of(&[
    Op::Write,
    Op::Create,
    Op::Mknod,
    Op::Mkdir,
    Op::Symlink,
    Op::Link,
    Op::Fallocate,
    Op::Setxattr,
]);

/// Ops `full` applies to: the ENOSPC ops plus `statfs`.
pub(crate) const FULL_OPS: super::OpSet = ENOSPC_OPS.union(super::OpSet::of(&[Op::Statfs]));

/// The action of a rule, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActionKind {
    Errno,
    Latency,
    Attr,
    Corrupt,
    Short,
    Full,
    Crash,
}

impl ActionKind {
    pub(crate) fn field(self) -> &'static str {
        match self {
            ActionKind::Errno => "errno",
            ActionKind::Latency => "latency",
            ActionKind::Attr => "attr",
            ActionKind::Corrupt => "corrupt",
            ActionKind::Short => "short",
            ActionKind::Full => "full",
            ActionKind::Crash => "crash",
        }
    }

    /// The ops a rule with this action applies to when it names none.
    pub(crate) fn natural_ops(self) -> super::OpSet {
        match self {
            ActionKind::Errno | ActionKind::Latency | ActionKind::Crash => super::OpSet::ALL,
            ActionKind::Attr => ATTR_OPS,
            ActionKind::Corrupt | ActionKind::Short => DATA_OPS,
            ActionKind::Full => FULL_OPS,
        }
    }

    /// The ops this action can apply to at all (`None`: any).
    fn allowed_ops(self) -> Option<super::OpSet> {
        match self {
            ActionKind::Errno | ActionKind::Latency | ActionKind::Crash => None,
            ActionKind::Attr => Some(ATTR_OPS),
            ActionKind::Corrupt | ActionKind::Short => Some(DATA_OPS),
            ActionKind::Full => Some(FULL_OPS),
        }
    }
}

impl RuleSpec {
    /// The single action of this rule.
    pub(crate) fn action_kind(&self) -> Result<ActionKind, RuleError> {
        let mut kinds = Vec::new();
        if self.errno.is_some() {
            kinds.push(ActionKind::Errno);
        }
        if self.latency.is_some() {
            kinds.push(ActionKind::Latency);
        }
        if self.attr.is_some() {
            kinds.push(ActionKind::Attr);
        }
        if self.corrupt.is_some() {
            kinds.push(ActionKind::Corrupt);
        }
        if self.short.is_some() {
            kinds.push(ActionKind::Short);
        }
        if self.crash.is_some() {
            kinds.push(ActionKind::Crash);
        }
        match self.full {
            Some(true) => kinds.push(ActionKind::Full),
            Some(false) => {
                return Err(RuleError::new(
                    Some("full"),
                    "must be true (leave it out for no full-disk fault)",
                ));
            }
            None => {}
        }
        match kinds[..] {
            [kind] => Ok(kind),
            [] => Err(RuleError::new(
                None,
                "no action: give one of errno, latency, attr, corrupt, short, full, crash",
            )),
            _ => Err(RuleError::new(
                None,
                format!(
                    "more than one action ({}): a rule has exactly one; write one rule per action",
                    kinds
                        .iter()
                        .map(|k| k.field())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The ops this rule applies to: its `ops`, or the action's natural ops.
    pub(crate) fn op_set(&self, kind: ActionKind) -> Result<super::OpSet, RuleError> {
        let Some(names) = &self.ops else {
            return Ok(kind.natural_ops());
        };
        if names.is_empty() {
            return Err(RuleError::new(
                Some("ops"),
                "empty list: leave ops out for the action's default ops",
            ));
        }
        let set: super::OpSet = names.iter().flat_map(|n| n.ops().iter().copied()).collect();
        if let Some(allowed) = kind.allowed_ops() {
            let bad = set.difference(allowed);
            if !bad.is_empty() {
                let bad: Vec<_> = bad.iter().map(Op::name).collect();
                let ok: Vec<_> = allowed.iter().map(Op::name).collect();
                return Err(RuleError::new(
                    Some("ops"),
                    format!(
                        "{} does not apply to {} (only to {})",
                        kind.field(),
                        bad.join(", "),
                        ok.join(", ")
                    ),
                ));
            }
        }
        Ok(set)
    }

    /// Check the whole rule.
    pub(crate) fn check(&self) -> Result<(), RuleError> {
        let kind = self.action_kind()?;
        self.op_set(kind)?;
        if let Some(attr) = &self.attr
            && attr.to_override() == AttrOverride::default()
        {
            return Err(RuleError::new(
                Some("attr"),
                "overrides nothing: give at least one of perm, uid, gid, size, atime, mtime, \
                 ctime, nlink, kind",
            ));
        }
        if self.every == Some(0) {
            return Err(RuleError::new(
                Some("every"),
                "must be at least 1 (1 = every selected request)",
            ));
        }
        if let Some(l) = &self.latency
            && l.longest().is_none_or(|d| d > MAX_LATENCY)
        {
            return Err(RuleError::new(
                Some("latency"),
                format!(
                    "{} is more than {}, the longest a request may be held",
                    if l.jitter.is_zero() {
                        "the delay"
                    } else {
                        "delay + jitter"
                    },
                    format_duration(MAX_LATENCY)
                ),
            ));
        }
        if let Some(attr) = &self.attr {
            attr.check()?;
        }
        Ok(())
    }
}
