//! `iochaos`: parse the command line, call the library, map errors to exit codes
//! (0 success, 1 failure with a one-line reason, 2 usage error; `run` returns its command's code).

mod args;
mod demo;
mod inject;
mod recover;
mod run;
mod status;
mod sys;

use std::process::ExitCode;

use args::{Command, Usage};

fn main() -> ExitCode {
    engine::logging::init_logging("warn");

    let result = match args::parse(std::env::args_os().skip(1).collect()) {
        Err(usage) => Err(anyhow::Error::new(usage)),
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            Ok(0)
        }
        Ok(Command::Run(run_args)) => run::run(run_args),
        Ok(Command::Demo) => demo::demo().map(|()| 0),
        Ok(Command::DemoWorkload(dir)) => demo::workload(&dir).map(|()| 0),
        Ok(Command::Inject(a)) => inject::inject(a),
        Ok(Command::Serve(req)) => inject::serve(&req),
        Ok(Command::Recover(what)) => recover::recover(what),
        Ok(Command::Status {
            id,
            json,
            namespace,
            state_dir,
        }) => status::status(id, json, &namespace, &state_dir),
        Ok(Command::Update {
            id,
            spec,
            namespace,
            state_dir,
        }) => status::update(&id, &spec, &namespace, &state_dir),
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
