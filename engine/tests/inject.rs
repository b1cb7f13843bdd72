//! Inject and recover against a real process in its own mount namespace, with the real
//! journal, mount and Chaos API. ChaosFS and fdswap are stood in for by a tmpfs launcher and a
//! recording swapper until they are wired in (privileged: needs root; fails without it).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{Helper, require_root};
use engine::Error;
use engine::api::{ApiServer, ChaosClient};
use engine::inject::{
    Device, FsLauncher, FsServer, InjectRequest, Mounted, SwapOutcome, Swapper, TargetSpec, inject,
    recover_from_journal,
};
use engine::journal::{Journal, SwappedFd};
use engine::mountinfo::{MountInfo, SharedPolicy};
use serde_json::{Value, json};

#[derive(Default, Clone)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, s: String) {
        self.0.lock().expect("lock").push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

struct TmpfsLauncher(Calls);
struct TmpfsServer(Calls);

impl FsLauncher for TmpfsLauncher {
    type Server = TmpfsServer;
    fn device(&self) -> engine::Result<Device> {
        Ok(Device::Tmpfs)
    }
    fn start(&self, mounted: Mounted, spec: &Value) -> engine::Result<TmpfsServer> {
        // The backing reaches the original directory.
        assert!(rustix::fs::statat(&mounted.backing, "orig", rustix::fs::AtFlags::empty()).is_ok());
        assert!(matches!(mounted.device, Device::Tmpfs));
        self.0.push(format!(
            "start {} {:?}",
            spec["rules"].as_array().map_or(0, Vec::len),
            mounted.connection
        ));
        Ok(TmpfsServer(self.0.clone()))
    }
}

impl FsServer for TmpfsServer {
    type Rules = Value;
    fn parse_rules(&self, spec: &Value) -> engine::Result<Value> {
        Ok(spec.clone())
    }
    fn update_rules(&self, spec: Value) -> Vec<engine::inject::EscapedFile> {
        self.0.push(format!("update {spec}"));
        Vec::new()
    }
    fn rule_counters(&self) -> Vec<(u64, u64)> {
        vec![(10, 4)]
    }
    fn stop(self) -> engine::Result<()> {
        self.0.push("stop".into());
        Ok(())
    }
}

struct RecordingSwapper(Calls);

impl Swapper for RecordingSwapper {
    fn swap_in(
        &self,
        pids: &[u32],
        path: &Path,
        to_mnt: u64,
        _read_ahead: fdswap::ReadAhead,
    ) -> engine::Result<SwapOutcome> {
        self.0
            .push(format!("in {pids:?} {} {to_mnt}", path.display()));
        Ok(SwapOutcome {
            swapped: pids
                .iter()
                .map(|&pid| SwappedFd {
                    pid,
                    fd: 3,
                    path: path.join("orig").display().to_string(),
                    flags: 2,
                    offset: 0,
                    orig_mnt_id: 1,
                    addr: None,
                })
                .collect(),
            skipped: vec![],
            open_modes: vec![],
        })
    }
    fn swap_out(
        &self,
        pids: &[u32],
        path: &Path,
        from_mnt: u64,
        _locks: &[(u32, fdswap::PosixLock)],
    ) -> engine::Result<SwapOutcome> {
        self.0
            .push(format!("out {pids:?} {} {from_mnt}", path.display()));
        Ok(SwapOutcome::default())
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, Journal) {
    let d = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(d.path()).expect("canon");
    std::fs::create_dir(root.join("vol")).expect("mkdir");
    std::fs::write(root.join("vol/orig"), "original").expect("write");
    let journal = Journal::open(root.join("run")).expect("journal");
    (d, root, journal)
}

/// [`inject`] of [`request`] with a tmpfs for ChaosFS and a swapper that records its calls.
fn inject_tmpfs(
    journal: &Journal,
    calls: &Calls,
    pid: u32,
    path: &Path,
) -> engine::Result<engine::inject::Injection<TmpfsServer, RecordingSwapper>> {
    inject(
        journal,
        &TmpfsLauncher(calls.clone()),
        RecordingSwapper(calls.clone()),
        &request(pid, path),
    )
}

/// A [`setup`], a helper process in a private mount namespace, and [`inject_tmpfs`] into it at
/// `vol`.
struct Injected {
    _dir: tempfile::TempDir,
    journal: Journal,
    vol: PathBuf,
    h: Helper,
    calls: Calls,
    inj: engine::inject::Injection<TmpfsServer, RecordingSwapper>,
}

fn injected() -> Injected {
    require_root();
    let (_dir, root, journal) = setup();
    let vol = root.join("vol");
    let h = Helper::private_ns();
    let calls = Calls::default();
    let inj = inject_tmpfs(&journal, &calls, h.pid(), &vol).expect("inject");
    Injected {
        _dir,
        journal,
        vol,
        h,
        calls,
        inj,
    }
}

/// Whether `pid`'s mount namespace has the mount `mnt_id`.
fn has_mount(pid: u32, mnt_id: u64) -> bool {
    MountInfo::read(pid).expect("mi").by_id(mnt_id).is_some()
}

fn request(pid: u32, path: &Path) -> InjectRequest {
    InjectRequest {
        target: TargetSpec::Pid(pid),
        path: path.to_owned(),
        spec: json!({"rules": [{"ops": ["write"], "errno": "EIO"}]}),
        shared: SharedPolicy::Refuse,
        host_namespace: engine::policy::HostNamespace::Refuse,
    }
}

#[test]
fn inject_status_update_recover_over_the_api() {
    let t = injected();
    let id = t.inj.id();
    let entry = t.journal.read(&id).expect("journaled");
    let mount = entry.mount.clone().expect("mount journaled");
    assert_eq!(entry.path, t.vol.display().to_string());
    assert_eq!(
        entry.pids.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![t.h.pid()]
    );
    assert_eq!(entry.swapped.len(), 1);
    assert!(has_mount(t.h.pid(), mount.mnt_id));
    assert!(!t.h.view(&t.vol.join("orig")).exists(), "mounted over");
    assert_eq!(
        t.calls.all(),
        vec![
            "start 1 None".to_string(),
            format!("in [{}] {} {}", t.h.pid(), t.vol.display(), mount.mnt_id)
        ]
    );

    // The same path again is refused, with nothing changed.
    let again = inject(
        &t.journal,
        &TmpfsLauncher(t.calls.clone()),
        RecordingSwapper(t.calls.clone()),
        &request(t.h.pid(), &t.vol),
    );
    assert!(
        matches!(&again, Err(Error::AlreadyInjected { id: i, .. }) if *i == id.to_string()),
        "{again:?}"
    );
    assert_eq!(t.journal.ids().expect("ids"), vec![id.clone()]);

    let server = ApiServer::serve(&t.journal.socket_path(&id), Arc::new(t.inj)).expect("serve");
    let client = ChaosClient::connect(server.socket()).expect("connect");
    let st = client.status().expect("status");
    assert_eq!(
        (st.id.as_str(), st.path.as_str()),
        (id.as_str(), t.vol.to_str().expect("utf8"))
    );
    assert_eq!(st.pids, vec![t.h.pid()]);
    assert_eq!((st.rules[0].matched, st.rules[0].injected), (10, 4));
    assert_eq!(st.swapped.len(), 1);

    let new = json!({"rules": [{"ops": ["fsync"], "latency": "200ms"}]});
    client.update_rules(&new.to_string()).expect("update");
    assert_eq!(
        t.journal.read(&id).expect("entry").spec,
        new,
        "journal follows the rules"
    );
    let e = client
        .update_rules(r#"{"path": "/elsewhere", "rules": [{"errno": "EIO"}]}"#)
        .expect_err("other path");
    assert!(
        matches!(&e, Error::Remote { code, .. } if *code == ttrpc::Code::INVALID_ARGUMENT),
        "{e}"
    );

    client.recover().expect("recover");
    assert!(!has_mount(t.h.pid(), mount.mnt_id), "mount gone");
    assert!(t.h.view(&t.vol.join("orig")).exists());
    assert!(
        t.journal.ids().expect("ids").is_empty(),
        "journal entry gone"
    );
    let all = t.calls.all();
    assert_eq!(
        all[all.len() - 2],
        format!("out [{}] {} {}", t.h.pid(), t.vol.display(), mount.mnt_id)
    );
    assert_eq!(all[all.len() - 1], "stop");
    let e = client.recover().expect_err("twice");
    assert!(e.to_string().contains("recovered already"), "{e}");
    drop(client);
    server.shutdown();
}

#[test]
fn failed_injections_change_nothing() {
    require_root();
    let (_d, root, journal) = setup();
    let calls = Calls::default();
    let launcher = TmpfsLauncher(calls.clone());
    let try_inject =
        |req: &InjectRequest| inject(&journal, &launcher, RecordingSwapper(calls.clone()), req);
    let e = try_inject(&request(4_194_305, &root)).expect_err("dead pid");
    assert_eq!(e.to_string(), "no process with pid 4194305");
    let h = Helper::private_ns();
    let e = try_inject(&request(h.pid(), &root.join("missing"))).expect_err("missing path");
    assert!(
        e.to_string()
            .ends_with("missing in the target: No such file or directory (os error 2)"),
        "{e}"
    );
    let e = try_inject(&request(h.pid(), &root.join("vol/orig"))).expect_err("file");
    assert!(matches!(e, Error::NotADirectory { .. }), "{e}");
    let req = InjectRequest {
        target: TargetSpec::Container {
            id: "nope".into(),
            namespace: "default".into(),
            state_dir: root.clone(),
        },
        ..request(0, &root)
    };
    let e = try_inject(&req).expect_err("container");
    assert!(
        e.to_string().starts_with("unknown container \"nope\""),
        "{e}"
    );
    assert!(journal.ids().expect("ids").is_empty());
    assert!(calls.all().is_empty());
}

#[test]
fn recover_from_the_journal_when_the_server_is_gone() {
    let t = injected();
    let id = t.inj.id();
    let mnt_id = t
        .journal
        .read(&id)
        .expect("entry")
        .mount
        .expect("mount")
        .mnt_id;
    // The server dies without cleaning up: its mount and t.journal entry stay.
    std::mem::forget(t.inj);
    let st = engine::inject::status_from_entry(&t.journal.read(&id).expect("entry"));
    assert_eq!(
        (st.pids.clone(), st.rules.len(), st.swapped.len()),
        (vec![t.h.pid()], 1, 1)
    );
    assert_eq!(st.server_pid, std::process::id());
    assert!(has_mount(t.h.pid(), mnt_id));

    recover_from_journal(&t.journal, &id, &RecordingSwapper(t.calls.clone())).expect("recover");
    assert!(!has_mount(t.h.pid(), mnt_id), "mount gone");
    assert!(t.h.view(&t.vol.join("orig")).exists());
    assert!(t.journal.ids().expect("ids").is_empty());
    assert_eq!(
        t.calls.all().last().cloned(),
        Some(format!("out [{}] {} {mnt_id}", t.h.pid(), t.vol.display()))
    );

    // And when the target has exited as well.
    let h2 = Helper::private_ns();
    let inj = inject_tmpfs(&t.journal, &t.calls, h2.pid(), &t.vol).expect("inject 2");
    let id2 = inj.id();
    std::mem::forget(inj);
    drop(h2);
    recover_from_journal(&t.journal, &id2, &RecordingSwapper(t.calls.clone()))
        .expect("recover, target gone");
    assert!(t.journal.ids().expect("ids").is_empty());
}
