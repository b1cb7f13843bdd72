//! `iochaos status` and `iochaos update`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use engine::api::{ChaosClient, FdEntry, Status};
use engine::inject::status_from_entry;
use engine::journal::{Entry, InjectionId, Journal};
use serde_json::Value;

use crate::args::{SpecSource, Usage};
use crate::inject::{journal, spec_json};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One fd the engine could not move, for a line of output: `pid P fd F PATH` and its reason.
pub fn fd_entry(f: &FdEntry) -> (String, Cow<'_, str>) {
    let fd = format!("pid {} fd {} {}", f.pid, f.fd, escape(&f.path));
    (fd, escape(f.reason.as_deref().unwrap_or("?")))
}

pub fn entry(journal: &Journal, id: &str) -> anyhow::Result<Entry> {
    let id = InjectionId::parse(id)?;
    Ok(journal.read(&id)?)
}

/// `text` made safe for one line of human output: a backslash as `\\`, control characters
/// (newline, tab, escape, ...) and the Unicode line and paragraph separators as Rust's
/// `escape_debug` writes them (`\n`, `\t`, `\u{1b}`); everything else as it is. Paths are
/// printed this way so that a name with a newline cannot break status's one line per injection
/// (JSON output escapes itself and gives names raw).
pub fn escape(text: &str) -> Cow<'_, str> {
    let special = |c: char| c == '\\' || c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if special(c) {
            let _ = write!(out, "{}", c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The live status from the server, or the journal's when the server does not answer.
fn status_of(journal: &Journal, e: &Entry) -> (Status, bool) {
    match ChaosClient::connect(&journal.socket_path(&e.id))
        .map(|c| c.with_timeout(TIMEOUT))
        .and_then(|c| c.status())
    {
        Ok(s) => (s, true),
        Err(err) => {
            tracing::debug!(id = %e.id, error = %err, "server not answering");
            (status_from_entry(e), false)
        }
    }
}

/// The iochaos shim of container `name` (`containerd-shim-iochaos-v2`, found through the task
/// directory's `address`), when `name` is not an injection id and such a shim injected into it.
pub fn shim_for(
    name: &str,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<Option<ChaosClient>> {
    if InjectionId::parse(name).is_ok() {
        return Ok(None);
    }
    match engine::api::shim::client(state_dir, namespace, name) {
        Ok(c) => Ok(c),
        Err(engine::Error::UnknownContainer { .. } | engine::Error::ContainerNotRunning { .. }) => {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("container {namespace}/{name}: its shim")),
    }
}

/// The journal entries of injections into containerd container `namespace/name`.
fn container_entries(journal: &Journal, name: &str, namespace: &str) -> anyhow::Result<Vec<Entry>> {
    let v: Vec<Entry> = journal
        .list()
        .context("reading the journal")?
        .into_iter()
        .filter(|e| {
            e.target
                .container
                .as_ref()
                .is_some_and(|c| c.id == name && c.namespace == namespace)
        })
        .collect();
    if v.is_empty() {
        bail!(
            "no injection {name:?}: neither an injection id nor an injected container {namespace}/{name}"
        );
    }
    Ok(v)
}

pub fn status(
    id: Option<String>,
    json: bool,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<i32> {
    let journal = journal()?;
    let shim = match &id {
        Some(name) => shim_for(name, namespace, state_dir)?,
        None => None,
    };
    let all: Vec<(Status, bool)> = match (shim, id) {
        (Some(shim), _) => vec![(shim.status()?, true)],
        (None, Some(id)) if InjectionId::parse(&id).is_err() => {
            container_entries(&journal, &id, namespace)?
                .iter()
                .map(|e| status_of(&journal, e))
                .collect()
        }
        (None, Some(id)) => vec![status_of(&journal, &entry(&journal, &id)?)],
        (None, None) => journal
            .list()
            .context("reading the journal")?
            .iter()
            .map(|e| status_of(&journal, e))
            .collect(),
    };
    if json {
        let out = all
            .iter()
            .map(|(s, answering)| crate::output::injection_json(s, *answering))
            .collect::<anyhow::Result<Vec<_>>>()?;
        crate::output::print_json(&Value::Array(out))?;
        return Ok(0);
    }
    if all.is_empty() {
        println!("no injections");
    } else if crate::output::is_tty() {
        print!("{}", status_table(&all));
    } else {
        for (s, answering) in &all {
            print_status(s, *answering);
        }
    }
    Ok(0)
}

fn target_text(s: &Status) -> String {
    match (&s.target.container, &s.target.namespace) {
        (Some(c), Some(ns)) => format!(
            "container {}/{} (pid {})",
            escape(ns),
            escape(c),
            s.target.pid
        ),
        _ => format!("pid {}", s.target.pid),
    }
}

/// For a terminal: one aligned row per injection, then one per rule, then skipped fds.
fn status_table(all: &[(Status, bool)]) -> String {
    let header = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    let mut injections = vec![header(&[
        "ID", "TARGET", "PATH", "SERVER", "STATE", "PIDS", "SWAPPED", "SKIPPED",
    ])];
    let mut rules = vec![header(&["ID", "RULE", "MATCHED", "INJECTED", "SPEC"])];
    let mut skipped = Vec::new();
    for (s, answering) in all {
        injections.push(vec![
            s.id.clone(),
            target_text(s),
            escape(&s.path).into_owned(),
            s.server_pid.to_string(),
            if *answering {
                "running"
            } else {
                "not answering"
            }
            .to_owned(),
            s.pids.len().to_string(),
            s.swapped.len().to_string(),
            s.skipped.len().to_string(),
        ]);
        for (i, r) in s.rules.iter().enumerate() {
            rules.push(vec![
                s.id.clone(),
                (i + 1).to_string(),
                r.matched.to_string(),
                r.injected.to_string(),
                r.spec.to_string(),
            ]);
        }
        for k in &s.skipped {
            let (fd, reason) = fd_entry(k);
            skipped.push(format!("{}  skipped {fd}: {reason}", s.id));
        }
    }
    let mut out = crate::output::table(&injections);
    out.push('\n');
    out.push_str(&crate::output::table(&rules));
    if all.iter().any(|(_, answering)| !answering) {
        out.push_str("\nnot answering: `iochaos recover` cleans up from the journal\n");
    }
    for line in skipped {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Plain output (a pipe, a file): a header line per injection and indented details.
fn print_status(s: &Status, answering: bool) {
    println!(
        "{}  {}  {}  server {} ({})",
        s.id,
        target_text(s),
        escape(&s.path),
        s.server_pid,
        if answering {
            "running"
        } else {
            "not answering: `iochaos recover` cleans up from the journal"
        }
    );
    println!(
        "  pids: {}",
        s.pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (i, r) in s.rules.iter().enumerate() {
        println!(
            "  rule {}: {}  matched {}  injected {}",
            i + 1,
            r.spec,
            r.matched,
            r.injected
        );
    }
    println!("  swapped: {} fds", s.swapped.len());
    for m in &s.open_modes {
        println!("  opened: pid {}: {}", m.pid, m.mode);
    }
    for k in &s.skipped {
        let (fd, reason) = fd_entry(k);
        println!("  skipped: {fd}: {reason}");
    }
}

pub fn update(
    id: &str,
    spec: &SpecSource,
    json: bool,
    namespace: &str,
    state_dir: &Path,
) -> anyhow::Result<i32> {
    let mut spec = spec_json(spec)?;
    if spec.get("duration").is_some() {
        return Err(Usage(
            "update cannot change the duration of a live injection (remove \"duration\")".into(),
        )
        .into());
    }
    let journal = journal()?;
    let (client, what) = if let Some(shim) = shim_for(id, namespace, state_dir)? {
        (shim, format!("container {namespace}/{id} through its shim"))
    } else {
        let e = if InjectionId::parse(id).is_err() {
            match container_entries(&journal, id, namespace)?.as_slice() {
                [one] => one.clone(),
                _ => bail!("container {namespace}/{id} has several injections: name one by ID"),
            }
        } else {
            entry(&journal, id)?
        };
        let client = ChaosClient::connect(&journal.socket_path(&e.id))
            .with_context(|| format!("injection {}: its server does not answer", e.id))?;
        (client, format!("injection {}", e.id))
    };
    let client = client.with_timeout(TIMEOUT);
    // The new spec keeps the injection's path (status shows it in every spec).
    let path = client
        .status()
        .with_context(|| format!("status of {what}"))?
        .path;
    match spec.get("path").and_then(Value::as_str) {
        Some(p) if p != path => {
            return Err(Usage(format!(
                "update cannot move an injection: the spec's path {p} is not its path {path}"
            ))
            .into());
        }
        _ => {
            if let Some(o) = spec.as_object_mut() {
                o.insert("path".into(), Value::String(path));
            }
        }
    }
    let text = serde_json::to_string(&spec).context("encoding the spec")?;
    let status = client
        .update_rules(&text)
        .with_context(|| format!("updating {what}"))?;
    let id = status.id.as_str();
    if status.skipped.iter().any(|k| {
        k.reason
            .as_deref()
            .is_some_and(|r| r.contains("passthrough"))
    }) {
        eprintln!(
            "iochaos: some files were open in passthrough mode and escape the new rules until \
             reopened (see `iochaos status {id}`)"
        );
    }
    if json {
        crate::output::print_json(&crate::output::injection_json(&status, true)?)?;
    } else {
        println!("{id}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_keeps_lines_whole() {
        assert!(matches!(
            escape("/data/vol ü 日本"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape("/a\nb\tc\r\u{1b}[31m\u{7f}\u{85}\u{2028}\\d\"'"),
            "/a\\nb\\tc\\r\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\\\d\"'"
        );
    }
}
