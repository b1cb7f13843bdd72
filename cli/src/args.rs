//! Command-line parsing (clap derive).
//!
//! Rule shorthand flags are order-sensitive (`--errno EIO --percent 50 --latency 1s --ops fsync`
//! makes two rules: an action flag starts a rule, selector flags refine the rule before them).
//! clap declares them (so they appear in `--help`, completions and man pages) and checks each
//! value with the shorthand parser itself ([`rule_value`]); then the flags are put back in the
//! order given (clap's argument indices) and handed, whole, to `chaosfs::rules::parse_shorthand`,
//! the one parser of their meaning. Every mistake is found here and is a usage error (exit 2).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// A usage error found after parsing (a bad `--spec` file): printed as one line, exit status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `0.1.0 (commit 5f8fb87c1d2e)`: the version and the git commit built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IOCHAOS_GIT_COMMIT"),
    ")"
);

/// containerd's default namespace and state directory.
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_CONTAINERD_STATE: &str = "/run/containerd";

const EXIT_CODES: &str = "\
Exit status: 0 success, 1 failure (one line on stderr saying why), 2 usage error (a mistake on \
the command line or in a --spec file; nothing was changed). `run` exits with its command's status.

See `iochaos help SUBCOMMAND`, `man iochaos-SUBCOMMAND`, docs/cli.md.";

macro_rules! rules_help {
    () => {
        "\
Rules (shorthand): each action flag (--errno, --latency, --attr, --corrupt, --short, --full,
--crash) starts a rule; the selector flags after it (--ops, --glob, --percent, --comm, --uid, --after,
--every, --times) refine that rule. `--errno EIO --ops write --latency 200ms --ops fsync` is two
rules. --spec FILE|- gives the JSON spec of docs/rules.md instead."
    };
}

macro_rules! run_examples {
    () => {
        "\
Examples:
  # every write under /tmp/data fails with EIO
  iochaos run --path /tmp/data --errno EIO --ops write -- sh -c 'echo hi > /tmp/data/f'
  # half of the fsyncs of *.db files take 200ms
  iochaos run --path /var/lib/app --latency 200ms --ops fsync --glob '*.db' --percent 50 -- ./app
  # the rules from a JSON spec
  iochaos run --path /tmp/data --spec rules.json -- ./app"
    };
}

macro_rules! inject_examples {
    () => {
        "\
Examples:
  # writes of process 4242 under /data fail with EIO for a minute
  iochaos inject --pid 4242 --path /data --errno EIO --ops write --duration 60s
  # a Docker container by name (or id, or unique id prefix); podman://NAME alike
  iochaos inject docker://web --path /data --errno EIO --ops write
  # a containerd container (namespace k8s.io), rules from stdin
  echo '{\"rules\":[{\"ops\":[\"fsync\"],\"latency\":\"200ms\"}]}' |
    iochaos inject web --namespace k8s.io --path /var/lib/db --spec -
  # the status object instead of the id
  iochaos inject --pid 4242 --path /data --errno ENOSPC --json"
    };
}

const RECOVER_EXAMPLES: &str = "\
Examples:
  iochaos recover 0f3c2a9e7b1d
  iochaos recover --pid 4242
  iochaos recover web --namespace k8s.io
  iochaos recover docker://web
  iochaos recover --all --json";

const STATUS_EXAMPLES: &str = "\
Examples:
  iochaos status
  iochaos status 0f3c2a9e7b1d
  iochaos status containerd://k8s.io/web
  iochaos --json status";

macro_rules! update_examples {
    () => {
        "\
Examples:
  iochaos update 0f3c2a9e7b1d --latency 50ms --ops read
  iochaos update 0f3c2a9e7b1d --spec rules.json --json"
    };
}

const CRASH_EXAMPLES: &str = "\
Examples:
  iochaos inject --pid 4242 --path /data --crash-mode
  iochaos crash 0f3c2a9e7b1d
  iochaos crash 0f3c2a9e7b1d --seed 7 --json
  iochaos crash 0f3c2a9e7b1d --torn 1 --reorder --seed 7";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  iochaos completions bash > /usr/share/bash-completion/completions/iochaos
  iochaos completions zsh > /usr/share/zsh/vendor-completions/_iochaos
  iochaos completions fish > /usr/share/fish/vendor_completions.d/iochaos.fish";

const SETUP_EXAMPLES: &str = "\
Examples:
  iochaos setup containerd --dry-run
  iochaos setup containerd && systemctl restart containerd
  iochaos setup containerd --config /etc/containerd/conf.d/iochaos.toml
  iochaos setup containerd --remove";

const MAN_EXAMPLES: &str = "\
Examples:
  iochaos man | man -l -
  iochaos man inject | man -l -
  iochaos man --dir /usr/share/man/man1";

/// The `iochaos` command line.
#[derive(Debug, Parser)]
#[command(
    name = "iochaos",
    version = VERSION,
    about = "Inject filesystem faults into running processes and containers",
    propagate_version = true,
    subcommand_required = true,
    after_help = EXIT_CODES,
)]
pub struct Cli {
    /// Print JSON (inject, status, recover, update); the schema is docs/schema/
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Start a command with faults from its first syscall (private mount namespace, no runtime)
    #[command(
        long_about = "Start CMD in a private mount namespace with ChaosFS over DIR: faults from \
                      its first syscall; CMD's exit status is returned and the mount disappears \
                      with it.",
        after_help = run_examples!(),
        after_long_help = concat!(rules_help!(), "\n\n", run_examples!())
    )]
    Run(RunCli),
    /// Inject faults into a running process or container
    #[command(
        long_about = "Inject faults into a running process (every process of its mount \
                      namespace) or a container (docker://NAME, podman://NAME, containerd://[NS/]ID, or a \
                      containerd ID with --namespace), at PATH as it sees it. Prints the \
                      injection id once faults are live. --pid always names the target here (the \
                      --pid rule selector needs --spec). A process in the host's mount namespace \
                      (that of PID 1) is refused unless --host-namespace is given; PID 1 and \
                      iochaos's ancestors are always refused.",
        after_help = inject_examples!(),
        after_long_help = concat!(rules_help!(), "\n\n", inject_examples!())
    )]
    Inject(InjectCli),
    /// Remove injections: detach, move every fd back, stop the server, clear the journal
    #[command(after_help = RECOVER_EXAMPLES)]
    Recover(RecoverCli),
    /// Show live injections: target, path, pids, server, rules with counters, fds
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusCli),
    /// Replace the rules of a live injection
    #[command(
        after_help = update_examples!(),
        after_long_help = concat!(rules_help!(), "\n\n", update_examples!())
    )]
    Update(UpdateCli),
    /// Crash mode: cut the power (SIGKILL the target, lose what was never fsynced), then recover
    #[command(after_help = CRASH_EXAMPLES)]
    Crash(CrashCli),
    /// Print the JSON spec (docs/rules.md) that a Chaos Mesh IOChaos file stands for
    #[command(
        after_help = "Example:\n  iochaos convert --from chaos-mesh iochaos.yaml > spec.json\n\n\
                            Every field iochaos cannot honour is an error naming it (exit 2); \
                            docs/chaos-mesh.md maps each one."
    )]
    Convert {
        /// The format of FILE
        #[arg(long, value_enum)]
        from: ConvertFrom,
        /// The file, or - for stdin
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
    },
    /// Show faults appearing and disappearing under a small workload (no container runtime)
    #[command(after_help = "Example:\n  iochaos demo")]
    Demo,
    /// Configure a container runtime to start containers with iochaos (containerd's CRI plugin)
    #[command(subcommand, after_help = SETUP_EXAMPLES)]
    Setup(SetupCli),
    /// Print a shell completion script (bash, zsh, fish) to stdout
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) to stdout, or write all of them to a directory
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// The subcommand whose page to print (default: the iochaos page)
        subcommand: Option<String>,
        /// Write iochaos.1 and one iochaos-SUBCOMMAND.1 per subcommand into DIR
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        dir: Option<PathBuf>,
    },
    /// Internal: the injection server (a JSON request; see `inject::ServeRequest`)
    #[command(name = "__serve", hide = true)]
    Serve { request: String },
    /// Internal: the demo's workload process
    #[command(name = "__demo-workload", hide = true)]
    DemoWorkload { dir: PathBuf },
}

/// `iochaos setup RUNTIME`.
#[derive(Debug, Subcommand)]
pub enum SetupCli {
    /// Add the iochaos runtime (RuntimeClass handler) to containerd's config.toml, idempotently
    #[command(
        long_about = "Add the iochaos runtime to containerd's CRI plugin in its config.toml \
                      (what packaging/containerd/iochaos-runtime.toml says): runtime_type \
                      io.containerd.iochaos.v2 and the dev.iochaos.* pod and container \
                      annotations. The file's comments and layout are kept; a second run \
                      changes nothing; the file is replaced atomically. Containerd reads it at \
                      start only: restart it afterwards. `ctr run --runtime \
                      io.containerd.iochaos.v2` needs none of this.",
        after_help = SETUP_EXAMPLES
    )]
    Containerd {
        /// containerd's configuration file (created when missing)
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/containerd/config.toml"
        )]
        config: PathBuf,
        /// The runtime's name: the RuntimeClass handler
        #[arg(long, value_name = "NAME", default_value = "iochaos")]
        runtime_name: String,
        /// Print the change as a unified diff; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Take the runtime out again (only if it is iochaos's)
        #[arg(long)]
        remove: bool,
    },
}

/// What `convert` reads.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConvertFrom {
    /// A Chaos Mesh IOChaos document (chaos-mesh.org/v1alpha1)
    ChaosMesh,
}

/// `--namespace` and `--containerd-state`, for a CONTAINER.
#[derive(Debug, Args)]
pub struct ContainerOpts {
    /// containerd namespace of a plain CONTAINER id (or containerd://ID)
    #[arg(long, value_name = "NS", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// containerd's state directory (where a task directory names its shim)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINERD_STATE)]
    pub containerd_state: PathBuf,
}

const ACTIONS: &str = "Rule actions (each starts a rule)";
const SELECTORS: &str = "Rule selectors (refine the rule before them)";
const RULE_OPTIONS: &str = "Rule options";

/// The rule shorthand flags and `--spec`. Their values are read back in order from the
/// [`ArgMatches`] ([`ordered_rule_flags`]); the fields only document them.
#[derive(Debug, Args)]
pub struct RuleFlags {
    /// Fail with this errno: EIO, EIO,ENOSPC (either), EIO:3,ENOSPC:1 (weighted)
    #[arg(long, value_name = "ERRNO", action = ArgAction::Append, help_heading = ACTIONS,
          value_parser = rule_value("errno"))]
    errno: Vec<String>,
    /// Delay the request: 200ms, or 200ms~50ms (with jitter)
    #[arg(long, value_name = "DELAY", action = ArgAction::Append, help_heading = ACTIONS,
          value_parser = rule_value("latency"))]
    latency: Vec<String>,
    /// Override attributes: perm=0000,uid=0,size=0,mtime=2024-01-01T00:00:00Z,kind=dir
    #[arg(long, value_name = "FIELD=VALUE,...", action = ArgAction::Append, help_heading = ACTIONS,
          value_parser = rule_value("attr"))]
    attr: Vec<String>,
    /// Corrupt data read or written: zeros, random or bitflip[:MAX_BYTES]
    #[arg(long, value_name = "MODE", action = ArgAction::Append, help_heading = ACTIONS,
          value_parser = rule_value("corrupt"))]
    corrupt: Vec<String>,
    /// Short reads/writes: BYTES, a fraction (0.5) or a percentage (50%)
    #[arg(long, value_name = "LEN", action = ArgAction::Append, help_heading = ACTIONS,
          value_parser = rule_value("short"))]
    short: Vec<String>,
    /// Writes fail with ENOSPC as if the disk were full
    #[arg(long, action = ArgAction::Count, help_heading = ACTIONS)]
    full: u8,
    /// Cut the power before the selected request (needs --crash-mode; docs/crash.md)
    #[arg(long, action = ArgAction::Count, help_heading = ACTIONS)]
    crash: u8,
    /// Only these ops: read,write,fsync,open,getattr,... (docs/rules.md)
    #[arg(long, value_name = "OP,...", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("ops"))]
    ops: Vec<String>,
    /// Only paths matching this glob ('*.db')
    #[arg(long, value_name = "GLOB", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("glob"))]
    glob: Vec<String>,
    /// Only this share of the selected requests (0-100)
    #[arg(long, value_name = "P", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("percent"))]
    percent: Vec<String>,
    /// Only requests of processes with these command names
    #[arg(long, value_name = "NAME,...", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("comm"))]
    comm: Vec<String>,
    /// Only requests of these uids
    #[arg(long, value_name = "UID,...", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("uid"))]
    uid: Vec<String>,
    /// Only after the first N selected requests
    #[arg(long, value_name = "N", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("after"))]
    after: Vec<String>,
    /// Only every Nth selected request
    #[arg(long, value_name = "N", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("every"))]
    every: Vec<String>,
    /// At most N times
    #[arg(long, value_name = "N", action = ArgAction::Append, help_heading = SELECTORS,
          value_parser = rule_value("times"))]
    times: Vec<String>,
    /// Seed of the random choices (percent, errno choices, corruption)
    #[arg(long, value_name = "N", action = ArgAction::Append, help_heading = RULE_OPTIONS,
          value_parser = rule_value("seed"))]
    seed: Vec<String>,
    /// Idle CPUs poll while faults are live (lower latency, more CPU)
    #[arg(long, action = ArgAction::Count, help_heading = RULE_OPTIONS)]
    low_latency: u8,
    /// Keep an undo log so `iochaos crash` loses exactly what was not fsynced (docs/crash.md)
    #[arg(long, action = ArgAction::Count, help_heading = RULE_OPTIONS)]
    crash_mode: u8,
    /// The rules as a JSON spec (docs/rules.md) from FILE, or stdin with -
    #[arg(long, value_name = "FILE|-", help_heading = RULE_OPTIONS)]
    spec: Option<PathBuf>,
    /// The rules from a Chaos Mesh IOChaos YAML file (docs/chaos-mesh.md), or stdin with -
    #[arg(long, value_name = "FILE|-", help_heading = RULE_OPTIONS, conflicts_with = "spec")]
    chaos_mesh: Option<PathBuf>,
}

/// The `--pid` rule selector, where `--pid` is not the target (run, update).
#[derive(Debug, Args)]
pub struct PidSelector {
    /// Only requests of these processes (as ChaosFS sees them)
    #[arg(long = "pid", id = "pid_selector", value_name = "PID,...", action = ArgAction::Append,
          help_heading = SELECTORS, value_parser = rule_value("pid"))]
    pid_selector: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunCli {
    /// The directory to put ChaosFS over
    #[arg(long, value_name = "DIR")]
    path: PathBuf,
    #[command(flatten)]
    rules: RuleFlags,
    #[command(flatten)]
    pid: PidSelector,
    /// The command to run, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(
    group = clap::ArgGroup::new("target").required(true).args(["pid", "container"]),
)]
pub struct InjectCli {
    /// The target process (with every process of its mount namespace)
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with_all = ["namespace", "containerd_state"])]
    pid: Option<u32>,
    /// The target container: docker://NAME_OR_ID, podman://NAME_OR_ID, cri://ID, k8s://NAMESPACE/POD[/CONTAINER], containerd://[NS/]ID, or a containerd ID
    #[arg(value_name = "CONTAINER")]
    container: Option<String>,
    #[command(flatten)]
    container_opts: ContainerOpts,
    /// The directory, absolute, as the target sees it (or the spec's "path")
    #[arg(long, value_name = "PATH", value_parser = absolute_path)]
    path: Option<PathBuf>,
    #[command(flatten)]
    rules: RuleFlags,
    /// Remove the faults after D (60s, 5m; the spec's "duration")
    #[arg(long, value_name = "D", value_parser = duration)]
    duration: Option<String>,
    /// Inject even where the path lies in a shared mount (the mount propagates to its peers)
    #[arg(long)]
    allow_shared: bool,
    /// Allow a target in the host's mount namespace
    #[arg(long)]
    host_namespace: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["name", "pid", "all"]))]
pub struct RecoverCli {
    /// An injection id, or a container (docker://, podman://, cri://, k8s://, containerd://[NS/]ID, or a containerd ID)
    #[arg(value_name = "ID|CONTAINER")]
    name: Option<String>,
    /// Every injection whose target (or its mount namespace) holds PID
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with_all = ["namespace", "containerd_state"])]
    pid: Option<u32>,
    /// Every injection
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    container_opts: ContainerOpts,
}

#[derive(Debug, Args)]
pub struct StatusCli {
    /// An injection id, or a container as for inject (default: every injection)
    #[arg(value_name = "ID|CONTAINER")]
    id: Option<String>,
    #[command(flatten)]
    container_opts: ContainerOpts,
}

#[derive(Debug, Args)]
pub struct CrashCli {
    /// An injection id (injected with --crash-mode)
    #[arg(value_name = "ID")]
    id: String,
    /// Seed of the crash's random choices (recorded in the report)
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The last N unsynced writes of each file survive up to a 512 B boundary the seed picks
    #[arg(long, value_name = "N", default_value_t = 0)]
    torn: u32,
    /// Any seeded subset of the unsynced writes survives, not only a prefix
    #[arg(long)]
    reorder: bool,
}

#[derive(Debug, Args)]
pub struct UpdateCli {
    /// An injection id, or a container (docker://, podman://, cri://, k8s://, containerd://[NS/]ID, or a containerd ID)
    #[arg(value_name = "ID|CONTAINER")]
    id: String,
    #[command(flatten)]
    rules: RuleFlags,
    #[command(flatten)]
    pid: PidSelector,
    #[command(flatten)]
    container_opts: ContainerOpts,
}

/// The arg ids of the rule shorthand flags and the flag each stands for.
const RULE_ARGS: &[(&str, &str)] = &[
    ("errno", "errno"),
    ("latency", "latency"),
    ("attr", "attr"),
    ("corrupt", "corrupt"),
    ("short", "short"),
    ("full", "full"),
    ("crash", "crash"),
    ("ops", "ops"),
    ("glob", "glob"),
    ("percent", "percent"),
    ("comm", "comm"),
    ("uid", "uid"),
    ("after", "after"),
    ("every", "every"),
    ("times", "times"),
    ("seed", "seed"),
    ("low_latency", "low-latency"),
    ("crash_mode", "crash-mode"),
    ("pid_selector", "pid"),
];

/// A value parser for rule flag `--FLAG`: the shorthand parser itself checks the value alone
/// (a selector after a neutral action), so `--errno EBOGUS` is refused by clap, naming the flag.
fn rule_value(flag: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value: &str| {
        let mut args = Vec::with_capacity(4);
        // The label the shorthand parser starts its messages with, which clap's own context
        // ("invalid value 'X' for '--flag'") replaces.
        let label = if is_action(flag) {
            format!("--{flag} {value}: ")
        } else {
            if flag != "seed" {
                args.extend(["--latency".to_owned(), "0ms".to_owned()]);
            }
            format!("--latency 0ms --{flag}: ")
        };
        args.extend([format!("--{flag}"), value.to_owned()]);
        chaosfs::rules::parse_shorthand(&args)
            .map(|_| value.to_owned())
            .map_err(|e| {
                let msg = shorthand_message(&e);
                msg.strip_prefix(&label)
                    .or_else(|| msg.strip_prefix(&format!("--{flag}: ")))
                    .unwrap_or(&msg)
                    .to_owned()
            })
    }
}

fn is_action(flag: &str) -> bool {
    matches!(
        flag,
        "errno" | "latency" | "attr" | "corrupt" | "short" | "full" | "crash"
    )
}

/// chaosfs's message without its own prefix (`rule shorthand: `), which clap's context replaces.
fn shorthand_message(e: &chaosfs::Error) -> String {
    match e {
        chaosfs::Error::Shorthand(m) => m.clone(),
        other => other.to_string(),
    }
}

fn absolute_path(value: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err("must be absolute (the path as seen inside the target)".into())
    }
}

fn duration(value: &str) -> Result<String, String> {
    chaosfs::rules::Spec::parse_duration(value)
        .map(|_| value.to_owned())
        .map_err(|e| e.to_string())
}

/// The rule flags of `m` in the order they were given, as `parse_shorthand` takes them.
fn ordered_rule_flags(m: &ArgMatches) -> Vec<String> {
    let mut found: Vec<(usize, String, Option<String>)> = Vec::new();
    for id in m.ids() {
        let Some((_, flag)) = RULE_ARGS.iter().find(|(i, _)| *i == id.as_str()) else {
            continue;
        };
        if m.value_source(id.as_str()) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let indices = m.indices_of(id.as_str()).into_iter().flatten();
        match m.try_get_many::<String>(id.as_str()) {
            Ok(Some(values)) => {
                for (i, v) in indices.zip(values) {
                    found.push((i, format!("--{flag}"), Some(v.clone())));
                }
            }
            // Count flags (--full, --crash, --low-latency, --crash-mode) hold no strings.
            _ => found.extend(indices.map(|i| (i, format!("--{flag}"), None))),
        }
    }
    found.sort_by_key(|(i, _, _)| *i);
    found
        .into_iter()
        .flat_map(|(_, flag, value)| std::iter::once(flag).chain(value))
        .collect()
}

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
    /// Shorthand flags, in order (already checked by `parse_shorthand`).
    Flags(Vec<String>),
    /// `--chaos-mesh FILE`: an IOChaos document, and the name of the container named on the
    /// command line (which its `containerNames` must list).
    ChaosMesh(PathBuf, Option<String>),
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
    Run(RunArgs),
    Demo,
    /// Internal: the demo's workload process.
    DemoWorkload(PathBuf),
    Inject(InjectArgs),
    Recover {
        what: RecoverWhat,
        json: bool,
    },
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
        json: bool,
        namespace: String,
        state_dir: PathBuf,
    },
    /// `iochaos crash ID [--torn N] [--reorder] [--seed N]`.
    Crash {
        id: String,
        opts: engine::api::CrashOptions,
        json: bool,
    },
    /// `iochaos convert --from chaos-mesh FILE`.
    Convert(PathBuf),
    /// `iochaos setup containerd ...`.
    SetupContainerd(crate::setup::ContainerdSetup),
    Completions(clap_complete::Shell),
    Man {
        subcommand: Option<String>,
        dir: Option<PathBuf>,
    },
    /// Internal: the injection server (a JSON request; see `inject::ServeRequest`).
    Serve(String),
}

/// Parse `args` (with the program name first). Help and version requests come back as the
/// clap error that prints them (exit 0).
pub fn parse(args: Vec<OsString>) -> Result<Command, clap::Error> {
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    let sub_matches = matches.subcommand().map(|(_, m)| m);
    let rules_of = |name: &str, rules: &RuleFlags, cmd: &mut clap::Command| {
        let flags = sub_matches.map(ordered_rule_flags).unwrap_or_default();
        let spec = match &rules.chaos_mesh {
            Some(file) => Some(SpecSource::ChaosMesh(file.clone(), None)),
            None => rules.spec.clone().map(SpecSource::File),
        };
        spec_source(name, spec, flags, cmd)
    };
    let no_json = |name: &str, cmd: &mut clap::Command| -> Result<(), clap::Error> {
        if cli.json {
            return Err(sub_error(
                cmd,
                name,
                ErrorKind::ArgumentConflict,
                format!("{name} prints no state: --json does not apply"),
            ));
        }
        Ok(())
    };
    Ok(match cli.command {
        Sub::Run(r) => {
            no_json("run", &mut cmd)?;
            Command::Run(RunArgs {
                spec: rules_of("run", &r.rules, &mut cmd)?,
                path: r.path,
                command: r.command,
            })
        }
        Sub::Inject(i) => Command::Inject(InjectArgs {
            spec: match rules_of("inject", &i.rules, &mut cmd)? {
                SpecSource::ChaosMesh(file, _) => {
                    SpecSource::ChaosMesh(file, i.container.as_deref().map(container_name))
                }
                other => other,
            },
            target: match (i.pid, i.container) {
                (Some(pid), _) => TargetArg::Pid(pid),
                (None, Some(id)) => TargetArg::Container {
                    id,
                    namespace: i.container_opts.namespace,
                    state_dir: i.container_opts.containerd_state,
                },
                // The "target" group is required: clap has said so already.
                (None, None) => {
                    return Err(sub_error(
                        &mut cmd,
                        "inject",
                        ErrorKind::MissingRequiredArgument,
                        "inject needs a target: --pid PID or CONTAINER".into(),
                    ));
                }
            },
            path: i.path,
            duration: i.duration,
            json: cli.json,
            allow_shared: i.allow_shared,
            host_namespace: i.host_namespace,
        }),
        Sub::Recover(r) => Command::Recover {
            what: match (r.all, r.pid, r.name) {
                (true, _, _) => RecoverWhat::All,
                (false, Some(pid), _) => RecoverWhat::Pid(pid),
                (false, None, Some(name)) => RecoverWhat::IdOrContainer {
                    name,
                    namespace: r.container_opts.namespace,
                    state_dir: r.container_opts.containerd_state,
                },
                (false, None, None) => {
                    return Err(sub_error(
                        &mut cmd,
                        "recover",
                        ErrorKind::MissingRequiredArgument,
                        "recover needs ID, --pid PID, CONTAINER or --all".into(),
                    ));
                }
            },
            json: cli.json,
        },
        Sub::Status(s) => Command::Status {
            id: s.id,
            json: cli.json,
            namespace: s.container_opts.namespace,
            state_dir: s.container_opts.containerd_state,
        },
        Sub::Update(u) => Command::Update {
            spec: rules_of("update", &u.rules, &mut cmd)?,
            id: u.id,
            json: cli.json,
            namespace: u.container_opts.namespace,
            state_dir: u.container_opts.containerd_state,
        },
        Sub::Crash(c) => Command::Crash {
            id: c.id,
            opts: engine::api::CrashOptions {
                seed: c.seed,
                torn: c.torn,
                reorder: c.reorder,
            },
            json: cli.json,
        },
        Sub::Demo => {
            no_json("demo", &mut cmd)?;
            Command::Demo
        }
        Sub::Convert {
            from: ConvertFrom::ChaosMesh,
            file,
        } => Command::Convert(file),
        Sub::Setup(SetupCli::Containerd {
            config,
            runtime_name,
            dry_run,
            remove,
        }) => {
            no_json("setup", &mut cmd)?;
            Command::SetupContainerd(crate::setup::ContainerdSetup {
                config,
                runtime: runtime_name,
                dry_run,
                remove,
            })
        }
        Sub::Completions { shell } => Command::Completions(shell),
        Sub::Man { subcommand, dir } => {
            if let Some(name) = &subcommand
                && !visible_subcommands().any(|s| s == *name)
            {
                return Err(sub_error(
                    &mut cmd,
                    "man",
                    ErrorKind::InvalidValue,
                    format!(
                        "no subcommand {name:?} (one of: {})",
                        visible_subcommands().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            Command::Man { subcommand, dir }
        }
        Sub::Serve { request } => Command::Serve(request),
        Sub::DemoWorkload { dir } => Command::DemoWorkload(dir),
    })
}

/// The names of the subcommands a user sees (not the hidden internal ones, not `help`).
pub fn visible_subcommands() -> impl Iterator<Item = String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect::<Vec<_>>()
        .into_iter()
}

/// A usage error of subcommand `name`, with its usage line.
fn sub_error(cmd: &mut clap::Command, name: &str, kind: ErrorKind, msg: String) -> clap::Error {
    cmd.build();
    match cmd.find_subcommand_mut(name) {
        Some(sub) => sub.error(kind, msg),
        None => cmd.error(kind, msg),
    }
}

/// The rules: `--spec FILE` or the shorthand flags (checked whole here: a selector before any
/// action, a flag given twice for one rule, a selector that does not fit its action).
fn spec_source(
    name: &str,
    spec: Option<SpecSource>,
    flags: Vec<String>,
    cmd: &mut clap::Command,
) -> Result<SpecSource, clap::Error> {
    match spec {
        Some(source) if flags.is_empty() => Ok(source),
        Some(source) => Err(sub_error(
            cmd,
            name,
            ErrorKind::ArgumentConflict,
            format!(
                "{} cannot be combined with rule flags ({})",
                if matches!(source, SpecSource::File(_)) {
                    "--spec"
                } else {
                    "--chaos-mesh"
                },
                flags.join(" ")
            ),
        )),
        None if flags.is_empty() => Err(sub_error(
            cmd,
            name,
            ErrorKind::MissingRequiredArgument,
            format!("{name} needs at least one rule (e.g. --errno EIO) or --spec FILE"),
        )),
        None => {
            let source = SpecSource::Flags(flags);
            crate::run::load_spec(&source)
                .map_err(|u| sub_error(cmd, name, ErrorKind::ValueValidation, u.0))?;
            Ok(source)
        }
    }
}

/// The name a Chaos Mesh `containerNames` entry would give CONTAINER: what follows its scheme
/// and containerd namespace (`docker://web` → `web`, `containerd://k8s.io/ID` → `ID`).
fn container_name(container: &str) -> String {
    let name = container
        .split_once("://")
        .map_or(container, |(_, rest)| rest);
    name.rsplit('/').next().unwrap_or(name).to_owned()
}

/// A clap error as one line: `unexpected argument '--erno' found (tip: a similar argument
/// exists: '--errno'); usage: iochaos inject ...`.
pub fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut message = String::new();
    let mut tips = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(m) = line.strip_prefix("error: ") {
            message = m.to_owned();
        } else if line.starts_with("tip: ") {
            tips.push(line.to_owned());
        } else if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_owned());
        } else if line.starts_with("For more information") {
        } else if message.is_empty() {
            message = line.to_owned();
        } else {
            tips.push(line.to_owned());
        }
    }
    if !tips.is_empty() {
        message = format!("{message} ({})", tips.join("; "));
    }
    match usage {
        Some(u) => format!("{message}; usage: {u}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(a: &[&str]) -> Command {
        let mut args = vec![OsString::from("iochaos")];
        args.extend(a.iter().map(OsString::from));
        parse(args).unwrap_or_else(|e| panic!("{a:?}: {}", one_line(&e)))
    }

    /// The one-line usage message for `a`, which must not parse.
    fn err(a: &[&str]) -> String {
        let mut args = vec![OsString::from("iochaos")];
        args.extend(a.iter().map(OsString::from));
        match parse(args) {
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{a:?}: {e}");
                one_line(&e)
            }
            Ok(c) => panic!("{a:?} parsed as {c:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_keeps_rule_flags_in_order() {
        let Command::Run(run) = parse_ok(&[
            "run",
            "--errno",
            "EIO",
            "--path",
            "/d",
            "--ops=write",
            "--full",
            "--pid",
            "7",
            "--latency",
            "1ms",
            "--ops",
            "fsync",
            "--",
            "ls",
            "--path",
        ]) else {
            panic!("not run")
        };
        assert_eq!(run.path, PathBuf::from("/d"));
        assert_eq!(run.command, ["ls", "--path"].map(OsString::from));
        match run.spec {
            SpecSource::Flags(f) => assert_eq!(
                f,
                [
                    "--errno",
                    "EIO",
                    "--ops",
                    "write",
                    "--full",
                    "--pid",
                    "7",
                    "--latency",
                    "1ms",
                    "--ops",
                    "fsync"
                ]
            ),
            SpecSource::File(_) | SpecSource::ChaosMesh(..) => panic!("expected flags"),
        }
    }

    #[test]
    fn usage_errors() {
        assert!(err(&["run", "--errno", "EIO", "--", "true"]).contains("--path"));
        assert!(err(&["run", "--path", "/d", "--errno", "EIO"]).contains("CMD"));
        assert!(err(&["run", "--path", "/d", "--", "true"]).contains("rule"));
        assert!(
            err(&[
                "run", "--path", "/d", "--spec", "f", "--errno", "EIO", "--", "x"
            ])
            .contains("cannot be combined")
        );
        assert!(err(&["run", "--path", "/d", "--errno", "EBOGUS", "--", "x"]).contains("EBOGUS"));
        assert!(err(&["run", "--path", "/d", "--percent", "5", "--", "x"]).contains("action"));
        assert!(err(&["inject", "--pid", "1", "--errno", "EBOGUS"]).contains("EBOGUS"));
        assert!(err(&["inject", "--pid", "1", "--path", "rel", "--full"]).contains("absolute"));
        assert!(err(&["inject", "--pid", "x", "--errno", "EIO"]).contains("--pid"));
        assert!(err(&["inject", "--pid", "1", "c", "--errno", "EIO"]).contains("cannot be used"));
        assert!(err(&["inject", "--path", "/d", "--errno", "EIO"]).contains("required"));
        assert!(err(&["inject", "--pid", "1", "--duration", "soon", "--full"]).contains("soon"));
        assert!(err(&["inject", "--pid", "1", "--namespace", "x", "--full"]).contains("--pid"));
        assert!(err(&["inject", "--pid", "1", "--erno", "EIO"]).contains("'--errno'"));
        assert!(err(&["injct"]).contains("'inject'"));
        assert!(err(&["recover"]).contains("required"));
        assert!(err(&["recover", "--all", "x"]).contains("cannot be used"));
        assert!(err(&["status", "a", "b"]).contains("unexpected"));
        assert!(err(&["update", "--spec", "f"]).contains("required"));
        assert!(err(&["--json", "run", "--path", "/d", "--full", "--", "x"]).contains("--json"));
        assert!(err(&["man", "nosuch"]).contains("nosuch"));
        assert!(err(&[]).contains("Usage") || err(&[]).contains("usage"));
    }

    #[test]
    fn global_flags_go_anywhere() {
        for a in [&["--json", "status"][..], &["status", "--json"]] {
            assert!(matches!(parse_ok(a), Command::Status { json: true, .. }));
        }
        assert!(matches!(
            parse_ok(&["--json", "recover", "--all"]),
            Command::Recover {
                what: RecoverWhat::All,
                json: true
            }
        ));
    }

    #[test]
    fn inject_targets() {
        let Command::Inject(a) = parse_ok(&[
            "inject",
            "web",
            "--namespace",
            "k8s.io",
            "--path",
            "/d",
            "--spec",
            "-",
        ]) else {
            panic!("not inject")
        };
        assert_eq!(
            a.target,
            TargetArg::Container {
                id: "web".into(),
                namespace: "k8s.io".into(),
                state_dir: DEFAULT_CONTAINERD_STATE.into()
            }
        );
        assert!(matches!(a.spec, SpecSource::File(p) if p == std::path::Path::new("-")));
        let Command::Inject(a) = parse_ok(&[
            "inject",
            "--pid",
            "42",
            "--path",
            "/vol",
            "--errno",
            "EIO",
            "--ops=write",
            "--duration",
            "5s",
        ]) else {
            panic!("not inject")
        };
        assert_eq!(a.target, TargetArg::Pid(42));
        assert_eq!(a.duration.as_deref(), Some("5s"));
    }
}
