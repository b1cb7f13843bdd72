//! The injection server's file descriptors. ChaosFS holds about two per file the target has open
//! through it (an `O_PATH` fd per looked-up node, one per open handle), so a target with many
//! files brings the server to its `RLIMIT_NOFILE`; recover must still have what it needs then.
//! [`raise_soft_limit`] gives the server its hard limit; an [`FdReserve`] taken before the
//! swap-in holds back a few fds that recover releases before it scans.

use std::os::fd::OwnedFd;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::error::Error;

/// How many fds recover gets back from its reserve: `/proc` scans of the namespace's
/// processes, the journal, the API's answer, with room to spare.
pub const RESERVE: usize = 64;

/// Raise the soft `RLIMIT_NOFILE` to the hard one (best effort); the soft limit now.
pub fn raise_soft_limit() -> Option<u64> {
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the soft fd limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// fds held back (duplicates of `/dev/null`) for recover: what ChaosFS may take while the
/// faults are live ends that many fds short of the limit. Dropping it releases them.
#[derive(Debug)]
pub struct FdReserve(Vec<OwnedFd>);

impl FdReserve {
    /// Hold back [`RESERVE`] fds, or as many as can be had (logged).
    pub fn take() -> FdReserve {
        let mut fds = Vec::with_capacity(RESERVE);
        match rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(null) => {
                while fds.len() + 1 < RESERVE {
                    match rustix::io::fcntl_dupfd_cloexec(&null, 0) {
                        Ok(fd) => fds.push(fd),
                        Err(_) => break,
                    }
                }
                fds.push(null);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reserve fds for recover"),
        }
        if fds.len() < RESERVE {
            tracing::warn!(
                held = fds.len(),
                "fewer fds reserved for recover than wanted"
            );
        }
        FdReserve(fds)
    }

    /// How many fds are held back.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none could be held back.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `e` with a plain account of a shortage of fds (EMFILE anywhere in its causes); others as
/// they are.
pub fn explain_shortage(e: Error, doing: &str) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EMFILE))
        {
            tracing::warn!(error = %e, doing, "out of file descriptors");
            let open = std::fs::read_dir("/proc/self/fd").map_or_else(
                |_| "none left even to count them".to_owned(),
                |d| format!("{} open", d.count()),
            );
            let limit = getrlimit(Resource::Nofile)
                .current
                .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
            return Error::sys(
                format!(
                    "{doing}: the injection server is out of file descriptors ({open}, \
                     RLIMIT_NOFILE {limit}; ChaosFS holds about two per file open through it)"
                ),
                std::io::Error::from_raw_os_error(libc::EMFILE),
            );
        }
        cause = c.source();
    }
    e
}
