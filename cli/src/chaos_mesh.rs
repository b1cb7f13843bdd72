//! Chaos Mesh `IOChaos` documents (`chaos-mesh.org/v1alpha1`) converted to iochaos's JSON spec
//! (docs/chaos-mesh.md). Every field is either mapped to what ChaosFS does or refused with one
//! line naming it: nothing is dropped silently. The result goes through the same validation as
//! `--spec` (`chaosfs::rules::Spec::from_json`).

use std::time::Duration;

use chaosfs::rules::Errno;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

/// The document, as far as iochaos reads it. `metadata` and `status` describe the Kubernetes
/// object, not the faults; unknown fields anywhere are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<IgnoredAny>,
    #[serde(default)]
    status: Option<IgnoredAny>,
    spec: IoChaosSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IoChaosSpec {
    action: String,
    mode: Option<String>,
    value: Option<String>,
    selector: Option<IgnoredAny>,
    container_names: Option<Vec<String>>,
    volume_path: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    percent: Option<i64>,
    delay: Option<String>,
    errno: Option<u32>,
    attr: Option<AttrOverride>,
    mistake: Option<Mistake>,
    duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttrOverride {
    ino: Option<IgnoredAny>,
    size: Option<u64>,
    blocks: Option<IgnoredAny>,
    atime: Option<Timespec>,
    mtime: Option<Timespec>,
    ctime: Option<Timespec>,
    kind: Option<String>,
    perm: Option<u16>,
    nlink: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    rdev: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Timespec {
    sec: i64,
    #[serde(default)]
    nsec: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Mistake {
    filling: Option<String>,
    max_occurrences: Option<i64>,
    max_length: Option<i64>,
}

/// Chaos Mesh's method names (`IoMethod`) that ChaosFS has under the same name.
const SAME_METHODS: &[&str] = &[
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
];

/// Chaos Mesh's method names ChaosFS cannot fault, and why.
const NO_EQUIVALENT: &[(&str, &str)] = &[
    (
        "forget",
        "the kernel expects no answer to it, so it cannot fail",
    ),
    (
        "getlk",
        "POSIX locks are kept by the kernel, ChaosFS never sees them",
    ),
    (
        "setlk",
        "POSIX locks are kept by the kernel, ChaosFS never sees them",
    ),
    ("bmap", "it exists only for block-device (fuseblk) mounts"),
];

/// `target`: the name of the container named on the command line (`inject … CONTAINER`), which
/// `containerNames` must list; `None` where there is none (`convert`, `run`, `--pid`).
pub fn convert(text: &str, target: Option<&str>) -> Result<Value, String> {
    let doc: Document =
        serde_saphyr::from_str(text).map_err(|e| one_line(&e.without_snippet().to_string()))?;
    let _ = (doc.metadata, doc.status);
    if doc.api_version != "chaos-mesh.org/v1alpha1" {
        return Err(format!(
            "apiVersion: {:?} (expected chaos-mesh.org/v1alpha1)",
            doc.api_version
        ));
    }
    if doc.kind != "IOChaos" {
        return Err(format!("kind: {:?} (expected IOChaos)", doc.kind));
    }
    let s = doc.spec;
    check_target(&s, target)?;
    let volume = s
        .volume_path
        .as_deref()
        .ok_or("spec.volumePath: required (the directory to inject)")?;
    if !volume.starts_with('/') {
        return Err(format!("spec.volumePath: {volume:?} is not absolute"));
    }
    let mut rule = Map::new();
    if let Some(glob) = glob_of(volume, s.path.as_deref())? {
        rule.insert("glob".into(), glob.into());
    }
    if let Some(methods) = &s.methods {
        rule.insert("ops".into(), ops_of(methods)?.into());
    }
    match s.percent {
        None | Some(100) => {}
        Some(p @ 1..=99) => {
            rule.insert("percent".into(), p.into());
        }
        Some(0) => {
            return Err(
                "spec.percent: 0 faults nothing (Chaos Mesh reads 0 as unset); give 1-100 or leave it out"
                    .into(),
            );
        }
        Some(p) => return Err(format!("spec.percent: {p} is not between 1 and 100")),
    }
    let action = s.action.as_str();
    let (key, value) = match action {
        "latency" => {
            let delay = s
                .delay
                .as_deref()
                .ok_or("spec.delay: required by action latency")?;
            let d = go_duration(delay).map_err(|e| format!("spec.delay: {e}"))?;
            ("latency", humantime::format_duration(d).to_string().into())
        }
        "fault" => {
            let code = s
                .errno
                .ok_or("spec.errno: required by action fault (a number, 5 is EIO)")?;
            let errno = i32::try_from(code)
                .ok()
                .filter(|&c| c > 0)
                .and_then(Errno::from_code)
                .ok_or_else(|| format!("spec.errno: {code} is no Linux errno"))?;
            ("errno", errno.name().into())
        }
        "attrOverride" => {
            let attr = s
                .attr
                .as_ref()
                .ok_or("spec.attr: required by action attrOverride")?;
            ("attr", attr_of(attr)?)
        }
        "mistake" => {
            let m = s
                .mistake
                .as_ref()
                .ok_or("spec.mistake: required by action mistake")?;
            ("corrupt", corrupt_of(m)?)
        }
        other => {
            return Err(format!(
                "spec.action: {other:?} (one of latency, fault, attrOverride, mistake)"
            ));
        }
    };
    for (field, given, used_by) in [
        ("delay", s.delay.is_some(), "latency"),
        ("errno", s.errno.is_some(), "fault"),
        ("attr", s.attr.is_some(), "attrOverride"),
        ("mistake", s.mistake.is_some(), "mistake"),
    ] {
        if given && used_by != action {
            return Err(format!(
                "spec.{field}: only for action {used_by}, this one is {action}"
            ));
        }
    }
    rule.insert(key.into(), value);
    let mut spec = json!({ "path": volume, "rules": [rule] });
    if let Some(d) = &s.duration {
        let d = go_duration(d).map_err(|e| format!("spec.duration: {e}"))?;
        spec["duration"] = humantime::format_duration(d).to_string().into();
    }
    Ok(spec)
}

/// `mode`, `value`, `selector`, `containerNames`: iochaos injects the one target named on the
/// command line; these are accepted only where they select exactly that target.
fn check_target(s: &IoChaosSpec, target: Option<&str>) -> Result<(), String> {
    if s.selector.is_some() {
        return Err("spec.selector: iochaos does not select pods (that needs the CRI, not supported yet); \
                    delete it and name the target on the command line (inject --chaos-mesh FILE CONTAINER)"
            .into());
    }
    match s.mode.as_deref() {
        None | Some("one" | "all") => {}
        Some(m) => {
            return Err(format!(
                "spec.mode: {m:?} picks among many pods; iochaos injects the one target named \
                 on the command line (use one or all)"
            ));
        }
    }
    if s.value.is_some() {
        return Err("spec.value: only for modes fixed, fixed-percent, random-max-percent".into());
    }
    if let Some(names) = &s.container_names {
        match target {
            Some(t) if names.iter().any(|n| n == t) => {}
            Some(t) => {
                return Err(format!(
                    "spec.containerNames: {names:?} does not name the target container {t:?}"
                ));
            }
            None => {
                return Err(
                    "spec.containerNames: there is no container to match here; name it on the \
                     command line (inject --chaos-mesh FILE CONTAINER) or delete the field"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

/// `path` (an absolute glob) as a glob relative to `volumePath`.
fn glob_of(volume: &str, path: Option<&str>) -> Result<Option<String>, String> {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let root = volume.trim_end_matches('/');
    if path.trim_end_matches('/') == root {
        return Ok(None);
    }
    match path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if !rel.is_empty() => Ok(Some(rel.to_owned())),
        _ => Err(format!(
            "spec.path: {path:?} is not under volumePath {volume:?}"
        )),
    }
}

fn ops_of(methods: &[String]) -> Result<Vec<String>, String> {
    if methods.is_empty() {
        return Err("spec.methods: empty (leave it out for every method)".into());
    }
    methods
        .iter()
        .map(|m| {
            let name = m.to_ascii_lowercase();
            if SAME_METHODS.contains(&name.as_str()) {
                Ok(name)
            } else if let Some((_, why)) = NO_EQUIVALENT.iter().find(|(n, _)| *n == name) {
                Err(format!(
                    "spec.methods: {m:?} has no iochaos equivalent: {why}"
                ))
            } else {
                Err(format!(
                    "spec.methods: {m:?} is no Chaos Mesh IOChaos method"
                ))
            }
        })
        .collect()
}

fn attr_of(a: &AttrOverride) -> Result<Value, String> {
    for (field, given) in [
        ("ino", a.ino.is_some()),
        ("blocks", a.blocks.is_some()),
        ("rdev", a.rdev.is_some()),
    ] {
        if given {
            return Err(format!(
                "spec.attr.{field}: ChaosFS does not override {field} (it can: perm, uid, gid, \
                 size, atime, mtime, ctime, nlink, kind)"
            ));
        }
    }
    let mut out = Map::new();
    if let Some(perm) = a.perm {
        out.insert("perm".into(), perm.into());
    }
    for (field, v) in [("uid", a.uid), ("gid", a.gid), ("nlink", a.nlink)] {
        if let Some(v) = v {
            out.insert(field.into(), v.into());
        }
    }
    if let Some(size) = a.size {
        out.insert("size".into(), size.into());
    }
    for (field, t) in [
        ("atime", &a.atime),
        ("mtime", &a.mtime),
        ("ctime", &a.ctime),
    ] {
        if let Some(t) = t {
            if t.nsec != 0 {
                return Err(format!(
                    "spec.attr.{field}.nsec: ChaosFS sets whole seconds (nsec must be 0)"
                ));
            }
            out.insert(field.into(), t.sec.into());
        }
    }
    if let Some(kind) = &a.kind {
        let ours = match kind.as_str() {
            "namedPipe" => "fifo",
            "charDevice" => "char",
            "blockDevice" => "block",
            "directory" => "dir",
            "regularFile" => "file",
            "symlink" => "symlink",
            "socket" => "socket",
            other => {
                return Err(format!(
                    "spec.attr.kind: {other:?} is no Chaos Mesh file type"
                ));
            }
        };
        out.insert("kind".into(), ours.into());
    }
    if out.is_empty() {
        return Err("spec.attr: empty (give at least one field)".into());
    }
    Ok(out.into())
}

fn corrupt_of(m: &Mistake) -> Result<Value, String> {
    let mode = match m.filling.as_deref() {
        Some("zero") => "zeros",
        Some("random") => "random",
        Some(other) => return Err(format!("spec.mistake.filling: {other:?} (zero or random)")),
        None => return Err("spec.mistake.filling: required (zero or random)".into()),
    };
    match m.max_occurrences {
        None | Some(1) => {}
        Some(n) => {
            return Err(format!(
                "spec.mistake.maxOccurrences: {n}: ChaosFS corrupts one run of bytes per \
                 request, so only 1 can be honoured"
            ));
        }
    }
    let len = m
        .max_length
        .ok_or("spec.mistake.maxLength: required (bytes per run)")?;
    if len < 1 {
        return Err(format!("spec.mistake.maxLength: {len} is not at least 1"));
    }
    Ok(json!({ "mode": mode, "max_bytes": len }))
}

/// A Go `time.ParseDuration` string ("300ms", "1.5h", "2h45m"; units ns, us, µs, ms, s, m,
/// h), as Chaos Mesh writes `delay` and `duration`. Negative or zero durations are refused.
fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 300ms, 1.5h or 2h45m");
    if text.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (whole, frac) = rest[..n].split_once('.').unwrap_or((&rest[..n], ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        // Digits beyond nanoseconds are cut, as Go does.
        let frac = &frac[..frac.len().min(20)];
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
        let part: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        nanos = whole
            .checked_mul(unit)
            .and_then(|w| w.checked_add(part * unit / scale))
            .and_then(|v| nanos.checked_add(v))
            .ok_or_else(bad)?;
    }
    let d = u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| bad())?;
    if d.is_zero() {
        return Err(format!("{text:?} is zero"));
    }
    Ok(d)
}

/// A parser message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
