//! The command-line shorthand for rules (design.md "Contract").
//!
//! Each action flag starts a new rule; selector flags refine the most recent rule:
//!
//! ```text
//! --errno EIO | EIO,ENOSPC | EIO:3,ENOSPC:1     --latency 200ms | 200ms~50ms
//! --attr perm=0000,uid=0,mtime=2024-01-01T00:00:00Z,kind=dir
//! --corrupt zeros|random|bitflip[:MAX_BYTES]     --short BYTES | 0.5 | 50%     --full
//! --crash (cut the power before the request; needs --crash-mode)
//! selectors: --ops read,write  --glob '*.db'  --percent P  --pid 1,2  --comm NAME,NAME
//!            --uid 0,1000  --after N  --every N  --times N
//! global:    --seed N  --low-latency  --crash-mode
//! ```
//!
//! `--flag=value` works as well as `--flag value`. Each rule is turned into the JSON a spec would
//! hold and goes through the same parsing and validation as a JSON spec.

use serde_json::{Map, Value};

use super::spec::RuleSpec;
use super::values::RuleError;
use crate::{Error, Result};

/// Rules and the global seed given as command-line flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shorthand {
    /// The rules, in the order their action flags appeared.
    pub rules: Vec<RuleSpec>,
    /// `--seed N`.
    pub seed: Option<u64>,
    /// `--low-latency` (the spec's `low_latency`).
    pub low_latency: bool,
    /// `--crash-mode` (the spec's `crash_mode`).
    pub crash_mode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Action(&'static str),
    Selector(&'static str),
    Seed,
    LowLatency,
    CrashMode,
}

const ACTIONS: &[&str] = &[
    "errno", "latency", "attr", "corrupt", "short", "full", "crash",
];
const SELECTORS: &[&str] = &[
    "ops", "glob", "percent", "pid", "comm", "uid", "after", "every", "times",
];

fn flag(name: &str) -> Option<Flag> {
    if name == "seed" {
        return Some(Flag::Seed);
    }
    if name == "low-latency" {
        return Some(Flag::LowLatency);
    }
    if name == "crash-mode" {
        return Some(Flag::CrashMode);
    }
    if let Some(a) = ACTIONS.iter().find(|a| **a == name) {
        return Some(Flag::Action(a));
    }
    SELECTORS
        .iter()
        .find(|s| **s == name)
        .map(|s| Flag::Selector(s))
}

/// True if `arg` (`--errno` or `--errno=EIO`) is a flag [`parse_shorthand`] understands.
pub fn is_shorthand_flag(arg: &str) -> bool {
    arg.strip_prefix("--")
        .map(|a| a.split_once('=').map_or(a, |(n, _)| n))
        .and_then(flag)
        .is_some()
}

/// True if the shorthand flag `arg` (`--errno`, not `--errno=EIO`) is followed by a value
/// (`--full`, `--crash`, `--low-latency` and `--crash-mode` are not).
pub fn shorthand_takes_value(arg: &str) -> bool {
    arg.strip_prefix("--")
        .and_then(flag)
        .is_none_or(Flag::takes_value)
}

impl Flag {
    fn takes_value(self) -> bool {
        !matches!(
            self,
            Flag::Action("full" | "crash") | Flag::LowLatency | Flag::CrashMode
        )
    }
}

struct Pending {
    /// How the rule was started, for messages: `--errno EIO`.
    label: String,
    fields: Map<String, Value>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Shorthand(msg.into())
}

/// Parse rule flags. See the module documentation for the syntax.
pub fn parse_shorthand(args: &[String]) -> Result<Shorthand> {
    let mut out = Shorthand::default();
    let mut rules: Vec<Pending> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(body) = arg.strip_prefix("--") else {
            return Err(err(format!(
                "unexpected argument {arg:?}: rules are written as flags such as --errno EIO"
            )));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(kind) = flag(name) else {
            return Err(err(format!("unknown rule flag --{name}")));
        };
        let takes_value = kind.takes_value();
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| err(format!("--{name} needs a value")))?,
            }
        } else {
            if inline.is_some() {
                return Err(err(format!("--{name} takes no value")));
            }
            String::new()
        };
        match kind {
            Flag::LowLatency => out.low_latency = true,
            Flag::CrashMode => out.crash_mode = true,
            Flag::Seed => {
                let seed = value
                    .parse::<u64>()
                    .map_err(|_| err(format!("--seed: {value:?} is not a whole number")))?;
                if out.seed.replace(seed).is_some() {
                    return Err(err("--seed given twice"));
                }
            }
            Flag::Action(field) => {
                let json = action_value(field, &value)?;
                let label = if takes_value {
                    format!("--{field} {value}")
                } else {
                    format!("--{field}")
                };
                let mut fields = Map::new();
                fields.insert(field.to_owned(), json);
                rules.push(Pending { label, fields });
            }
            Flag::Selector(field) => {
                let Some(rule) = rules.last_mut() else {
                    return Err(err(format!(
                        "--{field} must follow an action flag (--errno, --latency, --attr, \
                         --corrupt, --short, --full, --crash)"
                    )));
                };
                let json = selector_value(field, &value)?;
                if rule.fields.insert(field.to_owned(), json).is_some() {
                    return Err(err(format!(
                        "{}: --{field} given twice for the same rule",
                        rule.label
                    )));
                }
            }
        }
    }
    for rule in rules {
        let spec = serde_path_to_error::deserialize::<_, RuleSpec>(Value::Object(rule.fields))
            .map_err(|e| err(describe(&rule.label, &RuleError::from_path(e))))?;
        spec.check().map_err(|e| err(describe(&rule.label, &e)))?;
        out.rules.push(spec);
    }
    Ok(out)
}

/// `--errno EIOO: unknown errno "EIOO"`, `--errno EIO --percent: must be between 0 and 100`.
fn describe(label: &str, e: &RuleError) -> String {
    let top = e
        .field
        .as_deref()
        .map(|f| f.split(['.', '[']).next().unwrap_or(f));
    match top {
        Some(f) if ACTIONS.contains(&f) => format!("{label}: {}", e.msg),
        Some(f) => format!("{label} --{f}: {}", e.msg),
        None => format!("{label}: {}", e.msg),
    }
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn number(flag: &str, text: &str) -> Result<Value> {
    text.parse::<u64>()
        .map(Value::from)
        .map_err(|_| err(format!("--{flag}: {text:?} is not a whole number")))
}

fn action_value(field: &str, value: &str) -> Result<Value> {
    Ok(match field {
        "errno" => {
            let items: Vec<&str> = split_list(value).collect();
            if items.iter().any(|i| i.contains(':')) {
                let mut map = Map::new();
                for item in items {
                    let (name, weight) = match item.split_once(':') {
                        Some((n, w)) => (
                            n,
                            w.parse::<u32>().map_err(|_| {
                                err(format!(
                                    "--errno: weight {w:?} of {n} is not a whole number"
                                ))
                            })?,
                        ),
                        None => (item, 1),
                    };
                    if map.insert(name.to_owned(), weight.into()).is_some() {
                        return Err(err(format!("--errno: {name} given twice")));
                    }
                }
                Value::Object(map)
            } else if items.len() == 1 {
                Value::from(items[0])
            } else {
                Value::from(items)
            }
        }
        "latency" => match value.split_once('~') {
            Some((delay, jitter)) => serde_json::json!({ "delay": delay, "jitter": jitter }),
            None => Value::from(value),
        },
        "attr" => {
            let mut map = Map::new();
            for item in split_list(value) {
                let Some((key, val)) = item.split_once('=') else {
                    return Err(err(format!(
                        "--attr: {item:?} is not FIELD=VALUE (e.g. perm=0000,uid=0)"
                    )));
                };
                let json = match (key, val.parse::<i64>()) {
                    // Octal text: keep it a string so "0644" is read as octal.
                    ("perm", _) | (_, Err(_)) => Value::from(val),
                    (_, Ok(n)) => Value::from(n),
                };
                if map.insert(key.to_owned(), json).is_some() {
                    return Err(err(format!("--attr: {key} given twice")));
                }
            }
            Value::Object(map)
        }
        "corrupt" => match value.split_once(':') {
            Some((mode, max)) => {
                serde_json::json!({ "mode": mode, "max_bytes": number("corrupt", max)? })
            }
            None => Value::from(value),
        },
        "short" => {
            if let Some(pct) = value.strip_suffix('%') {
                let p: f64 = pct
                    .parse()
                    .map_err(|_| err(format!("--short: {value:?} is not a percentage")))?;
                serde_json::json!({ "fraction": p / 100.0 })
            } else if value.contains('.') {
                let f: f64 = value
                    .parse()
                    .map_err(|_| err(format!("--short: {value:?} is not a fraction")))?;
                serde_json::json!({ "fraction": f })
            } else {
                serde_json::json!({ "bytes": number("short", value)? })
            }
        }
        "full" => Value::Bool(true),
        "crash" => Value::Object(Map::new()),
        _ => return Err(err(format!("unknown rule flag --{field}"))),
    })
}

fn selector_value(field: &str, value: &str) -> Result<Value> {
    Ok(match field {
        "ops" => Value::from(split_list(value).collect::<Vec<_>>()),
        "glob" => Value::from(value),
        "percent" => {
            let text = value.strip_suffix('%').unwrap_or(value);
            let p: f64 = text
                .parse()
                .map_err(|_| err(format!("--percent: {value:?} is not a number")))?;
            serde_json::Number::from_f64(p)
                .map(Value::Number)
                .ok_or_else(|| err(format!("--percent: {value:?} is not a number")))?
        }
        "pid" | "uid" => {
            let items = split_list(value)
                .map(|v| {
                    v.parse::<u32>()
                        .map(Value::from)
                        .map_err(|_| err(format!("--{field}: {v:?} is not a whole number")))
                })
                .collect::<Result<Vec<_>>>()?;
            one_or_many(items)
        }
        "comm" => one_or_many(split_list(value).map(Value::from).collect()),
        "after" | "every" | "times" => number(field, value)?,
        _ => return Err(err(format!("unknown rule flag --{field}"))),
    })
}

fn one_or_many(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        items.remove(0)
    } else {
        Value::Array(items)
    }
}
