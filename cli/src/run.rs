//! `iochaos run`: a command in a private mount namespace with ChaosFS over a directory.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc;

use anyhow::{Context, bail};
use chaosfs::rules::{RuleSet, Spec, parse_shorthand};
// nix only for the signal mask and sigwait, which rustix does not offer.
use nix::sys::signal::{SigSet, Signal};

use crate::args::{RunArgs, SpecSource, Usage};

/// Read and validate the rules of `source` (everything a user can get wrong is found here,
/// before anything is mounted).
pub fn load_spec(source: &SpecSource) -> Result<Spec, Usage> {
    let spec = match source {
        SpecSource::File(path) => {
            Spec::from_json(&read_input(path, "spec")?).map_err(|e| Usage(e.to_string()))?
        }
        SpecSource::ChaosMesh(path, target) => {
            let json = chaos_mesh_spec(path, target.as_deref())?;
            Spec::from_json(&json.to_string())
                .map_err(|e| Usage(format!("{}: converted to {json}: {e}", path.display())))?
        }
        SpecSource::Flags(flags) => {
            let parsed = parse_shorthand(flags).map_err(|e| Usage(e.to_string()))?;
            let spec = Spec {
                seed: parsed.seed,
                low_latency: parsed.low_latency,
                crash_mode: parsed.crash_mode,
                rules: parsed.rules,
                ..Spec::default()
            };
            spec.validate().map_err(|e| Usage(e.to_string()))?;
            spec
        }
    };
    Ok(spec)
}

/// The JSON spec of the Chaos Mesh IOChaos file `path` (`-`: stdin), not yet validated.
pub fn chaos_mesh_spec(path: &Path, target: Option<&str>) -> Result<serde_json::Value, Usage> {
    let text = read_input(path, "Chaos Mesh IOChaos")?;
    crate::chaos_mesh::convert(&text, target).map_err(|e| {
        Usage(format!(
            "invalid Chaos Mesh IOChaos {}: {e}",
            path.display()
        ))
    })
}

/// `iochaos convert --from chaos-mesh FILE`: the JSON spec, checked as `--spec` checks it.
pub fn convert(path: &Path) -> anyhow::Result<()> {
    let json = chaos_mesh_spec(path, None)?;
    Spec::from_json(&json.to_string())
        .map_err(|e| Usage(format!("{}: converted to {json}: {e}", path.display())))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json).context("encoding the spec")?
    );
    Ok(())
}

/// The text of FILE, or stdin for `-`.
fn read_input(path: &Path, what: &str) -> Result<String, Usage> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| Usage(format!("cannot read {what} {}: {e}", path.display())))?;
    Ok(text)
}

/// What a command is about to do, for [`check_privileges`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Mount ChaosFS (`run`).
    Mount,
    /// Mount ChaosFS or take it away, and trace the target's processes (`inject`, `recover`).
    MountAndTrace,
}

/// Check that this process may do what the command needs, with a reason a user can act on.
/// Commands that only read the journal (`status`) check nothing.
pub fn check_privileges(needs: Needs) -> anyhow::Result<()> {
    use caps::{CapSet, Capability};
    let mut wanted = vec![(Capability::CAP_SYS_ADMIN, "it mounts a FUSE filesystem")];
    if needs == Needs::MountAndTrace {
        wanted.push((
            Capability::CAP_SYS_PTRACE,
            "it reads and traces the target processes",
        ));
    }
    for (cap, why) in wanted {
        if !caps::has_cap(None, CapSet::Effective, cap).context("reading our capabilities")? {
            bail!("iochaos needs {cap} ({why}): run it as root with its full capability set");
        }
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse) or expose the device");
    }
    Ok(())
}

/// Canonical path of an existing directory, or a usage error naming it.
pub fn existing_dir(path: &Path) -> Result<PathBuf, Usage> {
    let canonical = path
        .canonicalize()
        .map_err(|e| Usage(format!("--path {}: {e}", path.display())))?;
    if !canonical.is_dir() {
        return Err(Usage(format!("--path {}: not a directory", path.display())));
    }
    Ok(canonical)
}

/// Move this (still single-threaded) process into a new mount namespace whose mounts do not
/// propagate back to the host, so everything mounted here vanishes with the namespace.
pub fn enter_private_mount_namespace() -> anyhow::Result<()> {
    crate::sys::unshare_mount_namespace().context("unshare(CLONE_NEWNS)")?;
    use rustix::mount::MountPropagationFlags as Propagation;
    rustix::mount::mount_change("/", Propagation::REC | Propagation::PRIVATE)
        .context("making / private in the new mount namespace")?;
    Ok(())
}

/// Run `args.command` under ChaosFS; returns the exit status to exit with.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    // Validate everything before changing anything.
    let spec = load_spec(&args.spec)?;
    check_privileges(Needs::Mount)?;
    let dir = existing_dir(&args.path)?;
    let duration = spec.duration_value().map_err(|e| Usage(e.to_string()))?;
    // Held until the command is done and ChaosFS is gone (spec `low_latency`).
    let _low_latency = spec
        .low_latency
        .then(engine::adapters::fdswap::CpuLatency::hold);
    let rules = RuleSet::new(spec).context("compiling rules")?;

    // SIGINT/SIGQUIT from the terminal reach the whole process group, so the command gets them
    // itself; SIGTERM/SIGHUP sent to us are forwarded. Blocked before any thread exists so every
    // thread inherits the mask; the child unblocks them before exec.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    enter_private_mount_namespace()?;
    // No fd is swapped here (the command starts on the mount), so its record locks and flocks
    // can be real locks on the backing files, seen by processes outside the run.
    let config = chaosfs::server::Config {
        forward_locks: true,
        ..chaosfs::server::Config::default()
    };
    let mounted = chaosfs::mount_over(&dir, rules, config)
        .with_context(|| format!("mounting ChaosFS over {}", dir.display()))?;

    // Crash mode: a `crash` rule kills every process of the run (the rollback follows).
    let ns = engine::target::NsId::of(std::process::id(), "mnt").context("our mount namespace")?;
    mounted.server().on_power_cut(move || {
        if let Err(e) = engine::inject::kill_now(ns) {
            tracing::warn!("crash rule: killing the command failed: {e}");
        }
    });

    let mut command = std::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    crate::sys::unblock_in_child(&mut command, signals);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let name = args.command[0].to_string_lossy().into_owned();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            mounted.unmount().context("unmounting ChaosFS")?;
            eprintln!("iochaos: cannot run {name}: {e}");
            return Ok(code);
        }
    };
    // Every pid the kernel hands out fits a pid_t (at most PID_MAX_LIMIT, 2^22).
    let child_pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let status = std::thread::scope(|scope| -> anyhow::Result<ExitStatus> {
        let server = mounted.server();
        if let Some(duration) = duration {
            scope.spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(duration) {
                    tracing::info!("duration over: removing all faults");
                    server.update_rules(RuleSet::empty());
                    server.cancel_delays();
                }
            });
        }
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(sig) = signals.wait() {
                    let forward = match sig {
                        Signal::SIGTERM => rustix::process::Signal::TERM,
                        Signal::SIGHUP => rustix::process::Signal::HUP,
                        _ => continue,
                    };
                    if let Some(child_pid) = child_pid {
                        let _ = rustix::process::kill_process(child_pid, forward);
                    }
                }
            })
            .context("starting the signal thread")?;
        let status = child.wait().context("waiting for the command");
        let _ = done_tx.send(());
        status
    })?;

    if let Some(files) = mounted.server().power_cut_report() {
        eprintln!("iochaos: a crash rule cut the power");
        crate::crash::print_files(&files_report(&dir, files), true);
    }
    mounted.unmount().context("unmounting ChaosFS")?;
    Ok(exit_code(status))
}

/// The shell's convention: the exit code, or 128 + the signal that killed the command.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// A `crash` rule's report as `iochaos crash` prints it, paths under `dir`.
fn files_report(dir: &Path, files: Vec<chaosfs::CrashedFile>) -> Vec<engine::api::CrashedFile> {
    files
        .into_iter()
        .map(|f| engine::adapters::chaosfs::crashed_file(f, dir))
        .collect()
}
