//! The Chaos ttrpc API over a real unix socket: a server with a small in-memory service, the
//! generated client, errors crossing the wire, and the recover handshake.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::Error;
use engine::api::{
    ApiServer, ChaosClient, ChaosService, FdEntry, RecoverReport, RuleStatus, Status, TargetStatus,
};
use serde_json::{Value, json};

struct Service {
    status: Mutex<Status>,
    recovered: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("rules must be an array")]
struct BadRules;

impl ChaosService for Service {
    fn status(&self) -> engine::Result<Status> {
        Ok(self.status.lock().expect("lock").clone())
    }

    fn update_rules(&self, spec_json: &str) -> engine::Result<Status> {
        let spec: Value =
            serde_json::from_str(spec_json).map_err(|e| Error::InvalidSpec(Box::new(e)))?;
        let rules = spec["rules"]
            .as_array()
            .ok_or(Error::InvalidSpec(Box::new(BadRules)))?;
        let mut st = self.status.lock().expect("lock");
        st.rules = rules
            .iter()
            .map(|r| RuleStatus {
                spec: r.clone(),
                matched: 0,
                injected: 0,
            })
            .collect();
        st.spec = spec;
        Ok(st.clone())
    }

    fn recover(&self) -> engine::Result<RecoverReport> {
        let mut done = self.recovered.lock().expect("lock");
        if *done {
            return Err(Error::NoSuchInjection {
                id: "01jq8m2xk7c4".into(),
            });
        }
        *done = true;
        let st = self.status.lock().expect("lock");
        Ok(RecoverReport {
            restored: st.swapped.clone(),
            failed: vec![],
        })
    }
}

fn status() -> Status {
    Status {
        id: "01jq8m2xk7c4".into(),
        path: "/data".into(),
        target: TargetStatus {
            pid: 42,
            container: Some("web".into()),
            namespace: Some("default".into()),
            mnt_ns: 4026532000,
        },
        pids: vec![42, 43],
        server_pid: std::process::id(),
        spec: json!({"path": "/data", "rules": [{"ops": ["write"], "errno": "EIO", "percent": 50}]}),
        rules: vec![RuleStatus {
            spec: json!({"ops": ["write"], "errno": "EIO", "percent": 50}),
            matched: 10,
            injected: 5,
        }],
        swapped: vec![FdEntry {
            pid: 42,
            fd: 3,
            path: "/data/db".into(),
            reason: None,
        }],
        skipped: vec![FdEntry {
            pid: 43,
            fd: 7,
            path: "/data/gone (deleted)".into(),
            reason: Some("deleted but open".into()),
        }],
        created_unix: 1_800_000_000,
        open_modes: vec![engine::api::ProcessOpenMode {
            pid: 42,
            mode: "handoff".into(),
        }],
    }
}

fn serve(dir: &std::path::Path) -> (ApiServer, std::path::PathBuf) {
    let sock = dir.join("01jq8m2xk7c4.sock");
    let service = Arc::new(Service {
        status: Mutex::new(status()),
        recovered: Mutex::new(false),
    });
    (ApiServer::serve(&sock, service).expect("serve"), sock)
}

#[test]
fn status_update_and_errors_over_a_real_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, sock) = serve(dir.path());
    let md = std::fs::metadata(&sock).expect("socket");
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);

    let client = ChaosClient::connect(&sock).expect("connect");
    assert_eq!(client.status().expect("status"), status());
    // The status object is the `iochaos status --json` object.
    let v = serde_json::to_value(client.status().expect("status")).expect("json");
    for k in [
        "id",
        "path",
        "pids",
        "server_pid",
        "rules",
        "swapped",
        "skipped",
    ] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert_eq!(v["rules"][0]["matched"], 10);
    assert_eq!(v["skipped"][0]["reason"], "deleted but open");
    assert_eq!(v["open_modes"][0]["mode"], "handoff");

    let new = json!({"rules": [{"ops": ["fsync"], "latency": "200ms"}, {"ops": ["read"], "errno": "EIO"}]});
    let st = client.update_rules(&new.to_string()).expect("update");
    assert_eq!(st.spec, new);
    assert_eq!(st.rules.len(), 2);
    assert_eq!(
        st.rules[0].spec,
        json!({"ops": ["fsync"], "latency": "200ms"})
    );
    assert_eq!(client.status().expect("status").rules.len(), 2);

    match client.update_rules("{not json") {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
            assert!(message.starts_with("invalid spec: "), "{message}");
        }
        other => panic!("expected a remote INVALID_ARGUMENT, got {other:?}"),
    }
    match client.update_rules(r#"{"rules": 3}"#) {
        Err(Error::Remote { message, .. }) => {
            assert_eq!(message, "invalid spec: rules must be an array")
        }
        other => panic!("{other:?}"),
    }

    // A second server on a live socket is refused; the first keeps serving.
    let again = ApiServer::serve(
        &sock,
        Arc::new(Service {
            status: Mutex::new(status()),
            recovered: Mutex::new(false),
        }),
    );
    assert!(
        matches!(again, Err(Error::InjectionExists { .. })),
        "{again:?}"
    );
    assert_eq!(client.status().expect("still serving").id, "01jq8m2xk7c4");

    drop(client);
    server.shutdown();
    assert!(!sock.exists(), "socket removed on shutdown");
    assert!(matches!(
        ChaosClient::connect(&sock),
        Err(Error::Rpc { .. })
    ));
}

#[test]
fn recover_answer_reaches_the_caller_before_the_server_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, sock) = serve(dir.path());
    // The owner of the server: waits for a recovery, then stops serving. The grace (an hour)
    // outlasts the test: the owner can only be done early if the server saw the caller leave.
    let owner = std::thread::spawn(move || {
        let recovered =
            server.wait_recovered(Some(Duration::from_secs(20)), Duration::from_secs(3600));
        server.shutdown();
        recovered
    });
    let client = ChaosClient::connect(&sock)
        .expect("connect")
        .with_timeout(Duration::from_secs(5));
    let report = client.recover().expect("recover");
    assert_eq!(report.restored, status().swapped);
    assert!(
        !owner.is_finished(),
        "the server stopped while the caller was still connected"
    );
    drop(client);
    iochaos_testsupport::wait_until(
        "the server to notice the caller leave (not sit out the grace)",
        Duration::from_secs(60),
        || owner.is_finished(),
    );
    assert!(owner.join().expect("owner"), "recovery seen");
    assert!(!sock.exists());
}

#[test]
fn stale_socket_is_replaced_and_missing_server_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("01jq8m2xk7c4.sock");
    let e = ChaosClient::connect(&sock).expect_err("nobody there");
    assert!(
        e.to_string()
            .starts_with(&format!("Chaos API at {}", sock.display())),
        "{e}"
    );
    // A socket file nobody listens on (a crashed server's).
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let (server, _) = serve(dir.path());
    assert_eq!(
        ChaosClient::connect(&sock)
            .expect("connect")
            .status()
            .expect("status")
            .pids,
        vec![42, 43]
    );
    drop(server);
    assert!(!sock.exists());
}
