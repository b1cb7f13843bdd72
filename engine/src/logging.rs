//! The log of the iochaos binaries (feature `logging`): `tracing` events as text, filtered by
//! [`LOG_ENV`] (an `EnvFilter` directive such as `info` or `engine=debug,fdswap=debug`), else
//! by the binary's default. Only the binaries call this, first thing in `main`; the libraries
//! only emit events.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::SubscriberBuilder;
use tracing_subscriber::fmt::format::{DefaultFields, Format};

/// The environment variable that sets what is logged.
pub const LOG_ENV: &str = "IOCHAOS_LOG";

/// Log to stderr (with ANSI colours unless `NO_COLOR` is set): what [`LOG_ENV`] asks
/// for, else `default_filter`.
///
/// # Panics
/// If a global subscriber is already installed.
pub fn init_logging(default_filter: &str) {
    builder(default_filter).with_writer(std::io::stderr).init();
}

/// Log to `writer`, without colour (a log another program reads, e.g. containerd's): what
/// [`LOG_ENV`] asks for, else `default_filter`.
///
/// # Panics
/// If a global subscriber is already installed.
pub fn init_plain_logging<W>(default_filter: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    builder(default_filter)
        .with_ansi(false)
        .with_writer(writer)
        .init();
}

fn builder(default_filter: &str) -> SubscriberBuilder<DefaultFields, Format, EnvFilter> {
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt().with_env_filter(filter)
}
