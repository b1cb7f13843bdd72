//! `iochaos-hook STAGE`: an OCI runtime hook. Exit 0 on success or on stages without work,
//! 1 with a one-line reason on stderr (the runtime fails the container's creation), 2 on a
//! usage error. `iochaos-hook __serve REQUEST` is the injection server it starts.

use std::process::ExitCode;

use engine::logging::init_logging;
use iochaos_hook::error::{one_line, report};
use iochaos_hook::hook::{self, Env};
use iochaos_hook::oci::Stage;
use iochaos_hook::server;

const USAGE: &str = "usage: iochaos-hook STAGE   (prestart, createRuntime, createContainer, \
                     startContainer, poststart, poststop; the OCI state on stdin)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stage = match args.as_slice() {
        [s, req] if s == server::SERVE_ARG => return serve(req),
        [s] => s,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stage: Stage = match stage.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("iochaos-hook: {e}");
            return ExitCode::from(2);
        }
    };
    if stage.action() == iochaos_hook::oci::Action::Nothing {
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
