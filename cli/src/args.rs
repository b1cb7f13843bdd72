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
    iochaos demo
        Show faults appearing and disappearing under a small workload (no container runtime).
    iochaos help

RULES (shorthand; each action flag starts a rule, selector flags refine the rule before them):
    actions:    --errno EIO[,ENOSPC|EIO:3,ENOSPC:1]   --latency 200ms[~50ms]
                --attr perm=0000,uid=0,...  --corrupt zeros|random|bitflip[:N]
                --short BYTES  --full
    selectors:  --ops read,write  --glob '*.db'  --percent P  --pid PID  --comm NAME
                --uid UID  --after N  --every N  --times N
    global:     --seed N   --spec FILE|-   (the JSON spec of docs/rules.md instead of flags)
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

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    Help,
    Run(RunArgs),
    Demo,
    /// Internal: the demo's workload process.
    DemoWorkload(PathBuf),
}

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
        Some(other @ ("inject" | "recover" | "status" | "update")) => Err(usage(format!(
            "`iochaos {other}` is not available in this build yet; see `iochaos help`"
        ))),
        _ => Err(usage(format!(
            "unknown subcommand {:?} (try `iochaos help`)",
            sub.to_string_lossy()
        ))),
    }
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
        let err = |a: &[&str]| match parse(args(a)) {
            Err(Usage(m)) => m,
            Ok(c) => panic!("{a:?} parsed as {c:?}"),
        };
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
    fn spec_file_source() {
        let Ok(Command::Run(run)) = parse(args(&["run", "--path", "/d", "--spec", "-", "--", "x"]))
        else {
            panic!("did not parse")
        };
        assert!(matches!(run.spec, SpecSource::File(p) if p == PathBuf::from("-")));
    }
}
