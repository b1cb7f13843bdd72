//! `iochaos setup containerd`: register the iochaos runtime with containerd's CRI plugin in its
//! `config.toml` (what `packaging/containerd/iochaos-runtime.toml` says by hand), the way
//! `nvidia-ctk runtime configure` does for its runtime: idempotent (a second run changes
//! nothing), the file's comments and layout kept (`toml_edit`), `--dry-run` prints the unified
//! diff and writes nothing, `--remove` takes the runtime out again. The file is replaced
//! atomically (a temporary file in the same directory, renamed over it) with its mode kept.
//! Containerd reads it only at start: the output says to restart it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

/// The runtime type containerd maps to the `containerd-shim-iochaos-v2` binary.
pub const RUNTIME_TYPE: &str = "io.containerd.iochaos.v2";
/// The annotations the CRI plugin passes to the OCI spec, where the shim reads the spec.
const ANNOTATIONS: &str = "dev.iochaos.*";
/// The shim binary containerd looks for on its PATH.
const SHIM: &str = "containerd-shim-iochaos-v2";

/// `iochaos setup containerd …`.
#[derive(Debug)]
pub struct ContainerdSetup {
    pub config: PathBuf,
    pub runtime: String,
    pub dry_run: bool,
    pub remove: bool,
}

/// What an edit did.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Added,
    Updated,
    Removed,
    None,
}

pub fn containerd(a: &ContainerdSetup) -> anyhow::Result<i32> {
    let path = a.config.display().to_string();
    let old = match std::fs::read_to_string(&a.config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("reading {path}: {e}"),
    };
    let text = old.as_deref().unwrap_or_default();
    let (new, change) = edit(text, &a.runtime, a.remove).map_err(|e| anyhow!("{path}: {e}"))?;
    if !a.remove {
        warn_if_unusable(&new);
    }
    if change == Change::None {
        let state = if a.remove {
            "not configured"
        } else {
            "configured already"
        };
        println!("{path}: runtime {} {state}; nothing to change", a.runtime);
        return Ok(0);
    }
    if a.dry_run {
        let diff = similar::TextDiff::from_lines(text, &new)
            .unified_diff()
            .context_radius(3)
            .header(&path, &format!("{path} (iochaos setup)"))
            .to_string();
        print!("{diff}");
        return Ok(0);
    }
    write_atomically(&a.config, &new).with_context(|| format!("writing {path}"))?;
    let done = match change {
        Change::Added => "added",
        Change::Updated => "updated",
        Change::Removed => "removed",
        Change::None => "unchanged",
    };
    println!(
        "{path}: runtime {} ({RUNTIME_TYPE}) {done}; restart containerd to load it \
         (systemctl restart containerd)",
        a.runtime
    );
    Ok(0)
}

/// The CRI plugin's runtimes table, by config version: containerd 1.x without `version` reads
/// version 1 (short plugin ids), 1.3–1.7 version 2, 2.x version 3.
fn runtimes_path(doc: &mut DocumentMut) -> Result<&'static [&'static str], String> {
    const V1: &[&str] = &["plugins", "cri", "containerd", "runtimes"];
    const V2: &[&str] = &[
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
    ];
    const V3: &[&str] = &[
        "plugins",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
    ];
    match doc.get("version") {
        // A new (or empty) file: the version containerd 1.6/1.7 write with `config default`.
        None if doc.iter().next().is_none() => {
            doc.insert("version", toml_edit::value(2));
            Ok(V2)
        }
        None => Ok(V1),
        Some(v) => match v.as_integer() {
            Some(1) => Ok(V1),
            Some(2) => Ok(V2),
            Some(3) => Ok(V3),
            _ => Err(format!(
                "config version {} is none containerd reads (1, 2 or 3)",
                v.to_string().trim()
            )),
        },
    }
}

/// `text` with the runtime `name` added (or brought up to date, or removed), and what changed.
fn edit(text: &str, name: &str, remove: bool) -> Result<(String, Change), String> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let msg = e.to_string();
        format!(
            "not TOML ({})",
            msg.lines().next().unwrap_or("parse error").trim()
        )
    })?;
    let path = runtimes_path(&mut doc)?;
    let (change, new) = if remove {
        let runtimes = find(doc.as_table_mut(), path)?;
        let Some(runtimes) = runtimes else {
            return Ok((text.to_owned(), Change::None));
        };
        let Some(runtime) = runtimes.get(name) else {
            return Ok((text.to_owned(), Change::None));
        };
        let ty = runtime
            .as_table_like()
            .and_then(|t| t.get("runtime_type"))
            .and_then(Item::as_str);
        if ty != Some(RUNTIME_TYPE) {
            return Err(format!(
                "runtime {name} is not iochaos's (runtime_type {}): not removed",
                ty.unwrap_or("unset")
            ));
        }
        runtimes.remove(name);
        (Change::Removed, doc.to_string())
    } else {
        let runtimes = make(doc.as_table_mut(), path)?;
        let existed = runtimes.contains_key(name);
        if !existed {
            let mut t = Table::new();
            // At the end of the file, under a comment saying where it comes from.
            t.set_position(Some(isize::MAX));
            t.decor_mut().set_prefix(format!(
                "\n# Added by `iochaos setup containerd`: the RuntimeClass handler {name}.\n"
            ));
            runtimes.insert(name, Item::Table(t));
        }
        let runtime = runtimes
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| format!("{}.{name} is not a table", dotted(path)))?;
        let mut changed = !existed;
        if runtime.get("runtime_type").and_then(Item::as_str) != Some(RUNTIME_TYPE) {
            runtime.insert("runtime_type", toml_edit::value(RUNTIME_TYPE));
            changed = true;
        }
        for key in ["pod_annotations", "container_annotations"] {
            changed |= include(runtime, key, ANNOTATIONS)?;
        }
        let change = match (existed, changed) {
            (false, _) => Change::Added,
            (true, true) => Change::Updated,
            (true, false) => Change::None,
        };
        (change, doc.to_string())
    };
    if change == Change::None {
        return Ok((text.to_owned(), change));
    }
    Ok((new, change))
}

/// `plugins."io.containerd.grpc.v1.cri".containerd.runtimes` as containerd spells it.
fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if k.contains('.') {
                format!("{k:?}")
            } else {
                (*k).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The table at `path`, if every step of it exists.
fn find<'a>(
    mut table: &'a mut dyn TableLike,
    path: &[&str],
) -> Result<Option<&'a mut dyn TableLike>, String> {
    for (i, key) in path.iter().enumerate() {
        match table.get_mut(key) {
            None => return Ok(None),
            Some(item) => {
                table = item
                    .as_table_like_mut()
                    .ok_or_else(|| format!("{} is not a table", dotted(&path[..=i])))?;
            }
        }
    }
    Ok(Some(table))
}

/// The table at `path`, made where missing (as implicit tables: no empty `[a.b]` headers).
fn make<'a>(
    mut table: &'a mut dyn TableLike,
    path: &[&str],
) -> Result<&'a mut dyn TableLike, String> {
    for (i, key) in path.iter().enumerate() {
        if !table.contains_key(key) {
            let mut t = Table::new();
            t.set_implicit(true);
            table.insert(key, Item::Table(t));
        }
        table = table
            .get_mut(key)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| format!("{} is not a table", dotted(&path[..=i])))?;
    }
    Ok(table)
}

/// Make the string array `key` of `table` hold `value` (the user's other entries kept).
fn include(table: &mut dyn TableLike, key: &str, value: &str) -> Result<bool, String> {
    match table.get_mut(key) {
        None => {
            let mut a = Array::new();
            a.push(value);
            table.insert(key, toml_edit::value(a));
            Ok(true)
        }
        Some(item) => {
            let a = item
                .as_array_mut()
                .ok_or_else(|| format!("{key} is not an array of strings"))?;
            if a.iter().any(|v| v.as_str() == Some(value)) {
                return Ok(false);
            }
            a.push(value);
            Ok(true)
        }
    }
}

/// What would keep the runtime from working although the file names it (warnings, stderr).
fn warn_if_unusable(config: &str) {
    if let Ok(doc) = config.parse::<DocumentMut>()
        && let Some(disabled) = doc.get("disabled_plugins").and_then(Item::as_array)
        && disabled.iter().filter_map(Value::as_str).any(|p| {
            p == "cri" || p == "io.containerd.grpc.v1.cri" || p == "io.containerd.cri.v1.runtime"
        })
    {
        eprintln!(
            "iochaos: warning: the CRI plugin is in disabled_plugins: Kubernetes will not see \
             the runtime (ctr --runtime {RUNTIME_TYPE} needs no configuration)"
        );
    }
    if !on_path(SHIM) {
        eprintln!(
            "iochaos: warning: {SHIM} is not on PATH: containerd finds the runtime's shim there \
             (/usr/bin or /usr/local/bin)"
        );
    }
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(binary).is_file()))
}

/// Replace `path` with `text`: a temporary file in the same directory (the file's mode kept,
/// 0644 for a new one), synced, renamed over it, the directory synced.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut tmp = tempfile::Builder::new()
        .prefix(".iochaos-setup-")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    \
                          [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \
                          \"/usr/lib/cni\"\n";

    fn parsed(text: &str) -> DocumentMut {
        text.parse().expect("valid TOML")
    }

    /// Runtime `name` of a version 2 file.
    fn runtime<'a>(doc: &'a DocumentMut, name: &str) -> &'a Item {
        &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][name]
    }

    #[test]
    fn adds_the_runtime_keeping_the_rest_and_a_second_run_changes_nothing() {
        let (new, change) = edit(DEBIAN, "iochaos", false).expect("edit");
        assert_eq!(change, Change::Added);
        assert!(new.starts_with(DEBIAN.trim_end()), "kept as it was:\n{new}");
        let doc = parsed(&new);
        let r = runtime(&doc, "iochaos");
        assert_eq!(r["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(r["pod_annotations"][0].as_str(), Some(ANNOTATIONS));
        assert_eq!(r["container_annotations"][0].as_str(), Some(ANNOTATIONS));
        let (again, change) = edit(&new, "iochaos", false).expect("edit");
        assert_eq!(change, Change::None);
        assert_eq!(again, new);
        let (back, change) = edit(&new, "iochaos", true).expect("remove");
        assert_eq!(change, Change::Removed);
        assert_eq!(back, DEBIAN, "removing gives the original bytes back");
        assert_eq!(
            edit(&back, "iochaos", true).expect("remove").1,
            Change::None
        );
    }

    #[test]
    fn an_empty_file_becomes_version_2_and_each_version_gets_its_plugin_id() {
        let (new, _) = edit("", "iochaos", false).expect("edit");
        assert!(new.starts_with("version = 2\n"), "{new}");
        assert!(
            new.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.iochaos]")
        );
        let (v1, _) = edit("root = \"/var/lib/containerd\"\n", "iochaos", false).expect("edit");
        assert!(
            v1.contains("[plugins.cri.containerd.runtimes.iochaos]"),
            "{v1}"
        );
        let (v3, _) = edit("version = 3\n", "iochaos", false).expect("edit");
        assert!(
            v3.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.iochaos]"),
            "{v3}"
        );
        let err = edit("version = 9\n", "iochaos", false).expect_err("refused");
        assert!(err.contains("config version 9"), "{err}");
    }

    #[test]
    fn a_stale_entry_is_brought_up_to_date_keeping_the_users_annotations() {
        let old = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.iochaos]\n  \
                   runtime_type = \"io.containerd.runc.v2\"\n  pod_annotations = [\"x.y/*\"]\n";
        let (new, change) = edit(old, "iochaos", false).expect("edit");
        assert_eq!(change, Change::Updated);
        let doc = parsed(&new);
        let r = runtime(&doc, "iochaos");
        assert_eq!(r["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        let pods: Vec<_> = r["pod_annotations"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(pods, ["x.y/*", ANNOTATIONS]);
    }

    #[test]
    fn bad_input_is_one_line_and_someone_elses_runtime_is_not_removed() {
        let err = edit("version = [\n", "iochaos", false).expect_err("not TOML");
        assert!(
            err.starts_with("not TOML (") && !err.contains('\n'),
            "{err}"
        );
        let err = edit("version = 2\nplugins = 3\n", "iochaos", false).expect_err("not a table");
        assert_eq!(err, "plugins is not a table");
        let other = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.iochaos]\n  \
                     runtime_type = \"io.containerd.runc.v2\"\n";
        let err = edit(other, "iochaos", true).expect_err("not ours");
        assert!(err.contains("not iochaos's"), "{err}");
    }
}
