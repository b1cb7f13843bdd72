//! `Recover` watches its own caller hang up, never a connection that took its fd number. The
//! caller sends `Recover` and `Status` on one connection and hangs up while `Recover` still runs:
//! ttrpc's answer to `Status` then fails, its connection threads end and its reaper closes the
//! connection's fd, and a new client's connection gets that number. Before, `Recover` duplicated
//! the fd number of its request context (`TtrpcContext::fd`) and so watched the newcomer: the
//! server waited for it to hang up (up to the grace) instead of stopping at once.
//!
//! A test binary of its own: the fd numbers are reused deterministically only when no other test
//! opens files in the process meanwhile.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::api::{ApiServer, ChaosService, RecoverReport, Status, TargetStatus};
use protobuf::Message;
use ttrpc::proto::MessageHeader;

/// A service whose `Recover` and `Status` say they started, then wait for the test's go.
struct Gated {
    entered: Mutex<Sender<&'static str>>,
    go_recover: Mutex<Receiver<()>>,
    go_status: Mutex<Receiver<()>>,
}

impl Gated {
    fn gate(&self, name: &'static str, go: &Mutex<Receiver<()>>) {
        let _ = self.entered.lock().expect("lock").send(name);
        let _ = go
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(60));
    }
}

impl ChaosService for Gated {
    fn status(&self) -> engine::Result<Status> {
        self.gate("status", &self.go_status);
        Ok(Status {
            id: "01jq8m2xk7c4".into(),
            path: "/data".into(),
            target: TargetStatus {
                pid: 42,
                container: None,
                namespace: None,
                mnt_ns: 1,
            },
            pids: vec![42],
            server_pid: std::process::id(),
            spec: serde_json::json!({"rules": []}),
            rules: vec![],
            swapped: vec![],
            skipped: vec![],
            created_unix: 0,
            open_modes: vec![],
        })
    }

    fn update_rules(&self, _spec_json: &str) -> engine::Result<Status> {
        self.status()
    }

    fn recover(&self) -> engine::Result<RecoverReport> {
        self.gate("recover", &self.go_recover);
        Ok(RecoverReport::default())
    }
}

/// One ttrpc request frame for `iochaos.v1.Chaos/<method>` with an empty request message.
fn frame(stream_id: u32, method: &str) -> Vec<u8> {
    let req = ttrpc::Request {
        service: "iochaos.v1.Chaos".into(),
        method: method.into(),
        ..Default::default()
    };
    let payload = req.write_to_bytes().expect("encode");
    let len = u32::try_from(payload.len()).expect("small");
    let mut out: Vec<u8> = MessageHeader::new_request(stream_id, len).into();
    out.extend_from_slice(&payload);
    out
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

#[test]
fn recover_watches_its_caller_not_a_connection_that_reuses_its_fd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("01jq8m2xk7c4.sock");
    let (entered_tx, entered) = channel();
    let (go_recover, go_recover_rx) = channel();
    let (go_status, go_status_rx) = channel();
    let server = ApiServer::serve(
        &sock,
        Arc::new(Gated {
            entered: Mutex::new(entered_tx),
            go_recover: Mutex::new(go_recover_rx),
            go_status: Mutex::new(go_status_rx),
        }),
    )
    .expect("serve");
    // The owner of the server: the grace (an hour) outlasts the test, so it is done early only
    // if the server saw *its caller* gone.
    let owner = std::thread::spawn(move || {
        let recovered =
            server.wait_recovered(Some(Duration::from_secs(60)), Duration::from_secs(3600));
        server.shutdown();
        recovered
    });

    let mut caller = UnixStream::connect(&sock).expect("connect");
    let step = |what| {
        let got = entered.recv_timeout(Duration::from_secs(20)).expect(what);
        assert_eq!(got, what);
    };
    caller.write_all(&frame(1, "Recover")).expect("send");
    step("recover");
    caller.write_all(&frame(3, "Status")).expect("send");
    step("status");
    let with_caller = open_fds();
    drop(caller);
    // Its Status answer cannot be written: ttrpc's connection threads end, and its reaper
    // closes the server's side. Both ends of the caller's connection are then closed here.
    go_status.send(()).expect("go");
    iochaos_testsupport::wait_until(
        "ttrpc to close the caller's connection",
        Duration::from_secs(20),
        || open_fds() == with_caller - 2,
    );
    // A newcomer: its server side takes the lowest free number, the caller's.
    let newcomer = UnixStream::connect(&sock).expect("connect");
    iochaos_testsupport::wait_until(
        "the newcomer to be accepted",
        Duration::from_secs(20),
        || open_fds() > with_caller - 2 + 1,
    );
    go_recover.send(()).expect("go");
    iochaos_testsupport::wait_until(
        "the server to see its caller gone (not wait for the newcomer)",
        Duration::from_secs(60),
        || owner.is_finished(),
    );
    assert!(owner.join().expect("owner"), "recovery seen");
    drop(newcomer);
}
