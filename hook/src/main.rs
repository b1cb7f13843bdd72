//! `iochaos-hook STAGE`: an OCI runtime hook. Exit 0 on success or on stages without work,
//! 1 with a one-line reason on stderr (the runtime fails the container's creation), 2 on a
//! usage error. `iochaos-hook __serve REQUEST` is the injection server it starts.

use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use engine::logging::init_logging;
use iochaos_hook::error::{one_line, report};
use iochaos_hook::hook::{self, Env};
use iochaos_hook::oci::{Action, Stage};
use iochaos_hook::server;

/// OCI runtime hook: iochaos faults in a container from its first instruction, asked for by
/// the container's `dev.iochaos.spec` annotation.
#[derive(Parser)]
#[command(
    name = "iochaos-hook",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    after_help = "The runtime runs the hook with the stage name and writes the OCI state on its \
                  stdin. createRuntime (or prestart) injects, poststop removes the container's \
                  injections, other stages do nothing. Registered by \
                  /usr/share/containers/oci/hooks.d/iochaos-*.json (podman) or config.json's \
                  \"hooks\"; see docs/hook.md.\n\nExamples:\n  \
                  iochaos-hook createRuntime < state.json\n  \
                  iochaos-hook poststop < state.json"
)]
struct Cli {
    /// The OCI hook stage the runtime runs the hook at.
    #[arg(
        required = true,
        value_parser = PossibleValuesParser::new(Stage::ALL.map(Stage::name))
            .try_map(|s| s.parse::<Stage>()),
    )]
    stage: Option<Stage>,

    #[command(subcommand)]
    serve: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// The injection server the hook starts (internal).
    #[command(name = server::SERVE_ARG, hide = true)]
    Serve { request: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stage = match (cli.serve, cli.stage) {
        (Some(Internal::Serve { request }), _) => return serve(&request),
        (None, Some(stage)) => stage,
        // clap requires one of the two.
        (None, None) => return ExitCode::from(2),
    };
    if stage.action() == Action::Nothing {
        // Drain the state: crun fails the container ("writing to pipe: Broken pipe") when a
        // hook exits before it has written it.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        return ExitCode::SUCCESS;
    }
    init_logging("warn");
    match hook::run(stage, std::io::stdin().lock(), &Env::from_env()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("iochaos-hook: {}: {}", stage.name(), one_line(&e)));
            ExitCode::from(1)
        }
    }
}

fn serve(req: &str) -> ExitCode {
    init_logging("warn");
    match server::serve(req) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iochaos-hook server: {e:#}");
            ExitCode::from(1)
        }
    }
}
