//! ChaosFS throughput against the native filesystem, in one run.
//!
//! Three directories on the same filesystem: one used natively, one under ChaosFS with a rule
//! that touches no benchmark file (so files are opened in kernel passthrough mode), one under
//! ChaosFS with a rule that touches every op on every file but fires with percent 0 (so every
//! request goes through the daemon and the rule engine). Rounds are interleaved (native,
//! untouched, touched, native, ...) so load from elsewhere hits all three alike; each figure is
//! the median of its `--rounds` rounds. Prints absolute figures and ratios to native, then the
//! ratio of each round to the native round just before it (median, min-max).
//!
//! With `--requests 1`, one more (untimed) round per ChaosFS directory counts the FUSE requests
//! each workload sends, by opcode, from the kernel's `fuse:fuse_request_send` tracepoint
//! (tracefs at /sys/kernel/tracing; FORGETs are not requests and are not counted).
//!
//! The untouched mount also measures how long a change made outside the mount (a chmod of the
//! backing file by another process) takes to be seen through the mount, where the kernel
//! caches the file's attributes: from the moment the other process's `chmod` returned
//! (`CLOCK_MONOTONIC`, which both processes share) to the first `stat` through the mount that
//! shows the new mode. With `--watch 0` the servers do not watch the backing file system for
//! outside changes (the behaviour before the watch: a 1 s cache, no invalidation).
//!
//! With `--uring 1` (the default where the kernel has FUSE over io_uring), two more ChaosFS
//! directories, untouched and rule(0%), are served over per-CPU io_uring queues instead of
//! `/dev/fuse` threads, in the same interleaved rounds; the module parameter
//! `fuse.enable_uring` is turned on for the run if it is off (and said so), then restored.
//! Each ChaosFS column also gets the server's CPU time per 1,000 requests (CPU time of its
//! threads from `/proc/self/task/*/schedstat`, requests from the server's own counter).
//!
//! With `--low-latency 1`, a 0 µs CPU wake-up latency request is held for the whole run (what the
//! spec's `low_latency` does during an injection), native rounds included.
//!
//! Usage: chaosfs-bench [--size-mib N] [--files N] [--rounds N] [--requests 0|1] [--threads N]
//!                      [--low-latency 0|1] [--watch 0|1] [--uring 0|1]
//! (root, /dev/fuse)

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use chaosfs::rules::{RuleSet, Spec};

const BLOCK: usize = 1 << 20;

struct Opts {
    size_mib: usize,
    files: usize,
    rounds: usize,
    requests: bool,
    /// FUSE serving threads (0: the server's default).
    threads: usize,
    /// Hold a 0 us CPU wake-up latency request during the whole run (the spec's
    /// `low_latency`, as an injection would).
    low_latency: bool,
    /// Servers watch the backing file system for outside changes.
    watch: bool,
    /// Also measure ChaosFS served over io_uring.
    uring: bool,
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut opts = Opts {
        size_mib: 256,
        files: 4000,
        rounds: 5,
        requests: false,
        threads: 0,
        low_latency: false,
        watch: true,
        uring: Path::new(URING_PARAM).exists(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse::<usize>()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--size-mib" => opts.size_mib = value.max(1),
            "--files" => opts.files = value.max(1),
            "--rounds" => opts.rounds = value.max(1),
            "--requests" => opts.requests = value != 0,
            "--threads" => opts.threads = value,
            "--low-latency" => opts.low_latency = value != 0,
            "--watch" => opts.watch = value != 0,
            "--uring" => opts.uring = value != 0,
            _ => bail!(
                "unknown flag {flag} (use --size-mib, --files, --rounds, --requests, --threads, \
                 --low-latency, --watch, --uring)"
            ),
        }
    }
    Ok(opts)
}

/// One figure per workload, higher is better.
#[derive(Clone, Copy, Default)]
struct Figures([f64; 7]);

const NAMES: [(&str, &str); 7] = [
    ("sequential write, 1 MiB blocks + fsync", "MiB/s"),
    ("sequential read (warm), 1 MiB blocks", "MiB/s"),
    ("random read, 4 KiB (warm)", "ops/s"),
    ("stat", "ops/s"),
    ("create + write 4 KiB + close", "ops/s"),
    ("unlink", "ops/s"),
    ("random read, 4 KiB (warm), 4 threads", "ops/s"),
];

/// Random 4 KiB reads of the file with 4 threads at once (ops/s, all threads together).
const THREADS: usize = 4;

fn rate(count: f64, start: Instant) -> f64 {
    count / start.elapsed().as_secs_f64()
}

/// Called with `Some(i)` when workload `i` starts and `None` when it ends.
type PhaseHook<'a> = &'a mut dyn FnMut(Option<usize>) -> anyhow::Result<()>;

fn run_round(dir: &Path, opts: &Opts, hook: PhaseHook<'_>) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let data = vec![0xa5u8; BLOCK];
    let big = dir.join("big.dat");

    // Start from a clean journal: otherwise this fsync also commits the previous directory's
    // 4000 unlinks and freed blocks, and whoever runs first in a round pays for the others.
    nix::unistd::sync();
    hook(Some(0))?;
    let start = Instant::now();
    let mut file = File::create(&big).context("create big.dat")?;
    for _ in 0..opts.size_mib {
        file.write_all(&data)?;
    }
    file.sync_all()?;
    f.0[0] = rate(opts.size_mib as f64, start);
    drop(file);
    hook(None)?;

    let mut buf = vec![0u8; BLOCK];
    let read_all = |buf: &mut [u8]| -> anyhow::Result<usize> {
        let mut file = File::open(&big)?;
        let mut total = 0;
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    };
    read_all(&mut buf)?; // warm
    hook(Some(1))?;
    let start = Instant::now();
    let total = read_all(&mut buf)?;
    f.0[1] = rate(total as f64 / BLOCK as f64, start);
    hook(None)?;

    let file = File::open(&big)?;
    let blocks = (opts.size_mib * BLOCK / 4096) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let reads = 50_000;
    hook(Some(2))?;
    let start = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.read_exact_at(&mut buf[..4096], (x % blocks) * 4096)?;
    }
    f.0[2] = rate(reads as f64, start);
    hook(None)?;

    hook(Some(6))?;
    let start = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let file = &file;
                sc.spawn(move || -> std::io::Result<()> {
                    let mut b = vec![0u8; 4096];
                    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491);
                    for _ in 0..reads / THREADS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        file.read_exact_at(&mut b, (x % blocks) * 4096)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(())
    })?;
    f.0[6] = rate((reads / THREADS * THREADS) as f64, start);
    hook(None)?;
    drop(file);

    let small = dir.join("small");
    fs::create_dir(&small)?;
    let names: Vec<PathBuf> = (0..opts.files)
        .map(|i| small.join(format!("f{i}")))
        .collect();
    hook(Some(4))?;
    let start = Instant::now();
    for name in &names {
        let mut file = OpenOptions::new().write(true).create_new(true).open(name)?;
        file.write_all(&data[..4096])?;
    }
    f.0[4] = rate(names.len() as f64, start);
    hook(None)?;

    let stats = 100_000;
    hook(Some(3))?;
    let start = Instant::now();
    for i in 0..stats {
        fs::metadata(&names[i % names.len()])?;
    }
    f.0[3] = rate(stats as f64, start);
    hook(None)?;

    hook(Some(5))?;
    let start = Instant::now();
    for name in &names {
        fs::remove_file(name)?;
    }
    f.0[5] = rate(names.len() as f64, start);
    hook(None)?;

    fs::remove_dir(&small)?;
    fs::remove_file(&big)?;
    Ok(f)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A server's CPU time (ns) and the requests it served.
type Cost = (u64, u64);

/// Run the rounds interleaved over `dirs` (each with its server, none for native); every
/// round of every directory. Also returns, per directory, the server CPU time (ns) and the
/// requests served over all its rounds.
fn all_rounds(
    dirs: &[(PathBuf, Option<&chaosfs::Server>)],
    opts: &Opts,
) -> anyhow::Result<(Vec<Vec<Figures>>, Vec<Cost>)> {
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); dirs.len()];
    let mut cost = vec![(0u64, 0u64); dirs.len()];
    for _ in 0..opts.rounds {
        for ((d, server), (rounds, cost)) in dirs.iter().zip(all.iter_mut().zip(&mut cost)) {
            let (cpu0, req0) = (server_cpu_ns(), server.map_or(0, |s| s.requests()));
            let round = run_round(d, opts, &mut |_| Ok(()))
                .with_context(|| format!("workload in {}", d.display()))?;
            cost.0 += server_cpu_ns().saturating_sub(cpu0);
            cost.1 += server.map_or(0, |s| s.requests()) - req0;
            rounds.push(round);
        }
    }
    Ok((all, cost))
}

/// CPU time (ns) of this process's ChaosFS server threads (named `chaosfs-*`; the bench's
/// own main thread carries the process name and is left out). Only the mount under test
/// works during a round; the idle servers' threads add next to nothing, save their watch
/// threads, which see the active directory's changes on the shared backing file system.
fn server_cpu_ns() -> u64 {
    let me = std::process::id().to_string();
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| t.file_name() != me.as_str())
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("chaosfs-"))
        })
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns `fuse.enable_uring` on for the run (saying so) and restores it when dropped.
struct UringParam(Option<String>);

impl UringParam {
    fn enable() -> anyhow::Result<UringParam> {
        let old = fs::read_to_string(URING_PARAM)
            .context("this kernel has no FUSE over io_uring (use --uring 0)")?;
        if old.trim() == "Y" {
            return Ok(UringParam(None));
        }
        fs::write(URING_PARAM, "1").context("turn fuse.enable_uring on")?;
        println!("chaosfs-bench: turned {URING_PARAM} on for this run (restored at the end)");
        Ok(UringParam(Some(old)))
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        if self.0.is_some() {
            let _ = fs::write(URING_PARAM, "0");
        }
    }
}

/// Per workload, the median of `rounds`.
fn median_figures(rounds: &[Figures]) -> Figures {
    let mut m = Figures::default();
    for (i, slot) in m.0.iter_mut().enumerate() {
        *slot = median(rounds.iter().map(|r| r.0[i]).collect());
    }
    m
}

/// Per workload, the ratios of each round to the native round run just before it:
/// (median, min, max). Pairing rounds cancels much of the drift of a shared machine.
fn paired_ratios(native: &[Figures], other: &[Figures]) -> [(f64, f64, f64); 7] {
    let mut out = [(0.0, 0.0, 0.0); 7];
    for (i, slot) in out.iter_mut().enumerate() {
        let r: Vec<f64> = native
            .iter()
            .zip(other)
            .map(|(n, o)| o.0[i] / n.0[i])
            .collect();
        let min = r.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.iter().copied().fold(0.0, f64::max);
        *slot = (median(r), min, max);
    }
    out
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// tracefs, mounted in this process's own mount namespace if it is not there.
fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("tracing_on").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mount tracefs (for --requests)")
}

fn trace_write(file: &str, value: &str) -> anyhow::Result<()> {
    fs::write(Path::new(TRACEFS).join(file), value).with_context(|| format!("write {file}"))
}

/// FUSE requests per workload and opcode on one connection, from the `fuse_request_send`
/// tracepoint.
fn count_requests(dir: &Path, opts: &Opts) -> anyhow::Result<Vec<Vec<(String, u64)>>> {
    ensure_tracefs()?;
    let conn = chaosfs::mount::Connection::of_mount(dir)?.id();
    let needle = format!("connection {conn} ");
    let mut counts: Vec<Vec<(String, u64)>> = vec![Vec::new(); NAMES.len()];
    let mut current = None;
    let mut hook = |phase: Option<usize>| -> anyhow::Result<()> {
        match phase {
            Some(i) => {
                trace_write("tracing_on", "0")?;
                trace_write("buffer_size_kb", "65536")?;
                trace_write("trace", "")?;
                trace_write("events/fuse/fuse_request_send/enable", "1")?;
                trace_write("tracing_on", "1")?;
                current = Some(i);
            }
            None => {
                trace_write("tracing_on", "0")?;
                let text = fs::read_to_string(Path::new(TRACEFS).join("trace"))?;
                let mut by_op: Vec<(String, u64)> = Vec::new();
                for line in text.lines().filter(|l| l.contains(&needle)) {
                    let Some(op) = line
                        .split_once('(')
                        .and_then(|(_, r)| r.split_once(')'))
                        .map(|(op, _)| op.trim_start_matches("FUSE_").to_ascii_lowercase())
                    else {
                        continue;
                    };
                    match by_op.iter_mut().find(|(o, _)| *o == op) {
                        Some((_, n)) => *n += 1,
                        None => by_op.push((op, 1)),
                    }
                }
                by_op.sort_by_key(|b| std::cmp::Reverse(b.1));
                if let Some(i) = current.take() {
                    counts[i] = by_op;
                }
            }
        }
        Ok(())
    };
    run_round(dir, opts, &mut hook)?;
    trace_write("events/fuse/fuse_request_send/enable", "0")?;
    Ok(counts)
}

fn print_requests(label: &str, counts: &[Vec<(String, u64)>], opts: &Opts) {
    println!("\nFUSE requests per workload, {label} (per op: per file or per 1 MiB block)");
    let per = [
        opts.size_mib as f64,
        opts.size_mib as f64,
        50_000.0,
        100_000.0,
        opts.files as f64,
        opts.files as f64,
        50_000.0,
    ];
    for (i, (name, _)) in NAMES.iter().enumerate() {
        let total: u64 = counts[i].iter().map(|(_, n)| n).sum();
        let detail: Vec<String> = counts[i]
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        println!(
            "  {:<40} {:>7} ({:.2}/op): {}",
            name,
            total,
            total as f64 / per[i],
            detail.join(", ")
        );
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (shared by every process, unlike `Instant`'s origin).
fn mono_ns() -> anyhow::Result<i128> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
}

/// The other process of the outside-change measurement: for each line "MODE PATH" on stdin,
/// chmod PATH to MODE (octal) and print the `CLOCK_MONOTONIC` time it returned at.
fn outside_helper() -> anyhow::Result<()> {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (mode, path) = line.split_once(' ').context("helper: MODE PATH")?;
        let mode = u32::from_str_radix(mode, 8)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        writeln!(out, "{}", mono_ns()?)?;
        out.flush()?;
    }
    Ok(())
}

/// Delays (µs) from an outside chmod of `backing/name` to its visibility at `inside/name`,
/// `n` times; `None` entries for changes not seen within 2 s.
fn outside_delays(backing: &Path, inside: &Path, n: usize) -> anyhow::Result<Vec<Option<f64>>> {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let name = "outside.dat";
    fs::write(inside.join(name), b"x")?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--outside-helper")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn the outside helper")?;
    let (Some(mut tx), Some(rx)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("outside helper without pipes");
    };
    let mut rx = std::io::BufReader::new(rx);
    let mut delays = Vec::new();
    let target = inside.join(name);
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
    for i in 0..n {
        let want = if i % 2 == 0 { 0o600 } else { 0o644 };
        mode(&target)?; // cached from here on
        writeln!(tx, "{want:o} {}", backing.join(name).display())?;
        tx.flush()?;
        let start = Instant::now();
        let seen = loop {
            if mode(&target)? == want {
                break Some(mono_ns()?);
            }
            if start.elapsed().as_secs() >= 2 {
                break None;
            }
        };
        let mut line = String::new();
        rx.read_line(&mut line)?;
        let changed: i128 = line.trim().parse().context("helper's answer")?;
        // Nanoseconds to microseconds: far inside f64's exact range.
        #[allow(clippy::cast_precision_loss)]
        delays.push(seen.map(|s| (s - changed).max(0) as f64 / 1000.0));
    }
    drop(tx);
    let _ = child.wait();
    fs::remove_file(inside.join(name))?;
    Ok(delays)
}

fn print_outside(delays: &[Option<f64>], watching: bool) {
    let seen: Vec<f64> = delays.iter().flatten().copied().collect();
    let missed = delays.len() - seen.len();
    let mut sorted = seen.clone();
    sorted.sort_by(f64::total_cmp);
    // The value `num/den` of the way up the sorted delays.
    let pct = |num: usize, den: usize| {
        sorted
            .get(sorted.len().saturating_sub(1) * num / den)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "
outside change (chmod of the backing file by another process) to visibility through \
         the mount, untouched, {} changes, watch {}:\n  median {:.0} us, p90 {:.0} us, max {:.0} \
         us; not seen within 2 s: {missed}",
        delays.len(),
        if watching { "on" } else { "off (1 s cache)" },
        median(seen),
        pct(9, 10),
        pct(1, 1),
    );
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--outside-helper") {
        return outside_helper();
    }
    let opts = parse_opts()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("chaosfs-bench must run as root (it mounts FUSE)");
    }
    let _low_latency = opts.low_latency.then(fdswap::CpuLatency::hold);
    // Our own mount namespace: the mounts vanish with this process whatever happens.
    fdswap::enter_private_mount_namespace().context("private mount namespace")?;

    let base = nix::unistd::mkdtemp(&std::env::temp_dir().join("chaosfs-bench-XXXXXX"))?;
    let result = bench_in(&base, &opts);
    let _ = fs::remove_dir_all(&base);
    result
}

fn bench_in(base: &Path, opts: &Opts) -> anyhow::Result<()> {
    let _param = opts.uring.then(UringParam::enable).transpose()?;
    let mut labels = vec!["native", "untouched", "rule(0%)"];
    if opts.uring {
        labels.extend(["untouched+uring", "rule(0%)+uring"]);
    }
    let dirs: Vec<PathBuf> = (0..labels.len())
        .map(|i| base.join(format!("d{i}")))
        .collect();
    for d in &dirs {
        fs::create_dir(d)?;
    }
    let untouched = r#"{"rules":[{"glob":"*.never","errno":"EIO"}]}"#;
    let touched = r#"{"rules":[{"percent":0,"errno":"EIO"}]}"#;
    let mut cfg = chaosfs::server::Config {
        watch: opts.watch,
        uring: false,
        ..chaosfs::server::Config::default()
    };
    if opts.threads > 0 {
        cfg.n_threads = opts.threads;
    }
    // The untouched directory as it is underneath the mount, for the outside-change figure.
    let under = File::open(&dirs[1])?;
    let under_path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&under)
    ));
    let mut mounts = Vec::new();
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let spec = if i % 2 == 1 { untouched } else { touched };
        let cfg = chaosfs::server::Config {
            uring: i >= 3,
            ..cfg.clone()
        };
        let m = chaosfs::mount_over(d, RuleSet::new(Spec::from_json(spec)?)?, cfg)?;
        if i >= 3 && !matches!(m.server().transport(), chaosfs::Transport::Uring { .. }) {
            bail!("{}: {}", labels[i], m.server().transport());
        }
        mounts.push(m);
    }
    let m1 = &mounts[0];

    println!(
        "chaosfs-bench: {} MiB file, {} small files, median of {} interleaved rounds, backing {}",
        opts.size_mib,
        opts.files,
        opts.rounds,
        base.display()
    );
    for (label, m) in labels[1..].iter().zip(&mounts) {
        println!("  {label}: {}", m.server().transport());
    }
    let with_servers: Vec<(PathBuf, Option<&chaosfs::Server>)> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i.checked_sub(1).map(|j| mounts[j].server())))
        .collect();
    let (rounds, cost) = all_rounds(&with_servers, opts)?;
    let medians: Vec<Figures> = rounds.iter().map(|r| median_figures(r)).collect();
    let native = medians[0];

    print!("{:<42} {:>12}", "workload (medians)", "native");
    for l in &labels[1..] {
        print!(" {l:>16} {:>6}", "ratio");
    }
    println!();
    for (i, (name, unit)) in NAMES.iter().enumerate() {
        print!("{name:<42} {:>12}", format!("{:.0} {unit}", native.0[i]));
        for m in &medians[1..] {
            print!(
                " {:>16} {:>5.2}x",
                format!("{:.0}", m.0[i]),
                m.0[i] / native.0[i]
            );
        }
        println!();
    }
    print!(
        "{:<42} {:>12}",
        "server CPU per 1,000 requests (all rounds)", "-"
    );
    for &(ns, n) in &cost[1..] {
        let per = if n == 0 {
            0.0
        } else {
            ns as f64 / 1e6 / (n as f64 / 1000.0)
        };
        print!(" {:>16} {:>6}", format!("{per:.1} ms"), "");
    }
    println!();
    print!("{:<42} {:>12}", "requests served (all rounds)", "-");
    for &(_, n) in &cost[1..] {
        print!(" {n:>16} {:>6}", "");
    }
    println!();
    print!(
        "\nratio of each round to the native round before it: median (min-max)\n{:<42}",
        "workload"
    );
    for l in &labels[1..] {
        print!(" {l:>20}");
    }
    println!();
    for (i, (name, _)) in NAMES.iter().enumerate() {
        print!("{name:<42}");
        for r in &rounds[1..] {
            let (m, lo, hi) = paired_ratios(&rounds[0], r)[i];
            print!(" {:>20}", format!("{m:.2}x ({lo:.2}-{hi:.2})"));
        }
        println!();
    }
    let watching = m1.server().watching();
    let delays = outside_delays(&under_path, &dirs[1], if watching { 200 } else { 5 })?;
    print_outside(&delays, watching);
    if opts.requests {
        for (label, d) in labels.iter().zip(&dirs).skip(1) {
            print_requests(label, &count_requests(d, opts)?, opts);
        }
    }
    for m in mounts {
        m.unmount()?;
    }
    Ok(())
}
