//! The actions of a rule as written in a spec: `errno`, `latency`, `attr`, `corrupt`, `short`
//! (`full` is a plain `bool`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::errno::Errno;
use super::{AttrOverride, CorruptMode};
use crate::Result;

use super::values::{
    FileKind, HumanDuration, Perm, RuleError, Timestamp, parse_duration, saturating_u64,
    short_float,
};

/// The largest file size a stat can report (`st_size` is signed).
const MAX_SIZE: u64 = i64::MAX as u64;

/// Times an `attr` rule may set: years 0 to 9999, what RFC 3339 can write
/// (`0000-01-01T00:00:00Z` to `9999-12-31T23:59:59Z`).
const TIME_RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;

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
        // humantime text ("200ms"), as written.
        let text = humantime_serde::Serde::from;
        if self.jitter.is_zero() {
            text(self.delay).serialize(s)
        } else {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("delay", &text(self.delay))?;
            map.serialize_entry("jitter", &text(self.jitter))?;
            map.end()
        }
    }
}

impl<'de> Deserialize<'de> for LatencySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = "a duration (\"200ms\") or {\"delay\": \"200ms\", \"jitter\": \"50ms\"}";
        let from_text = |v: &str| {
            Ok(LatencySpec {
                delay: parse_duration(v)?,
                jitter: Duration::ZERO,
            })
        };
        let from_map = |m: LatencyMap| {
            Ok(LatencySpec {
                delay: m.delay.0,
                jitter: m.jitter.0,
            })
        };
        text_or_map(d, expecting, from_text, from_map)
    }
}

/// Deserialize an action written as text (its short form) or as a map (`M`, the long form),
/// each through its checked constructor; `expecting` is the error's description of the value.
fn text_or_map<'de, D: Deserializer<'de>, T, M: Deserialize<'de>>(
    d: D,
    expecting: &'static str,
    from_text: fn(&str) -> Result<T, String>,
    from_map: fn(M) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T, M> {
        expecting: &'static str,
        from_text: fn(&str) -> Result<T, String>,
        from_map: fn(M) -> Result<T, String>,
    }
    impl<'de, T, M: Deserialize<'de>> Visitor<'de> for V<T, M> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.from_text)(v).map_err(E::custom)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let m = M::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.from_map)(m).map_err(de::Error::custom)
        }
    }
    d.deserialize_any(V {
        expecting,
        from_text,
        from_map,
    })
}

/// The `attr` action: fields to override in returned attributes (at least one).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttrSpec {
    pub perm: Option<Perm>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    pub nlink: Option<u32>,
    pub kind: Option<FileKind>,
}

impl AttrSpec {
    /// Values a stat can carry: a size of at most `i64::MAX`, times in years 0 to 9999.
    pub(super) fn check(&self) -> Result<(), RuleError> {
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
        let expecting =
            "\"zeros\", \"random\", \"bitflip\" or {\"mode\": \"bitflip\", \"max_bytes\": 4}";
        let from_text = |v: &str| {
            let mode =
                CorruptMode::deserialize(de::value::StrDeserializer::<de::value::Error>::new(v))
                    .map_err(|e| e.to_string())?;
            Ok(CorruptSpec {
                mode,
                max_bytes: None,
            })
        };
        let from_map = |m: CorruptMap| {
            if m.max_bytes == Some(0) {
                return Err(
                    "max_bytes must be at least 1 (use times to limit occurrences)".to_owned(),
                );
            }
            Ok(CorruptSpec {
                mode: m.mode,
                max_bytes: m.max_bytes,
            })
        };
        text_or_map(d, expecting, from_text, from_map)
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
            ShortSpec::Fraction(f) => {
                usize::try_from(saturating_u64(asked as f64 * f)).unwrap_or(usize::MAX)
            }
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

/// The `crash` action (crash mode, docs/crash.md): cut the power when the rule fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSpec {
    /// When the power goes relative to the request that fired the rule.
    #[serde(default)]
    pub when: CrashWhen,
    /// The last `torn` unsynced writes of each file survive up to a 512 B boundary the seed
    /// picks (docs/crash.md, "Torn and reordered writes").
    #[serde(default, skip_serializing_if = "is_default")]
    pub torn: u32,
    /// Any seeded subset of the unsynced writes survives, not only a prefix.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reorder: bool,
    /// Seed of those choices (default 0).
    #[serde(default, skip_serializing_if = "is_default")]
    pub seed: u64,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// When a `crash` rule cuts the power.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashWhen {
    /// Before the request is served: it never happens (an fsync that fired the rule makes
    /// nothing durable).
    #[default]
    Before,
    /// Right after the request was served, before its reply is sent: it happened (an fsync is
    /// durable) but the caller never learns it.
    After,
}
