//! `iochaos`: parse the command line, call the library, map errors to exit codes
//! (0 success, 1 failure with a one-line reason, 2 usage error; `run` returns its command's code).

mod args;
mod chaos_mesh;
mod crash;
mod demo;
mod inject;
mod manual;
mod output;
mod progress;
mod recover;
mod run;
mod setup;
mod status;
mod sys;
mod targets;

use std::process::ExitCode;

use args::{Command, Usage};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(err) => return usage_exit(&err),
    };
    engine::logging::init_logging("warn");
    let result = match command {
        Command::Run(run_args) => run::run(run_args),
        Command::Demo => demo::demo().map(|()| 0),
        Command::DemoWorkload(dir) => demo::workload(&dir).map(|()| 0),
        Command::Inject(a) => inject::inject(a),
        Command::Serve(req) => inject::serve(&req),
        Command::Recover { what, json } => {
            recover::resolve(what).and_then(|w| recover::recover(w, json))
        }
        Command::Status {
            id,
            json,
            namespace,
            state_dir,
        } => id
            .map(|id| targets::resolve(&id, &namespace))
            .transpose()
            .and_then(|n| match n {
                Some(n) => {
                    let ns = n.lookup_namespace(&state_dir).to_owned();
                    status::status(Some(n.id), json, &ns, &state_dir)
                }
                None => status::status(None, json, &namespace, &state_dir),
            }),
        Command::Update {
            id,
            spec,
            json,
            namespace,
            state_dir,
        } => targets::resolve(&id, &namespace).and_then(|n| {
            let ns = n.lookup_namespace(&state_dir);
            status::update(&n.id, &spec, json, ns, &state_dir)
        }),
        Command::Crash { id, opts, json } => crash::crash(&id, opts, json),
        Command::Convert(file) => run::convert(&file).map(|()| 0),
        Command::SetupContainerd(a) => setup::containerd(&a),
        Command::Completions(shell) => manual::completions(shell).map(|()| 0),
        Command::Man { subcommand, dir } => manual::man(subcommand.as_deref(), dir.as_deref()),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            let usage = err.downcast_ref::<Usage>().is_some();
            // One line: the chain of causes joined, as anyhow's alternate Display does, with
            // control characters (a newline in a path) escaped.
            eprintln!("iochaos: {}", status::escape(&format!("{err:#}")));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Help and version go to stdout (exit 0); a usage error is one line on stderr (exit 2).
fn usage_exit(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        // `iochaos` alone: the help, on stderr, as a usage error.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(2)
        }
        _ => {
            eprintln!("iochaos: {}", status::escape(&args::one_line(err)));
            ExitCode::from(2)
        }
    }
}
