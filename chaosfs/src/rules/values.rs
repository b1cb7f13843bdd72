//! The validated value types of rule fields: op names, globs, percentages, value lists,
//! command names, durations, permission bits, timestamps, file kinds. Each is checked while it
//! is parsed, so a parse error names the field and the rule.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::op::Op;
use crate::Result;

/// A float in messages, short: `1e308`, not 309 digits.
pub(crate) fn short_float(f: f64) -> String {
    serde_json::Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string())
}

/// `floor(x)` as a `u64`, saturating: negative and NaN give 0, too large gives `u64::MAX`.
/// Floats have no `TryFrom`; Rust's float-to-int `as` is defined to saturate this way, which is
/// the clamp every caller wants (a percentage's threshold, a fraction of a length, a whole
/// percentage).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "float-to-int `as` saturates, the documented intent"
)]
pub(crate) fn saturating_u64(x: f64) -> u64 {
    x as u64
}

/// Serde for a checked text newtype `T(String)` with `T::parse(&str) -> Result<T, String>`:
/// serialized as its text, deserialized through `parse` (with `#[serde(try_from = "String")]`).
macro_rules! text_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(v: String) -> Result<Self, String> {
                $t::parse(&v)
            }
        }
    };
}

/// A user-facing op name and the ops it stands for (`"stat"` → getattr).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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

impl TryFrom<String> for OpName {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        OpName::parse(&v).ok_or_else(|| {
            format!("unknown op {v:?} (ops are lower case: read, write, open, stat, fsync, ...)")
        })
    }
}

/// A glob over the path relative to the mount root, checked to compile.
///
/// Without a `/` it matches the file's own name in any directory (`*.db`); with one it matches
/// the whole relative path (`data/*.db`, `**/wal/*`). `*` and `?` never match `/`; `**` does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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

text_serde!(GlobPattern);

/// A percentage, 0 to 100, decimals allowed.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize)]
#[serde(try_from = "f64")]
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
            s.serialize_u64(saturating_u64(self.0))
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl TryFrom<f64> for Percent {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        Percent::new(v).ok_or_else(|| format!("must be between 0 and 100, got {}", short_float(v)))
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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

text_serde!(Comm);

/// A duration written the humantime way (`"200ms"`, `"1m 30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct HumanDuration(pub(super) Duration);

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

pub(super) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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
        u16::try_from(v).ok().filter(|&v| v <= 0o7777).map(Perm)
    }
}

impl Serialize for Perm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Perm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let from_int = |v: i128| {
            if v < 0 {
                return Err(format!("{v} is negative"));
            }
            u64::try_from(v)
                .ok()
                .and_then(Perm::from_bits)
                .ok_or_else(|| format!("{v} is more than 4095 (0o7777); write octal as \"0644\""))
        };
        let expecting = "octal text such as \"0644\" or a number such as 420";
        number_or_text(d, expecting, from_int, Perm::parse_octal)
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
        let from_int = |v: i128| {
            i64::try_from(v)
                .map(Timestamp)
                .map_err(|_| format!("{v} is too large"))
        };
        let expecting = "seconds since the epoch or RFC 3339 text";
        number_or_text(d, expecting, from_int, Timestamp::parse)
    }
}

/// Deserialize a value written as an integer (any, widened to `i128`) or as text, each through
/// its checked constructor; `expecting` is the error's description of the value.
fn number_or_text<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    from_int: fn(i128) -> Result<T, String>,
    from_text: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T> {
        expecting: &'static str,
        from_int: fn(i128) -> Result<T, String>,
        from_text: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.from_int)(i128::from(v)).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            (self.from_int)(i128::from(v)).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.from_text)(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V {
        expecting,
        from_int,
        from_text,
    })
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
    pub(super) fn at(segments: &[serde_path_to_error::Segment], msg: String) -> Self {
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
