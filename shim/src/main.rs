//! `containerd-shim-iochaos-v2`: containerd's runtime `io.containerd.iochaos.v2`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use engine::logging::init_plain_logging;
use iochaos_shim::args::{self, Action};
use iochaos_shim::error::one_line;

/// Log to containerd: the `log` fifo containerd reads in the bundle (the daemon), else stderr
/// (which containerd reports for `start` and `delete`).
/// Without colour; `IOCHAOS_LOG`, else `debug` with containerd's `-debug`, else `info`.
/// True when the log is the fifo (not the stderr that the final error line goes to).
fn init_logging(debug: bool, to_fifo: bool) -> bool {
    let default_filter = if debug { "debug" } else { "info" };
    match to_fifo.then(open_log_fifo).flatten() {
        Some(f) => {
            init_plain_logging(default_filter, std::sync::Mutex::new(f));
            true
        }
        None => {
            init_plain_logging(default_filter, std::io::stderr);
            false
        }
    }
}

fn open_log_fifo() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: no reader (containerd gone) must not hang us; then blocking writes.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()?;
    let flags = rustix::fs::fcntl_getfl(&f).ok()?;
    rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK).ok()?;
    Some(f)
}

fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", engine::api::shim::BINARY);
            return ExitCode::from(2);
        }
    };
    let action = args.action();
    let log_is_fifo = init_logging(args.debug, action == Action::Serve);
    let result = match action {
        Action::Version => {
            println!(
                "{}:\n  Version: {}\n  Runtime: {}",
                engine::api::shim::BINARY,
                env!("CARGO_PKG_VERSION"),
                engine::api::shim::RUNTIME
            );
            Ok(())
        }
        Action::Start => iochaos_shim::start::start(&args).map(|address| {
            print!("{address}");
            let _ = std::io::stdout().flush();
        }),
        Action::Delete => iochaos_shim::delete::delete(&args).map(|response| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&response).and_then(|()| out.flush());
        }),
        Action::Serve => match (&args.runc_address, &args.socket) {
            (Some(runc), Some(socket)) => iochaos_shim::daemon::serve(
                &args.namespace,
                runc,
                PathBuf::from(socket.trim_start_matches("unix://")),
            ),
            _ => Err(iochaos_shim::Error::Usage(
                "containerd runs this shim with `start` or `delete`".into(),
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: in containerd's log when that is where the log goes, and on stderr.
            if log_is_fifo {
                tracing::error!(error = %one_line(&e), "{action:?} failed");
            }
            eprintln!("{}: {}", engine::api::shim::BINARY, one_line(&e));
            ExitCode::FAILURE
        }
    }
}
