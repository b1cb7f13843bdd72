//! ChaosFS throughput against the native filesystem, in one run.
//!
//! Three directories on the same filesystem: one used natively, one under ChaosFS with a rule
//! that touches no benchmark file (so files are opened in kernel passthrough mode), one under
//! ChaosFS with a rule that touches every op on every file but fires with percent 0 (so every
//! request goes through the daemon and the rule engine). Each workload runs on each directory
//! `--rounds` times; the best round counts. Prints absolute figures and ratios to native.
//!
//! Usage: chaosfs-bench [--size-mib N] [--files N] [--rounds N]   (root, /dev/fuse)

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
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut opts = Opts {
        size_mib: 256,
        files: 4000,
        rounds: 3,
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
            _ => bail!("unknown flag {flag} (use --size-mib, --files, --rounds)"),
        }
    }
    Ok(opts)
}

/// One figure per workload, higher is better.
#[derive(Clone, Copy, Default)]
struct Figures([f64; 6]);

const NAMES: [(&str, &str); 6] = [
    ("sequential write, 1 MiB blocks + fsync", "MiB/s"),
    ("sequential read (warm), 1 MiB blocks", "MiB/s"),
    ("random read, 4 KiB (warm)", "ops/s"),
    ("stat", "ops/s"),
    ("create + write 4 KiB + close", "ops/s"),
    ("unlink", "ops/s"),
];

fn rate(count: f64, start: Instant) -> f64 {
    count / start.elapsed().as_secs_f64()
}

fn run_round(dir: &Path, opts: &Opts) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let data = vec![0xa5u8; BLOCK];
    let big = dir.join("big.dat");

    let start = Instant::now();
    let mut file = File::create(&big).context("create big.dat")?;
    for _ in 0..opts.size_mib {
        file.write_all(&data)?;
    }
    file.sync_all()?;
    f.0[0] = rate(opts.size_mib as f64, start);
    drop(file);

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
    let start = Instant::now();
    let total = read_all(&mut buf)?;
    f.0[1] = rate(total as f64 / BLOCK as f64, start);

    let file = File::open(&big)?;
    let blocks = (opts.size_mib * BLOCK / 4096) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let reads = 50_000;
    let start = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.read_exact_at(&mut buf[..4096], (x % blocks) * 4096)?;
    }
    f.0[2] = rate(reads as f64, start);
    drop(file);

    let small = dir.join("small");
    fs::create_dir(&small)?;
    let names: Vec<PathBuf> = (0..opts.files)
        .map(|i| small.join(format!("f{i}")))
        .collect();
    let start = Instant::now();
    for name in &names {
        let mut file = OpenOptions::new().write(true).create_new(true).open(name)?;
        file.write_all(&data[..4096])?;
    }
    f.0[4] = rate(names.len() as f64, start);

    let stats = 100_000;
    let start = Instant::now();
    for i in 0..stats {
        fs::metadata(&names[i % names.len()])?;
    }
    f.0[3] = rate(stats as f64, start);

    let start = Instant::now();
    for name in &names {
        fs::remove_file(name)?;
    }
    f.0[5] = rate(names.len() as f64, start);

    fs::remove_dir(&small)?;
    fs::remove_file(&big)?;
    Ok(f)
}

fn best_of(dir: &Path, opts: &Opts) -> anyhow::Result<Figures> {
    let mut best = Figures::default();
    for _ in 0..opts.rounds {
        let round =
            run_round(dir, opts).with_context(|| format!("workload in {}", dir.display()))?;
        for (b, r) in best.0.iter_mut().zip(round.0) {
            *b = b.max(r);
        }
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let opts = parse_opts()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("chaosfs-bench must run as root (it mounts FUSE)");
    }
    // Our own mount namespace: the mounts vanish with this process whatever happens.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;

    let base = nix::unistd::mkdtemp(&std::env::temp_dir().join("chaosfs-bench-XXXXXX"))?;
    let result = bench_in(&base, &opts);
    let _ = fs::remove_dir_all(&base);
    result
}

fn bench_in(base: &Path, opts: &Opts) -> anyhow::Result<()> {
    let dirs = ["native", "untouched", "touched"].map(|d| base.join(d));
    for d in &dirs {
        fs::create_dir(d)?;
    }
    let untouched = Spec::from_json(r#"{"rules":[{"glob":"*.never","errno":"EIO"}]}"#)?;
    let touched = Spec::from_json(r#"{"rules":[{"percent":0,"errno":"EIO"}]}"#)?;
    let m1 = chaosfs::mount_over(
        &dirs[1],
        RuleSet::new(untouched)?,
        chaosfs::server::Config::default(),
    )?;
    let m2 = chaosfs::mount_over(
        &dirs[2],
        RuleSet::new(touched)?,
        chaosfs::server::Config::default(),
    )?;

    println!(
        "chaosfs-bench: {} MiB file, {} small files, best of {} rounds, backing {}",
        opts.size_mib,
        opts.files,
        opts.rounds,
        base.display()
    );
    let native = best_of(&dirs[0], opts)?;
    let fast = best_of(&dirs[1], opts)?;
    let slow = best_of(&dirs[2], opts)?;
    m1.unmount()?;
    m2.unmount()?;

    println!(
        "{:<42} {:>12} {:>12} {:>8} {:>12} {:>8}",
        "workload", "native", "untouched", "ratio", "rule(0%)", "ratio"
    );
    for (i, (name, unit)) in NAMES.iter().enumerate() {
        println!(
            "{:<42} {:>12} {:>12} {:>7.2}x {:>12} {:>7.2}x",
            name,
            format!("{:.0} {unit}", native.0[i]),
            format!("{:.0}", fast.0[i]),
            fast.0[i] / native.0[i],
            format!("{:.0}", slow.0[i]),
            slow.0[i] / native.0[i],
        );
    }
    Ok(())
}
