//! `FUSE_INTERRUPT`: a process killed while its request sleeps in a latency fault dies at once
//! (the delay is an hour, so only the interrupt can explain its exit); a signal it survives
//! leaves the delay alone. Needs root and /dev/fuse (fails without them).

mod fs_support;

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use chaosfs::Config;
use fs_support::*;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

const HOUR_ON_SLOW: &str = r#"{"rules":[{"ops":["read"],"glob":"slow","latency":"1h"}]}"#;

fn prepare(d: &std::path::Path) {
    fs::write(d.join("slow"), b"slow").expect("prepare");
    fs::write(d.join("fast"), b"fast").expect("prepare");
}

/// Kills the child on drop (a failed assertion must not leave it sleeping on the mount). Does
/// not wait for it: a child stuck in a request the server never answers ends when the mount,
/// dropped next, aborts the connection.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.try_wait();
    }
}

#[test]
fn sigkill_ends_a_request_parked_in_an_hour_long_delay() {
    let m = mount_with(rules(HOUR_ON_SLOW), Config::default(), prepare);
    let mut child = Child(
        Command::new("cat")
            .arg(m.join("slow"))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cat"),
    );
    iochaos_testsupport::wait_until("cat's read to be parked", Duration::from_secs(10), || {
        m.server().pending_delays() == 1
    });
    child.0.kill().expect("SIGKILL cat");
    // Reaped although its read had an hour left: the interrupt answered it.
    let status = iochaos_testsupport::poll("cat to be reaped", Duration::from_secs(30), || {
        child.0.try_wait().expect("waitpid")
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(m.server().pending_delays(), 0, "the parked read is gone");
    let st = m.server().interrupt_stats();
    assert_eq!(st.answered, 1, "{st:?}");
    // The mount still serves, the fault still applies to others.
    assert_eq!(fs::read(m.join("fast")).expect("fast read"), b"fast");
    assert_eq!(m.server().stats()[0].injected, 1);
}

extern "C" fn on_usr1(_: libc::c_int) {}

#[test]
fn a_signal_the_caller_survives_leaves_the_delay() {
    let m = mount_with(rules(HOUR_ON_SLOW), Config::default(), prepare);
    // A handler without SA_RESTART: the signal interrupts the read's wait in the kernel, so
    // FUSE sends an INTERRUPT, but the process lives on.
    let act = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { nix::sys::signal::sigaction(Signal::SIGUSR1, &act) }.expect("sigaction");
    let path = m.join("slow");
    let reader = std::thread::spawn(move || {
        let mut f = fs::File::open(&path).expect("open slow");
        let mut buf = [0u8; 16];
        let n = f.read(&mut buf).expect("slow read");
        buf[..n].to_vec()
    });
    iochaos_testsupport::wait_until("the read to be parked", Duration::from_secs(10), || {
        m.server().pending_delays() == 1
    });
    {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: `reader` is not joined yet, so its pthread_t names a live thread.
        let rc = unsafe { libc::pthread_kill(reader.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(rc, 0, "pthread_kill");
    }
    iochaos_testsupport::wait_until(
        "the server to see the interrupt",
        Duration::from_secs(10),
        || m.server().interrupt_stats().seen >= 1,
    );
    assert_eq!(m.server().interrupt_stats().answered, 0);
    assert_eq!(m.server().pending_delays(), 1, "the read stays parked");
    assert!(!reader.is_finished());
    m.server().cancel_delays();
    assert_eq!(reader.join().expect("reader"), b"slow", "served, not EINTR");
}
