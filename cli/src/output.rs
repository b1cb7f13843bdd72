//! What the commands print: the JSON of `--json` (schema: docs/schema/iochaos.schema.json) and
//! human output, aligned in columns when stdout is a terminal and plain otherwise.

use std::io::IsTerminal;

use anyhow::Context;
use engine::api::{RecoverReport, Status};
use serde_json::Value;

/// An injection as `--json` prints it: the engine's `Status` plus `"server"`, `"running"` when
/// its server answered, `"not answering"` when the status comes from the journal.
pub fn injection_json(status: &Status, answering: bool) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(status).context("encoding the status")?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "server".into(),
            Value::String(
                if answering {
                    "running"
                } else {
                    "not answering"
                }
                .into(),
            ),
        );
    }
    Ok(v)
}

/// A recovered injection as `recover --json` prints it.
pub fn recovered_json(id: &str, report: &RecoverReport) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(report).context("encoding the recovery")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), Value::String(id.to_owned()));
    }
    Ok(v)
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding JSON")?
    );
    Ok(())
}

/// Is stdout a terminal (a person reading, not a script)?
pub fn is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// `rows` (the first one the header) with each column padded to its widest cell, two spaces
/// apart, the last column unpadded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["ID".into(), "PATH".into(), "SERVER".into()],
            vec!["a".into(), "/data/ü".into(), "12".into()],
            vec!["bbbb".into(), "/d".into(), "3".into()],
        ];
        assert_eq!(
            table(&rows),
            "ID    PATH     SERVER\na     /data/ü  12\nbbbb  /d       3\n"
        );
    }
}
