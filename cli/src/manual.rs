//! `iochaos completions SHELL` and `iochaos man [SUBCOMMAND] [--dir DIR]`, generated from the
//! clap definition (clap_complete, clap_mangen), so they list exactly what the parser takes.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};
use clap::CommandFactory;

use crate::args::Cli;

/// The command line without the hidden internal subcommands (`__serve`, `__demo-workload`),
/// which clap_complete would otherwise offer.
fn public_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("iochaos")
        .version(crate::args::VERSION)
        .about(full.get_about().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = public_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "iochaos", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completion script")
}

/// The page of `iochaos` or of `iochaos SUBCOMMAND` (named `iochaos-SUBCOMMAND`).
fn page(subcommand: Option<&str>) -> anyhow::Result<clap::Command> {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(name) = subcommand else {
        return Ok(cmd);
    };
    let sub = cmd
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("no subcommand {name:?}"))?
        .clone();
    Ok(sub
        .name(format!("iochaos-{name}"))
        .version(crate::args::VERSION))
}

pub fn man(subcommand: Option<&str>, dir: Option<&Path>) -> anyhow::Result<i32> {
    if let Some(dir) = dir {
        let mut written = Vec::new();
        for name in std::iter::once(None).chain(crate::args::visible_subcommands().map(Some)) {
            let cmd = page(name.as_deref())?;
            let file = dir.join(format!("{}.1", cmd.get_name()));
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .context("rendering a man page")?;
            std::fs::write(&file, buf).with_context(|| format!("writing {}", file.display()))?;
            written.push(file);
        }
        for f in written {
            println!("{}", f.display());
        }
        return Ok(0);
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(page(subcommand)?)
        .render(&mut buf)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&buf)
        .context("writing the man page")?;
    Ok(0)
}
