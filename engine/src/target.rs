//! Targets: a process, a containerd container or an OCI container being created, its
//! namespaces, its root, and every process (with its threads) that shares its mount namespace;
//! what is read about a process under `/proc` (stat, fdinfo) and whether it still runs.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::error::{Error, Result};

/// containerd's default state directory.
pub const CONTAINERD_STATE_DIR: &str = "/run/containerd";
/// The runtime v2 task directory under the state directory.
pub const CONTAINERD_TASK_SUBDIR: &str = "io.containerd.runtime.v2.task";
/// containerd's default namespace.
pub const CONTAINERD_DEFAULT_NAMESPACE: &str = "default";
/// The "namespace" recorded for a container named by an OCI hook (containerd containers
/// record their containerd namespace): `iochaos status` shows `oci/ID`.
pub const OCI_NAMESPACE: &str = "oci";

/// The identity of a namespace: the nsfs inode (what `/proc/PID/ns/*` links show as
/// `mnt:[INODE]`) and the nsfs device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    /// The namespace `/proc/<pid>/ns/<kind>` refers to (`kind` is `mnt`, `user`, ...).
    pub fn of(pid: u32, kind: &str) -> Result<NsId> {
        let path = format!("/proc/{pid}/ns/{kind}");
        let md = fs::metadata(&path).map_err(|e| proc_error(pid, &path, e))?;
        Ok(NsId {
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    fn of_fd(fd: BorrowedFd<'_>, what: &str) -> Result<NsId> {
        let st = rustix::fs::fstat(fd).map_err(|e| Error::sys(format!("fstat {what}"), e))?;
        Ok(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// A process of a target, with the start time that tells it from a later process reusing its pid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Short command name (`/proc/PID/comm`).
    pub comm: String,
    /// Every thread id (`/proc/PID/task`), the leader included.
    pub threads: Vec<u32>,
}

/// Which containerd container a target came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub namespace: String,
}

/// What `/proc/PID/stat` says that we need (`iochaos-procinfo` parses it; its errors convert
/// into [`Error`]).
pub use procinfo::ProcStat;

fn proc_error(pid: u32, path: &str, e: io::Error) -> Error {
    // ENOENT / ESRCH: the process is gone (or never was).
    if matches!(Errno::from_io_error(&e), Some(Errno::NOENT | Errno::SRCH)) {
        Error::NoSuchProcess { pid }
    } else {
        Error::io(path, e)
    }
}

/// A running target: its init (or chosen) process, its namespaces and root, held open so a
/// later pid reuse cannot redirect us.
#[derive(Debug)]
pub struct Target {
    /// The process the target was named by (the container's init for containers).
    pub pid: u32,
    /// Its start time; with `pid` it names the process uniquely.
    pub start_time: u64,
    /// Set when the target was named by a containerd container.
    pub container: Option<ContainerRef>,
    /// The target's mount namespace.
    pub mnt_ns: NsId,
    /// The target's user namespace.
    pub user_ns: NsId,
    /// True when the target's user namespace differs from ours (a user-namespaced container).
    pub own_user_ns: bool,
    /// True when the target shares our mount namespace (a host process): a mount there is seen
    /// by every host process.
    pub shares_our_mnt_ns: bool,
    mnt_ns_fd: OwnedFd,
    user_ns_fd: OwnedFd,
    root_fd: OwnedFd,
}

impl Target {
    /// The target named by a pid.
    pub fn from_pid(pid: u32) -> Result<Target> {
        if pid == 0 {
            return Err(Error::NoSuchProcess { pid });
        }
        let before = ProcStat::read(pid)?;
        if before.is_kernel_thread() {
            return Err(Error::Malformed {
                path: format!("/proc/{pid}").into(),
                reason: "is a kernel thread, not a process".into(),
            });
        }
        let open = |name: &str, flags: OFlags| -> Result<OwnedFd> {
            let path = format!("/proc/{pid}/{name}");
            rustix::fs::open(&path, flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| proc_error(pid, &path, e.into()))
        };
        let mnt_ns_fd = open("ns/mnt", OFlags::RDONLY)?;
        let user_ns_fd = open("ns/user", OFlags::RDONLY)?;
        let root_fd = open("root", OFlags::PATH | OFlags::DIRECTORY)?;
        // Same start time after opening: the fds belong to the process we were asked about,
        // not to a later one that reused its pid.
        let after = ProcStat::read(pid)?;
        if after.start_time != before.start_time || after.state == 'Z' {
            return Err(Error::NoSuchProcess { pid });
        }
        let mnt_ns = NsId::of_fd(mnt_ns_fd.as_fd(), "mount namespace")?;
        let user_ns = NsId::of_fd(user_ns_fd.as_fd(), "user namespace")?;
        let self_pid = std::process::id();
        Ok(Target {
            pid,
            start_time: before.start_time,
            container: None,
            mnt_ns,
            user_ns,
            own_user_ns: user_ns != NsId::of(self_pid, "user")?,
            shares_our_mnt_ns: mnt_ns == NsId::of(self_pid, "mnt")?,
            mnt_ns_fd,
            user_ns_fd,
            root_fd,
        })
    }

    /// The target named by a containerd container, found through its task directory.
    pub fn from_container(task: &ContainerdTask) -> Result<Target> {
        let mut t = match Target::from_pid(task.init_pid) {
            Err(Error::NoSuchProcess { pid }) => {
                return Err(Error::ContainerNotRunning {
                    id: task.id.clone(),
                    namespace: task.namespace.clone(),
                    pid,
                });
            }
            r => r?,
        };
        t.container = Some(ContainerRef {
            id: task.id.clone(),
            namespace: task.namespace.clone(),
        });
        Ok(t)
    }

    /// The target of an OCI container being created (start-time injection: the
    /// `iochaos-hook` OCI hook at `createRuntime` or `prestart`, the shim at create): init
    /// process `pid`, root `rootfs` (absolute, as the runtime named it, i.e. a path in the
    /// runtime's and, before `pivot_root`, the init's mount namespace), container id `id`.
    ///
    /// At `createRuntime` the runtime has created the container's namespaces and prepared its
    /// mounts under the rootfs, but the init process has not called `pivot_root` yet (runc;
    /// crun may have): its root is still the runtime's, and the container's root is the
    /// bundle's rootfs as a path in the new mount namespace. That directory is found through
    /// `/proc/PID/root` (a walk that crosses the mounts of the init's namespace), checked to be
    /// the rootfs the runtime named, and made the target's root, so the path resolves as the
    /// container will see it. A mount made there stays where it is across `pivot_root`.
    pub fn from_oci_create(pid: u32, rootfs: &Path, id: &str) -> Result<Target> {
        if !rootfs.is_absolute() {
            return Err(Error::RelativePath {
                path: rootfs.to_owned(),
            });
        }
        let mut target = Target::from_pid(pid)?;
        target.container = Some(ContainerRef {
            id: id.to_owned(),
            namespace: OCI_NAMESPACE.to_owned(),
        });
        let want = fs::metadata(rootfs).map_err(|e| Error::io(rootfs, e))?;
        let same = |st: &rustix::fs::Stat| st.st_dev == want.dev() && st.st_ino == want.ino();
        let root = rustix::fs::fstat(target.root_fd())
            .map_err(|e| Error::sys(format!("fstat the root of pid {pid}"), e))?;
        if same(&root) {
            tracing::debug!(pid, "the init's root is the rootfs already");
            return Ok(target);
        }
        let inner = Path::new(&format!("/proc/{pid}/root"))
            .join(rootfs.strip_prefix("/").unwrap_or(rootfs));
        let fd = rustix::fs::open(
            &inner,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&inner, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(&inner, e.into()))?;
        if !same(&st) {
            return Err(Error::Malformed {
                path: inner,
                reason: format!(
                    "is not the container's rootfs {} (another directory is mounted there in \
                     pid {pid}'s mount namespace)",
                    rootfs.display()
                ),
            });
        }
        // Same process after opening: the fd belongs to the init we were asked about.
        if !target.is_alive() {
            return Err(Error::NoSuchProcess { pid });
        }
        tracing::debug!(pid, rootfs = %rootfs.display(), "the rootfs, through the init's root");
        target.root_fd = fd;
        Ok(target)
    }

    /// `/proc/PID/ns/mnt`, opened when the target was found.
    pub fn mnt_ns_fd(&self) -> BorrowedFd<'_> {
        self.mnt_ns_fd.as_fd()
    }

    /// `/proc/PID/ns/user`, opened when the target was found.
    pub fn user_ns_fd(&self) -> BorrowedFd<'_> {
        self.user_ns_fd.as_fd()
    }

    /// The target's root directory (`/proc/PID/root`, `O_PATH`), opened when it was found.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// The target's root as a host path (valid while the process lives).
    pub fn root_path(&self) -> PathBuf {
        format!("/proc/{}/root", self.pid).into()
    }

    /// True while the process the target was named by still runs.
    pub fn is_alive(&self) -> bool {
        matches!(ProcStat::read(self.pid), Ok(s) if s.start_time == self.start_time && s.state != 'Z')
    }

    /// Every process in the target's mount namespace, now, with its threads, sorted by pid.
    /// Kernel threads and the calling process are left out.
    pub fn processes(&self) -> Result<Vec<Process>> {
        processes_in_mnt_ns(self.mnt_ns)
    }
}

/// Every user process whose mount namespace is `ns` (scanning /proc), except the caller.
pub fn processes_in_mnt_ns(ns: NsId) -> Result<Vec<Process>> {
    let self_pid = std::process::id();
    let mut out = Vec::new();
    for pid in procinfo::pids()? {
        if pid == self_pid {
            continue;
        }
        // Processes come and go while we scan: one that vanished is simply not in the list.
        // One we may not inspect (EACCES: ptrace access mode denied, e.g. a protected
        // supervisor) cannot be injected either; it is left out and logged.
        match process_in_ns(pid, ns) {
            Ok(Some(p)) => out.push(p),
            Ok(None) | Err(Error::NoSuchProcess { .. }) => {}
            Err(Error::Io { path, source })
                if matches!(
                    Errno::from_io_error(&source),
                    Some(Errno::ACCESS | Errno::PERM)
                ) =>
            {
                tracing::debug!(pid, path = %path.display(), "cannot inspect process, skipped");
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

fn process_in_ns(pid: u32, ns: NsId) -> Result<Option<Process>> {
    if NsId::of(pid, "mnt")? != ns {
        return Ok(None);
    }
    let stat = ProcStat::read(pid)?;
    if stat.is_kernel_thread() || stat.state == 'Z' {
        return Ok(None);
    }
    let comm_path = format!("/proc/{pid}/comm");
    let comm = fs::read_to_string(&comm_path).map_err(|e| proc_error(pid, &comm_path, e))?;
    Ok(Some(Process {
        pid,
        start_time: stat.start_time,
        comm: comm.trim_end_matches('\n').to_owned(),
        threads: threads(pid)?,
    }))
}

/// Every thread id of a process, sorted.
pub fn threads(pid: u32) -> Result<Vec<u32>> {
    let path = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&path).map_err(|e| proc_error(pid, &path, e))?;
    let mut tids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| proc_error(pid, &path, e))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// What `/proc/PID/fdinfo/FD` says that we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    /// The open flags (`O_*`).
    pub flags: i32,
    /// The file offset.
    pub pos: u64,
    /// The mount the file was opened through.
    pub mnt_id: u64,
}

impl FdInfo {
    /// Read `/proc/PID/fdinfo/FD`; `None` if it is gone or unreadable.
    pub fn read(pid: u32, fd: i32) -> Option<FdInfo> {
        let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let info = procinfo::parse_fdinfo(&text)?;
        Some(FdInfo {
            flags: info.flags,
            pos: info.pos,
            mnt_id: info.mnt_id,
        })
    }
}

/// Does `pid` still run (exists and is not a zombie)?
pub fn is_running(pid: u32) -> bool {
    procinfo::ProcStat::read(pid).is_ok_and(|s| s.is_alive())
}

/// Wait up to `timeout` for process `pid` to exit (true if it did, or did not exist). Waits on
/// a pidfd, never polls on a timer.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return true;
    };
    let Ok(fd) = pidfd_open(p, PidfdFlags::empty()) else {
        return true;
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut polls = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut polls, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// What we use of a container's OCI `config.json` (other fields are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OciConfig {
    #[serde(default)]
    pub root: Option<OciRoot>,
    #[serde(default)]
    pub linux: Option<OciLinux>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OciRoot {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OciLinux {
    #[serde(default)]
    pub namespaces: Vec<OciNamespace>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct OciNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

impl OciConfig {
    /// True when the config asks for a user namespace.
    pub fn has_user_ns(&self) -> bool {
        self.linux
            .as_ref()
            .is_some_and(|l| l.namespaces.iter().any(|n| n.kind == "user"))
    }
}

/// A containerd runtime v2 task: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`.
#[derive(Debug, Clone)]
pub struct ContainerdTask {
    pub id: String,
    pub namespace: String,
    /// The task (bundle) directory.
    pub dir: PathBuf,
    /// `init.pid`: the container's init process, as seen from the host.
    pub init_pid: u32,
    /// `address`: the shim's ttrpc address (empty if the file is absent).
    pub address: String,
    /// `config.json`: the OCI runtime spec.
    pub config: OciConfig,
}

impl ContainerdTask {
    /// Find a container's task in containerd's default state directory.
    pub fn find(namespace: &str, id: &str) -> Result<ContainerdTask> {
        ContainerdTask::find_in(Path::new(CONTAINERD_STATE_DIR), namespace, id)
    }

    /// Find a container's task under `state_dir` (containerd's `--state`).
    pub fn find_in(state_dir: &Path, namespace: &str, id: &str) -> Result<ContainerdTask> {
        check_name("namespace", namespace)?;
        check_name("id", id)?;
        let dir = state_dir
            .join(CONTAINERD_TASK_SUBDIR)
            .join(namespace)
            .join(id);
        if !dir.is_dir() {
            return Err(Error::UnknownContainer {
                id: id.into(),
                namespace: namespace.into(),
                dir,
            });
        }
        let pid_path = dir.join("init.pid");
        let pid_text = match fs::read_to_string(&pid_path) {
            // A task directory without init.pid: created, never started (or being torn down).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::ContainerNotRunning {
                    id: id.into(),
                    namespace: namespace.into(),
                    pid: 0,
                });
            }
            r => r.map_err(|e| Error::io(&pid_path, e))?,
        };
        let init_pid = pid_text.trim().parse().map_err(|_| Error::Malformed {
            path: pid_path.clone(),
            reason: format!("not a pid: {:?}", pid_text.trim()),
        })?;
        let address = match fs::read_to_string(dir.join("address")) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(dir.join("address"), e)),
        };
        let config_path = dir.join("config.json");
        let config = match fs::read(&config_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::Json {
                path: config_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => OciConfig::default(),
            Err(e) => return Err(Error::io(&config_path, e)),
        };
        Ok(ContainerdTask {
            id: id.into(),
            namespace: namespace.into(),
            dir,
            init_pid,
            address,
            config,
        })
    }
}

/// containerd ids and namespaces never hold `/` and are not `.`/`..`; refusing them here keeps
/// a name from pointing outside the task directory.
fn check_name(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\0']) {
        return Err(Error::InvalidContainerName {
            what,
            value: value.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_a_target_in_our_namespaces() {
        // Our own child: a target in the caller's namespaces.
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let t = Target::from_pid(pid).expect("target");
        assert!(t.shares_our_mnt_ns);
        assert!(!t.own_user_ns);
        assert_eq!(t.mnt_ns, NsId::of(std::process::id(), "mnt").expect("ns"));
        let procs = t.processes().expect("scan");
        let p = procs.iter().find(|p| p.pid == pid).expect("child listed");
        assert_eq!(p.threads, vec![pid]);
        assert_eq!(p.comm, "sleep");
        assert!(procs.iter().all(|p| p.pid != std::process::id()));
        assert!(t.is_alive());
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!t.is_alive());
        assert!(matches!(
            Target::from_pid(pid),
            Err(Error::NoSuchProcess { pid: p }) if p == pid
        ));
    }

    #[test]
    fn dead_pid_is_one_clear_line() {
        // pid_max is at most 2^22: this pid cannot exist.
        let e = Target::from_pid(4_194_305).expect_err("no such pid");
        assert_eq!(e.to_string(), "no process with pid 4194305");
    }

    #[test]
    fn container_names_cannot_escape_the_task_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (ns, id) in [
            ("default", "../x"),
            ("..", "x"),
            ("default", ""),
            ("a/b", "x"),
        ] {
            assert!(matches!(
                ContainerdTask::find_in(dir.path(), ns, id),
                Err(Error::InvalidContainerName { .. })
            ));
        }
        let e = ContainerdTask::find_in(dir.path(), "default", "nope").expect_err("unknown");
        assert!(
            e.to_string()
                .starts_with("unknown container \"nope\" in containerd namespace \"default\""),
            "{e}"
        );
    }
}
