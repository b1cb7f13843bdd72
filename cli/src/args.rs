//! Command-line parsing.
//!
//! Rule shorthand flags are order-sensitive (`--errno EIO --percent 50 --latency 1s --ops fsync`
//! makes two rules), which a declarative parser cannot express, so the command line is split
//! here: the flags of the subcommand itself are taken out, the rest goes to
//! `chaosfs::rules::parse_shorthand` in the order given.

use std::ffi::OsString;
use std::path::PathBuf;

/// A usage error: printed as one line, exit status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> Usage {
    Usage(msg.into())
}

pub const HELP: &str = "\
iochaos — inject filesystem faults into running processes and containers

USAGE:
    iochaos run --path DIR RULE... -- CMD [ARGS...]
        Start CMD in a private mount namespace with ChaosFS over DIR: faults from its
        first syscall, CMD's exit status is returned, the mount disappears with it.
    iochaos inject (--pid PID | CONTAINER [--namespace NS]) --path PATH RULE... [--duration D]
                   [--json] [--allow-shared] [--host-namespace] [--containerd-state DIR]
        Inject faults into a running process (every process of its mount namespace) or a
        containerd container, at PATH as it sees it. Prints the injection id once faults are
        live. `--pid` always names the target here (the rule selector needs --spec).
        A process in the host's mount namespace (that of PID 1) is refused unless
        --host-namespace is given; PID 1 and iochaos's ancestors are always refused.
    iochaos recover (ID | --pid PID | CONTAINER [--namespace NS] | --all)
        Remove injections: detach, move every fd back, stop the server, clear the journal.
    iochaos status [ID | CONTAINER [--namespace NS]] [--json]
        Live injections: target, path, pids, server, rules with counters, swapped/skipped fds.
    iochaos update (ID | CONTAINER [--namespace NS]) (--spec FILE|- | RULE...)
        Replace the rules of a live injection.
    A CONTAINER run by containerd-shim-iochaos-v2 is reached through its shim (the task
    directory's `address` under --containerd-state DIR, default /run/containerd).
    iochaos demo
        Show faults appearing and disappearing under a small workload (no container runtime).
    iochaos help

RULES (shorthand; each action flag starts a rule, selector flags refine the rule before them):
    actions:    --errno EIO[,ENOSPC|EIO:3,ENOSPC:1]   --latency 200ms[~50ms]
                --attr perm=0000,uid=0,...  --corrupt zeros|random|bitflip[:N]
                --short BYTES  --full
    selectors:  --ops read,write  --glob '*.db'  --percent P  --pid PID  --comm NAME
                --uid UID  --after N  --every N  --times N
    global:     --seed N   --low-latency (idle CPUs poll while faults are live)
                --spec FILE|-   (the JSON spec of docs/rules.md instead of flags)
";

/// `iochaos run` arguments.
#[derive(Debug)]
pub struct RunArgs {
    pub path: PathBuf,
    pub spec: SpecSource,
    pub command: Vec<OsString>,
}

/// Where the rules come from.
#[derive(Debug)]
pub enum SpecSource {
    /// `--spec FILE` or `--spec -`.
    File(PathBuf),
    /// Shorthand flags, in order.
    Flags(Vec<String>),
}

/// Which process or container to inject into (or recover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetArg {
    Pid(u32),
    Container {
        id: String,
        namespace: String,
        /// containerd's state directory (`--containerd-state`, default `/run/containerd`).
        state_dir: PathBuf,
    },
}

/// `iochaos inject` arguments.
#[derive(Debug)]
pub struct InjectArgs {
    pub target: TargetArg,
    /// From `--path`, or the spec's `path`.
    pub path: Option<PathBuf>,
    pub spec: SpecSource,
    pub duration: Option<String>,
    pub json: bool,
    pub allow_shared: bool,
    pub host_namespace: bool,
}

/// What `iochaos recover` recovers.
#[derive(Debug, PartialEq, Eq)]
pub enum RecoverWhat {
    /// An injection id, or a container name (whichever the journal knows).
    IdOrContainer {
        name: String,
        namespace: String,
        /// containerd's state directory, where a container's task dir names its shim.
        state_dir: PathBuf,
    },
    Pid(u32),
    All,
}

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    Help,
    Run(RunArgs),
    Demo,
    /// Internal: the demo's workload process.
    DemoWorkload(PathBuf),
    Inject(InjectArgs),
    Recover(RecoverWhat),
    /// `id`: an injection id, or a container (through its iochaos shim, or the journal).
    Status {
        id: Option<String>,
        json: bool,
        namespace: String,
        state_dir: PathBuf,
    },
    Update {
        id: String,
        spec: SpecSource,
        namespace: String,
        state_dir: PathBuf,
    },
    /// Internal: the injection server (a JSON request; see `inject::ServeRequest`).
    Serve(String),
}

/// containerd's default namespace and state directory.
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_CONTAINERD_STATE: &str = "/run/containerd";

/// Parse `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Command, Usage> {
    let mut it = args.into_iter();
    let Some(sub) = it.next() else {
        return Err(usage("missing subcommand (try `iochaos help`)"));
    };
    match sub.to_str() {
        Some("help" | "--help" | "-h") => Ok(Command::Help),
        Some("run") => parse_run(it.collect()).map(Command::Run),
        Some("demo") => match it.next() {
            None => Ok(Command::Demo),
            Some(extra) => Err(usage(format!(
                "demo takes no arguments, got {}",
                extra.to_string_lossy()
            ))),
        },
        Some("__demo-workload") => match (it.next(), it.next()) {
            (Some(dir), None) => Ok(Command::DemoWorkload(dir.into())),
            _ => Err(usage("__demo-workload takes one directory")),
        },
        Some("inject") => parse_inject(strings(it)?).map(Command::Inject),
        Some("recover") => parse_recover(strings(it)?).map(Command::Recover),
        Some("status") => parse_status(strings(it)?),
        Some("update") => parse_update(strings(it)?),
        Some("__serve") => match (it.next().map(|s| s.into_string()), it.next()) {
            (Some(Ok(req)), None) => Ok(Command::Serve(req)),
            _ => Err(usage("__serve takes one JSON request")),
        },
        _ => Err(usage(format!(
            "unknown subcommand {:?} (try `iochaos help`)",
            sub.to_string_lossy()
        ))),
    }
}

fn strings(it: impl Iterator<Item = OsString>) -> Result<Vec<String>, Usage> {
    it.map(|a| {
        a.into_string().map_err(|a| {
            usage(format!(
                "argument {:?} is not valid UTF-8",
                a.to_string_lossy()
            ))
        })
    })
    .collect()
}

/// Own flags that take a value, and flags that do not.
struct Flags<'a> {
    valued: &'a [&'a str],
    switches: &'a [&'a str],
}

/// Split `args` into own flags (name → value), rule shorthand flags (in order), positionals.
#[allow(clippy::type_complexity)]
fn split(
    args: Vec<String>,
    own: &Flags<'_>,
) -> Result<(Vec<(String, Option<String>)>, Vec<String>, Vec<String>), Usage> {
    let mut mine = Vec::new();
    let mut rules = Vec::new();
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if own.valued.contains(&name.as_str()) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| usage(format!("{name} needs a value")))?,
            };
            if mine.iter().any(|(n, _)| *n == name) {
                return Err(usage(format!("{name} given twice")));
            }
            mine.push((name, Some(v)));
        } else if own.switches.contains(&name.as_str()) {
            mine.push((name, None));
        } else if chaosfs::rules::is_shorthand_flag(&arg) {
            rules.push(arg);
            if inline.is_none() && chaosfs::rules::shorthand_takes_value(&name) {
                rules.push(
                    it.next()
                        .ok_or_else(|| usage(format!("{name} needs a value")))?,
                );
            }
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(usage(format!("unknown flag {arg}")));
        } else {
            positional.push(arg);
        }
    }
    Ok((mine, rules, positional))
}

fn get(mine: &[(String, Option<String>)], name: &str) -> Option<String> {
    mine.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

fn has(mine: &[(String, Option<String>)], name: &str) -> bool {
    mine.iter().any(|(n, _)| n == name)
}

fn spec_source(spec: Option<String>, rules: Vec<String>, cmd: &str) -> Result<SpecSource, Usage> {
    match spec {
        Some(file) if rules.is_empty() => Ok(SpecSource::File(PathBuf::from(file))),
        Some(_) => Err(usage(format!(
            "--spec cannot be combined with rule flags ({})",
            rules.join(" ")
        ))),
        None if rules.is_empty() => Err(usage(format!(
            "{cmd} needs at least one rule (e.g. --errno EIO) or --spec FILE"
        ))),
        None => Ok(SpecSource::Flags(rules)),
    }
}

fn parse_pid(v: &str) -> Result<u32, Usage> {
    v.parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| usage(format!("--pid {v:?} is not a process id")))
}

fn parse_inject(args: Vec<String>) -> Result<InjectArgs, Usage> {
    let own = Flags {
        valued: &[
            "--pid",
            "--namespace",
            "--containerd-state",
            "--path",
            "--spec",
            "--duration",
        ],
        switches: &["--json", "--allow-shared", "--host-namespace"],
    };
    let (mine, rules, positional) = split(args, &own)?;
    let target = match (get(&mine, "--pid"), positional.as_slice()) {
        (Some(pid), []) => {
            if has(&mine, "--namespace") || has(&mine, "--containerd-state") {
                return Err(usage(
                    "--namespace and --containerd-state go with a CONTAINER, not --pid",
                ));
            }
            TargetArg::Pid(parse_pid(&pid)?)
        }
        (None, [id]) => TargetArg::Container {
            id: id.clone(),
            namespace: get(&mine, "--namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            state_dir: get(&mine, "--containerd-state")
                .unwrap_or_else(|| DEFAULT_CONTAINERD_STATE.into())
                .into(),
        },
        (None, []) => return Err(usage("inject needs a target: --pid PID or CONTAINER")),
        (Some(_), [_, ..]) => {
            return Err(usage("inject takes --pid PID or CONTAINER, not both"));
        }
        (None, [_, extra, ..]) => return Err(usage(format!("unexpected argument {extra:?}"))),
    };
    Ok(InjectArgs {
        target,
        path: get(&mine, "--path").map(PathBuf::from),
        spec: spec_source(get(&mine, "--spec"), rules, "inject")?,
        duration: get(&mine, "--duration"),
        json: has(&mine, "--json"),
        allow_shared: has(&mine, "--allow-shared"),
        host_namespace: has(&mine, "--host-namespace"),
    })
}

/// `--containerd-state`, default `/run/containerd`.
fn containerd_state(mine: &[(String, Option<String>)]) -> PathBuf {
    get(mine, "--containerd-state")
        .unwrap_or_else(|| DEFAULT_CONTAINERD_STATE.into())
        .into()
}

fn parse_recover(args: Vec<String>) -> Result<RecoverWhat, Usage> {
    let own = Flags {
        valued: &["--pid", "--namespace", "--containerd-state"],
        switches: &["--all"],
    };
    let (mine, rules, positional) = split(args, &own)?;
    if let Some(r) = rules.first() {
        return Err(usage(format!("recover takes no rule flags ({r})")));
    }
    let what = match (
        has(&mine, "--all"),
        get(&mine, "--pid"),
        positional.as_slice(),
    ) {
        (true, None, []) => RecoverWhat::All,
        (false, Some(pid), []) => RecoverWhat::Pid(parse_pid(&pid)?),
        (false, None, [name]) => RecoverWhat::IdOrContainer {
            name: name.clone(),
            namespace: get(&mine, "--namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            state_dir: containerd_state(&mine),
        },
        (false, None, []) => return Err(usage("recover needs ID, --pid PID, CONTAINER or --all")),
        _ => {
            return Err(usage(
                "recover takes one of ID, --pid PID, CONTAINER, --all",
            ));
        }
    };
    if (has(&mine, "--namespace") || has(&mine, "--containerd-state"))
        && !matches!(what, RecoverWhat::IdOrContainer { .. })
    {
        return Err(usage(
            "--namespace and --containerd-state go with a CONTAINER",
        ));
    }
    Ok(what)
}

fn parse_status(args: Vec<String>) -> Result<Command, Usage> {
    let own = Flags {
        valued: &["--namespace", "--containerd-state"],
        switches: &["--json"],
    };
    let (mine, rules, positional) = split(args, &own)?;
    if let Some(r) = rules.first() {
        return Err(usage(format!("status takes no rule flags ({r})")));
    }
    match positional.as_slice() {
        [] | [_] => Ok(Command::Status {
            id: positional.first().cloned(),
            json: has(&mine, "--json"),
            namespace: get(&mine, "--namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            state_dir: containerd_state(&mine),
        }),
        [_, extra, ..] => Err(usage(format!("unexpected argument {extra:?}"))),
    }
}

fn parse_update(args: Vec<String>) -> Result<Command, Usage> {
    let own = Flags {
        valued: &["--spec", "--namespace", "--containerd-state"],
        switches: &[],
    };
    let (mine, rules, positional) = split(args, &own)?;
    let id = match positional.as_slice() {
        [id] => id.clone(),
        [] => return Err(usage("update needs an injection ID")),
        [_, extra, ..] => return Err(usage(format!("unexpected argument {extra:?}"))),
    };
    Ok(Command::Update {
        id,
        spec: spec_source(get(&mine, "--spec"), rules, "update")?,
        namespace: get(&mine, "--namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        state_dir: containerd_state(&mine),
    })
}

fn parse_run(args: Vec<OsString>) -> Result<RunArgs, Usage> {
    let mut path = None;
    let mut spec_file = None;
    let mut flags = Vec::new();
    let mut command = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            command = Some(it.by_ref().collect::<Vec<_>>());
            break;
        }
        let Some(text) = arg.to_str() else {
            return Err(usage(format!(
                "argument {:?} is not valid UTF-8",
                arg.to_string_lossy()
            )));
        };
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ => (text.to_owned(), None),
        };
        match name.as_str() {
            "--path" | "--spec" => {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| usage(format!("{name} needs a value")))?,
                };
                let slot = if name == "--path" {
                    &mut path
                } else {
                    &mut spec_file
                };
                if slot.replace(PathBuf::from(value)).is_some() {
                    return Err(usage(format!("{name} given twice")));
                }
            }
            _ => flags.push(text.to_owned()),
        }
    }
    let path = path.ok_or_else(|| usage("run needs --path DIR"))?;
    let command = match command {
        Some(c) if !c.is_empty() => c,
        _ => return Err(usage("run needs a command after `--`")),
    };
    let spec = match spec_file {
        Some(file) if flags.is_empty() => SpecSource::File(file),
        Some(_) => {
            return Err(usage(format!(
                "--spec cannot be combined with rule flags ({})",
                flags.join(" ")
            )));
        }
        None if flags.is_empty() => {
            return Err(usage(
                "run needs at least one rule (e.g. --errno EIO) or --spec FILE",
            ));
        }
        None => SpecSource::Flags(flags),
    };
    Ok(RunArgs {
        path,
        spec,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    /// The usage message for `a`, which must not parse.
    fn err(a: &[&str]) -> String {
        match parse(args(a)) {
            Err(Usage(m)) => m,
            Ok(c) => panic!("{a:?} parsed as {c:?}"),
        }
    }

    #[test]
    fn run_splits_own_flags_rules_and_command() {
        let Ok(Command::Run(run)) = parse(args(&[
            "run",
            "--errno",
            "EIO",
            "--path",
            "/d",
            "--ops=write",
            "--",
            "ls",
            "--path",
        ])) else {
            panic!("did not parse")
        };
        assert_eq!(run.path, PathBuf::from("/d"));
        assert_eq!(run.command, args(&["ls", "--path"]));
        match run.spec {
            SpecSource::Flags(f) => assert_eq!(f, ["--errno", "EIO", "--ops=write"]),
            SpecSource::File(_) => panic!("expected flags"),
        }
    }

    #[test]
    fn run_usage_errors() {
        assert!(err(&["run", "--errno", "EIO", "--", "true"]).contains("--path"));
        assert!(err(&["run", "--path", "/d", "--errno", "EIO"]).contains("command"));
        assert!(err(&["run", "--path", "/d", "--", "true"]).contains("rule"));
        assert!(
            err(&[
                "run", "--path", "/d", "--spec", "f", "--errno", "EIO", "--", "x"
            ])
            .contains("cannot be combined")
        );
        assert!(err(&["run", "--path"]).contains("needs a value"));
        assert!(err(&["frobnicate"]).contains("unknown subcommand"));
        assert!(err(&[]).contains("missing subcommand"));
    }

    #[test]
    fn inject_targets_rules_and_flags() {
        let Ok(Command::Inject(a)) = parse(args(&[
            "inject",
            "--pid",
            "42",
            "--path",
            "/vol",
            "--errno",
            "EIO",
            "--ops=write",
            "--full",
            "--duration",
            "5s",
            "--json",
        ])) else {
            panic!("did not parse")
        };
        assert_eq!(a.target, TargetArg::Pid(42));
        assert_eq!(a.path, Some(PathBuf::from("/vol")));
        assert_eq!(a.duration.as_deref(), Some("5s"));
        assert!(a.json && !a.allow_shared);
        assert!(
            matches!(a.spec, SpecSource::Flags(f) if f == ["--errno", "EIO", "--ops=write", "--full"])
        );
        let Ok(Command::Inject(a)) = parse(args(&[
            "inject",
            "web",
            "--namespace",
            "k8s.io",
            "--path",
            "/d",
            "--spec",
            "-",
        ])) else {
            panic!("did not parse")
        };
        assert_eq!(
            a.target,
            TargetArg::Container {
                id: "web".into(),
                namespace: "k8s.io".into(),
                state_dir: DEFAULT_CONTAINERD_STATE.into()
            }
        );
    }

    #[test]
    fn inject_recover_status_update_usage_errors() {
        assert!(err(&["inject", "--path", "/d", "--errno", "EIO"]).contains("target"));
        assert!(err(&["inject", "--pid", "1", "c", "--errno", "EIO"]).contains("not both"));
        assert!(err(&["inject", "--pid", "x", "--errno", "EIO"]).contains("process id"));
        assert!(err(&["inject", "--pid", "1", "--path", "/d"]).contains("rule"));
        assert!(err(&["inject", "--pid", "1", "--bogus"]).contains("unknown flag"));
        assert!(err(&["recover"]).contains("needs"));
        assert!(err(&["recover", "--all", "x"]).contains("one of"));
        assert!(err(&["status", "a", "b"]).contains("unexpected"));
        assert!(err(&["update", "--spec", "f"]).contains("ID"));
        assert_eq!(
            parse(args(&["recover", "--all"]))
                .ok()
                .map(|c| format!("{c:?}")),
            Some("Recover(All)".into())
        );
    }

    #[test]
    fn spec_file_source() {
        let Ok(Command::Run(run)) = parse(args(&["run", "--path", "/d", "--spec", "-", "--", "x"]))
        else {
            panic!("did not parse")
        };
        assert!(matches!(run.spec, SpecSource::File(p) if p == std::path::Path::new("-")));
    }
}
