//! The JSON form of a rule ([`RuleSpec`]) and the validated value types its fields hold.
//!
//! Every field is checked while it is parsed (an errno name, a duration, a percentage…), so a
//! parse error already names the field; what needs several fields (exactly one action, ops that
//! suit the action) is checked by [`Spec::validate`] when the rules are compiled.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::errno::Errno;
use super::op::Op;
use super::{AttrOverride, CorruptMode, Spec};
use crate::{Error, Result};

/// One rule as written in a spec: a selection (every field optional) plus exactly one action.
///
/// Selection: `ops`, `glob`, `percent`, `pid`, `comm`, `uid`, `after`, `every`, `times`.
/// Action (exactly one): `errno`, `latency`, `attr`, `corrupt`, `short`, `full`.
/// See the module documentation for what each one means.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Operation names ([`Op::parse_names`]); default: the action's natural ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpName>>,
    /// Glob over the path relative to the mount root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<GlobPattern>,
    /// Chance that a selected request is faulted (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// Caller's process id (or thread id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<OneOrMany<u32>>,
    /// Caller's command name, as in `/proc/PID/comm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<OneOrMany<Comm>>,
    /// Caller's (filesystem) user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<OneOrMany<u32>>,
    /// Leave the first N selected requests alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Fault only every Nth selected request (after `after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Fault at most N times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Action: fail the request with an errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<ErrnoSpec>,
    /// Action: delay the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySpec>,
    /// Action: override returned attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<AttrSpec>,
    /// Action: corrupt read or written data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<CorruptSpec>,
    /// Action: transfer fewer bytes than asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<ShortSpec>,
    /// Action: behave as a full disk (must be `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<bool>,
}

/// A validation error of one rule: the field it concerns (if one) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleError {
    pub field: Option<String>,
    pub msg: String,
}

impl RuleError {
    pub(crate) fn new(field: Option<&str>, msg: impl Into<String>) -> Self {
        RuleError {
            field: field.map(str::to_owned),
            msg: msg.into(),
        }
    }

    /// From a deserialization error with its path inside the rule.
    pub(crate) fn from_path(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let segments: Vec<_> = err.path().iter().cloned().collect();
        let msg = err.into_inner().to_string();
        Self::at(&segments, msg)
    }

    /// An error at `segments`; for an unknown field the path ends at its parent, since the
    /// message names the field already.
    fn at(segments: &[serde_path_to_error::Segment], msg: String) -> Self {
        let mut segments = segments;
        if let Some((serde_path_to_error::Segment::Map { key }, parent)) = segments.split_last()
            && msg.starts_with(&format!("unknown field `{key}`"))
        {
            segments = parent;
        }
        let path = render_path(segments.iter());
        RuleError {
            field: (!path.is_empty()).then_some(path),
            msg,
        }
    }

    /// One line for a JSON spec: `rule 2: errno: unknown errno "EIOO"`.
    pub(crate) fn in_rule(&self, index: usize) -> String {
        match &self.field {
            Some(f) => format!("rule {index}: {f}: {}", self.msg),
            None => format!("rule {index}: {}", self.msg),
        }
    }
}

fn render_path<'a>(segments: impl Iterator<Item = &'a serde_path_to_error::Segment>) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in segments {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
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
        if self.rules.is_empty() {
            return Err(Error::SpecInvalid(
                "rules: at least one rule is needed (to remove every fault, recover the injection)"
                    .into(),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.check().map_err(|e| Error::SpecInvalid(e.in_rule(i)))?;
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

/// The largest file size a stat can report (`st_size` is signed).
const MAX_SIZE: u64 = i64::MAX as u64;

/// Times an `attr` rule may set: years 0 to 9999, what RFC 3339 can write
/// (`0000-01-01T00:00:00Z` to `9999-12-31T23:59:59Z`).
const TIME_RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;

/// A float in messages, short: `1e308`, not 309 digits.
fn short_float(f: f64) -> String {
    serde_json::Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string())
}

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
        }
    }

    /// The ops a rule with this action applies to when it names none.
    pub(crate) fn natural_ops(self) -> super::OpSet {
        match self {
            ActionKind::Errno | ActionKind::Latency => super::OpSet::ALL,
            ActionKind::Attr => ATTR_OPS,
            ActionKind::Corrupt | ActionKind::Short => DATA_OPS,
            ActionKind::Full => FULL_OPS,
        }
    }

    /// The ops this action can apply to at all (`None`: any).
    fn allowed_ops(self) -> Option<super::OpSet> {
        match self {
            ActionKind::Errno | ActionKind::Latency => None,
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
                "no action: give one of errno, latency, attr, corrupt, short, full",
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

// ---------------------------------------------------------------------------------------------
// Field types.

/// A user-facing op name and the ops it stands for (`"stat"` → getattr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpName {
    name: String,
    ops: &'static [Op],
}

impl OpName {
    /// `None` if the name is unknown.
    pub fn parse(name: &str) -> Option<OpName> {
        Op::parse_names(name).map(|ops| OpName {
            name: name.to_owned(),
            ops,
        })
    }

    /// The name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ops it selects.
    pub fn ops(&self) -> &'static [Op] {
        self.ops
    }
}

impl Serialize for OpName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for OpName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        OpName::parse(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown op {name:?} (ops are lower case: read, write, open, stat, fsync, ...)"
            ))
        })
    }
}

/// A glob over the path relative to the mount root, checked to compile.
///
/// Without a `/` it matches the file's own name in any directory (`*.db`); with one it matches
/// the whole relative path (`data/*.db`, `**/wal/*`). `*` and `?` never match `/`; `**` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobPattern(String);

impl GlobPattern {
    /// Check and wrap a pattern.
    pub fn parse(pattern: &str) -> Result<GlobPattern, String> {
        if pattern.is_empty() {
            return Err("empty glob".into());
        }
        if let Some(rel) = pattern.strip_prefix('/') {
            return Err(format!(
                "glob {pattern:?} starts with /: globs are relative to the mount root, write {rel:?}"
            ));
        }
        build_glob(pattern).map_err(|e| format!("invalid glob {pattern:?}: {e}"))?;
        Ok(GlobPattern(pattern.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if the pattern matches whole relative paths rather than file names.
    pub fn is_path_glob(&self) -> bool {
        self.0.contains('/')
    }

    /// The compiled matcher (`None` only for a pattern that did not come through `parse`).
    pub(crate) fn matcher(&self) -> Option<globset::GlobMatcher> {
        build_glob(&self.0).ok().map(|g| g.compile_matcher())
    }
}

fn build_glob(pattern: &str) -> std::result::Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

impl Serialize for GlobPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GlobPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GlobPattern::parse(&text).map_err(de::Error::custom)
    }
}

/// A percentage, 0 to 100, decimals allowed.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `None` unless `0 <= p <= 100`.
    pub fn new(p: f64) -> Option<Percent> {
        (p.is_finite() && (0.0..=100.0).contains(&p)).then_some(Percent(p))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 {
            s.serialize_u64(self.0 as u64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        Percent::new(p).ok_or_else(|| {
            de::Error::custom(format!("must be between 0 and 100, got {}", short_float(p)))
        })
    }
}

/// A value or a non-empty list of values (`"pid": 42` or `"pid": [42, 43]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0[..] {
            [one] => one.serialize(s),
            many => {
                let mut seq = s.serialize_seq(Some(many.len()))?;
                for v in many {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> V<T> {
            fn one<E: de::Error>(v: impl de::IntoDeserializer<'de, E>) -> Result<OneOrMany<T>, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
        }
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::one(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::one(v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Self::one(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Self::one(v.to_owned())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Self::one(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("empty list: it would select nothing"));
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A command name as the kernel keeps it: 1 to 15 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comm(String);

impl Comm {
    /// Longest name the kernel keeps (`TASK_COMM_LEN - 1`).
    pub const MAX_LEN: usize = 15;

    pub fn parse(name: &str) -> Result<Comm, String> {
        if name.is_empty() {
            return Err("empty command name".into());
        }
        if name.len() > Self::MAX_LEN {
            return Err(format!(
                "{name:?} is longer than {} bytes: the kernel keeps only {:?}",
                Self::MAX_LEN,
                truncate_utf8(name, Self::MAX_LEN)
            ));
        }
        Ok(Comm(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Comm::parse(&name).map_err(de::Error::custom)
    }
}

/// The `errno` action: one name, a list (equal weights) or a map of name to weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrnoSpec {
    One(Errno),
    List(Vec<Errno>),
    Weighted(Vec<(Errno, u32)>),
}

impl ErrnoSpec {
    /// Every choice with its weight (all weights > 0 once parsed).
    pub fn choices(&self) -> Vec<(Errno, u32)> {
        match self {
            ErrnoSpec::One(e) => vec![(*e, 1)],
            ErrnoSpec::List(l) => l.iter().map(|e| (*e, 1)).collect(),
            ErrnoSpec::Weighted(w) => w.clone(),
        }
    }
}

impl Serialize for ErrnoSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ErrnoSpec::One(e) => e.serialize(s),
            ErrnoSpec::List(l) => l.serialize(s),
            ErrnoSpec::Weighted(w) => {
                let mut map = s.serialize_map(Some(w.len()))?;
                for (e, weight) in w {
                    map.serialize_entry(e.name(), weight)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ErrnoSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ErrnoSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an errno name (\"EIO\"), a list ([\"EIO\", \"ENOSPC\"]) or a map of name to \
                     weight ({\"EIO\": 3, \"ENOSPC\": 1})",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ErrnoSpec, E> {
                Errno::deserialize(de::value::StrDeserializer::<E>::new(v)).map(ErrnoSpec::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ErrnoSpec, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<Errno>()? {
                    out.push(e);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("empty list of errnos"));
                }
                Ok(ErrnoSpec::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ErrnoSpec, A::Error> {
                let mut out: Vec<(Errno, u32)> = Vec::new();
                while let Some(e) = map.next_key::<Errno>()? {
                    let w: u32 = map.next_value()?;
                    if w == 0 {
                        return Err(de::Error::custom(format!(
                            "weight of {e} is 0: leave it out instead"
                        )));
                    }
                    if out.iter().any(|(o, _)| o == &e) {
                        return Err(de::Error::custom(format!("{e} given twice")));
                    }
                    out.push((e, w));
                }
                if out.is_empty() {
                    return Err(de::Error::custom("empty map of errnos"));
                }
                let total: u64 = out.iter().map(|(_, w)| u64::from(*w)).sum();
                if total > u64::from(u32::MAX) {
                    return Err(de::Error::custom("weights add up to more than 4294967295"));
                }
                Ok(ErrnoSpec::Weighted(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written the humantime way (`"200ms"`, `"1m 30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"200ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The `latency` action: a fixed delay, or a delay spread uniformly over `delay ± jitter`
/// (never below zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySpec {
    pub delay: Duration,
    pub jitter: Duration,
}

impl LatencySpec {
    /// The longest this delays a request: delay + jitter (`None` if that overflows).
    pub fn longest(&self) -> Option<Duration> {
        self.delay.checked_add(self.jitter)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyMap {
    delay: HumanDuration,
    #[serde(default)]
    jitter: HumanDuration,
}

impl Serialize for LatencySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.jitter.is_zero() {
            s.serialize_str(&format_duration(self.delay))
        } else {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("delay", &format_duration(self.delay))?;
            map.serialize_entry("jitter", &format_duration(self.jitter))?;
            map.end()
        }
    }
}

impl<'de> Deserialize<'de> for LatencySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LatencySpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration (\"200ms\") or {\"delay\": \"200ms\", \"jitter\": \"50ms\"}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LatencySpec, E> {
                Ok(LatencySpec {
                    delay: parse_duration(v).map_err(E::custom)?,
                    jitter: Duration::ZERO,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LatencySpec, A::Error> {
                let m = LatencyMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LatencySpec {
                    delay: m.delay.0,
                    jitter: m.jitter.0,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Permission bits: `"0644"` (octal text) or `420` (a number), at most `0o7777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm(pub u16);

impl Perm {
    pub fn parse_octal(text: &str) -> Result<Perm, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|_| !digits.is_empty() && !digits.starts_with('+'))
            .and_then(|v| Perm::from_bits(u64::from(v)))
            .ok_or_else(|| format!("{text:?} is not octal permission bits (0000 to 7777)"))
    }

    fn from_bits(v: u64) -> Option<Perm> {
        (v <= 0o7777).then_some(Perm(v as u16))
    }
}

impl Serialize for Perm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Perm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Perm;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("octal text such as \"0644\" or a number such as 420")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Perm, E> {
                Perm::from_bits(v).ok_or_else(|| {
                    E::custom(format!(
                        "{v} is more than 4095 (0o7777); write octal as \"0644\""
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Perm, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Perm, E> {
                Perm::parse_octal(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A time in seconds since the epoch: a number, or RFC 3339 text (`"2024-01-01T00:00:00Z"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        if let Ok(secs) = text.parse::<i64>() {
            return Ok(Timestamp(secs));
        }
        let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
            format!("{text:?} is neither seconds since the epoch nor RFC 3339: {e}")
        })?;
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Ok(Timestamp(secs))
    }

    /// As a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(self.0.unsigned_abs())
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds since the epoch or RFC 3339 text")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A file type for the `kind` attribute override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl FileKind {
    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::Char => libc::S_IFCHR,
            FileKind::Block => libc::S_IFBLK,
        }
    }

    /// Parse a name (`file`, `dir`, ...).
    pub fn parse(name: &str) -> Option<FileKind> {
        FileKind::deserialize(de::value::StrDeserializer::<de::value::Error>::new(name)).ok()
    }
}

/// The `attr` action: fields to override in returned attributes (at least one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttrSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm: Option<Perm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nlink: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FileKind>,
}

impl AttrSpec {
    /// Values a stat can carry: a size of at most `i64::MAX`, times in years 0 to 9999.
    fn check(&self) -> Result<(), RuleError> {
        if let Some(size) = self.size
            && size > MAX_SIZE
        {
            return Err(RuleError::new(
                Some("attr.size"),
                format!("{size} is more than {MAX_SIZE}, the largest size a file can have"),
            ));
        }
        for (name, t) in [
            ("attr.atime", self.atime),
            ("attr.mtime", self.mtime),
            ("attr.ctime", self.ctime),
        ] {
            if let Some(Timestamp(secs)) = t
                && !TIME_RANGE.contains(&secs)
            {
                return Err(RuleError::new(
                    Some(name),
                    format!(
                        "{secs} is outside years 0 to 9999 ({} to {} seconds since the epoch)",
                        TIME_RANGE.start(),
                        TIME_RANGE.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The override the filesystem applies.
    pub fn to_override(&self) -> AttrOverride {
        AttrOverride {
            perm: self.perm.map(|p| p.0),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: self.atime.map(|t| t.0),
            mtime: self.mtime.map(|t| t.0),
            ctime: self.ctime.map(|t| t.0),
            nlink: self.nlink,
            kind: self.kind.map(FileKind::mode_bits),
        }
    }
}

/// The `corrupt` action: how, and how many bytes per request at most.
///
/// `max_bytes` defaults to 1 for `bitflip` (one bit flipped in one byte) and to the whole
/// buffer for `zeros` and `random`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptSpec {
    pub mode: CorruptMode,
    pub max_bytes: Option<u64>,
}

impl CorruptSpec {
    /// The byte limit in force (`usize::MAX`: the whole buffer).
    pub fn effective_max_bytes(&self) -> usize {
        match (self.max_bytes, self.mode) {
            (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
            (None, CorruptMode::BitFlip) => 1,
            (None, CorruptMode::Zeros | CorruptMode::Random) => usize::MAX,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorruptMap {
    mode: CorruptMode,
    #[serde(default)]
    max_bytes: Option<u64>,
}

impl Serialize for CorruptSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.max_bytes {
            None => self.mode.serialize(s),
            Some(n) => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("mode", &self.mode)?;
                map.serialize_entry("max_bytes", &n)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for CorruptSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CorruptSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"zeros\", \"random\", \"bitflip\" or {\"mode\": \"bitflip\", \"max_bytes\": 4}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CorruptSpec, E> {
                let mode = CorruptMode::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(CorruptSpec {
                    mode,
                    max_bytes: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CorruptSpec, A::Error> {
                let m = CorruptMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if m.max_bytes == Some(0) {
                    return Err(de::Error::custom(
                        "max_bytes must be at least 1 (use times to limit occurrences)",
                    ));
                }
                Ok(CorruptSpec {
                    mode: m.mode,
                    max_bytes: m.max_bytes,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `short` action: transfer fewer bytes than asked.
///
/// `Bytes(n)` (`n >= 1`): at most `n` bytes. `Fraction(f)` (`0 < f < 1`): `floor(asked × f)`
/// bytes. Either way at least 1 byte (0 would read as end of file) and fewer than asked; a
/// request for 1 byte cannot be shortened and is served whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShortSpec {
    Bytes(u64),
    Fraction(f64),
}

impl ShortSpec {
    /// How many of `asked` bytes to transfer.
    pub fn len(&self, asked: usize) -> usize {
        if asked <= 1 {
            return asked;
        }
        let n = match *self {
            ShortSpec::Bytes(n) => usize::try_from(n).unwrap_or(usize::MAX),
            ShortSpec::Fraction(f) => (asked as f64 * f).floor() as usize,
        };
        n.clamp(1, asked - 1)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortMap {
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    fraction: Option<f64>,
}

impl Serialize for ShortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match *self {
            ShortSpec::Bytes(n) => map.serialize_entry("bytes", &n)?,
            ShortSpec::Fraction(f) => map.serialize_entry("fraction", &f)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ShortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ShortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{\"bytes\": N} or {\"fraction\": 0.5}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ShortSpec, E> {
                short_bytes(v)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ShortSpec, A::Error> {
                let m = ShortMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (m.bytes, m.fraction) {
                    (Some(n), None) => short_bytes(n),
                    (None, Some(f)) if f.is_finite() && f > 0.0 && f < 1.0 => {
                        Ok(ShortSpec::Fraction(f))
                    }
                    (None, Some(f)) => Err(de::Error::custom(format!(
                        "fraction must be more than 0 and less than 1, got {}",
                        short_float(f)
                    ))),
                    _ => Err(de::Error::custom("give exactly one of bytes or fraction")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn short_bytes<E: de::Error>(n: u64) -> Result<ShortSpec, E> {
    if n == 0 {
        return Err(E::custom(
            "bytes must be at least 1 (a 0-byte transfer reads as end of file)",
        ));
    }
    Ok(ShortSpec::Bytes(n))
}
