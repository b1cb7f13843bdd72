//! The setuid and setgid bits after writes, truncates, fallocates and chowns, compared with a
//! native directory: a write by a user who may not keep them must clear them on the backing
//! file, both for a file a rule can touch (direct I/O: the server does the write, as root) and
//! for one no rule touches (kernel passthrough). Needs root, /dev/fuse and uid 1000.

mod fs_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use chaosfs::Config;
use chaosfs::OpenMode;
use fs_support::*;

/// A rule that selects the data of `touched*` files but never fires: they are opened with direct
/// I/O, every other file in kernel passthrough.
const TOUCH: &str = r#"{"rules": [{"ops": ["read", "write"], "glob": "touched*",
                                    "errno": "EIO", "percent": 0}]}"#;

/// Root-owned modes whose bits a write may clear: suid, setgid with group exec, both. Not
/// setgid without group exec (02767): natively a writer outside the file's group clears it,
/// while FUSE keeps it (the kernel's own rule for FUSE files, `fuse_setattr`, which ChaosFS
/// follows on the requests it serves: it does not know the caller's supplementary groups).
const MODES: [u32; 3] = [0o4777, 0o2777, 0o6777];

/// What is done to the file, as whom. `$F` is the file.
const CASES: &[(&str, u32, &str)] = &[
    ("write", 1000, r#"printf x 1<>"$F""#),
    ("truncate", 1000, r#"truncate -s 1 "$F""#),
    ("open O_TRUNC", 1000, r#": >"$F""#),
    ("fallocate", 1000, r#"fallocate -l 8192 "$F""#),
    ("write as root", 0, r#"printf x 1<>"$F""#),
    ("truncate as root", 0, r#"truncate -s 1 "$F""#),
    ("open O_TRUNC as root", 0, r#": >"$F""#),
    ("chown as root", 0, r#"chown 1000 "$F""#),
];

/// Make `path` a root-owned file of `mode` with some content (through whatever is mounted).
fn prepare(path: &Path, mode: u32) {
    fs::write(path, b"0123456789").expect("create file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    assert_eq!(
        fs::metadata(path).expect("stat").mode() & 0o7777,
        mode,
        "{}",
        path.display()
    );
}

/// Run case `script` as `uid` on `path`; the mode afterwards (as seen at `path`).
fn mode_after(path: &Path, uid: u32, script: &str) -> u32 {
    let script = format!("F='{}'; {script}", path.display());
    let st = run_as(uid, uid, &script);
    assert!(st.success(), "{script} as uid {uid}: {st}");
    fs::metadata(path).expect("stat after").mode() & 0o7777
}

#[test]
fn suid_and_sgid_are_cleared_as_natively() {
    let native = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(native.path(), fs::Permissions::from_mode(0o777)).expect("chmod dir");
    let m = mount_with(rules(TOUCH), Config::default(), |d| {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).expect("chmod dir");
    });
    let mut wrong = Vec::new();
    for (i, (what, uid, script)) in CASES.iter().enumerate() {
        for mode in MODES {
            let name = format!("{i}-{mode:o}");
            let n = native.path().join(&name);
            prepare(&n, mode);
            let want = mode_after(&n, *uid, script);
            for kind in ["touched", "untouched"] {
                let f = m.join(&format!("{kind}-{name}"));
                prepare(&f, mode);
                let through = mode_after(&f, *uid, script);
                let backing = fs::metadata(m.backing(&format!("{kind}-{name}")))
                    .expect("stat backing")
                    .mode()
                    & 0o7777;
                if (through, backing) != (want, want) {
                    wrong.push(format!(
                        "{what} on {mode:04o} ({kind}): native {want:04o}, ChaosFS \
                         {through:04o}, backing {backing:04o}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "differs from native:\n{}",
        wrong.join("\n")
    );
}

/// The two kinds of files really are opened the two ways (else the test above proves little).
#[test]
fn the_rule_splits_files_into_direct_and_passthrough() {
    let m = mount_with(rules(TOUCH), Config::default(), |d| {
        fs::write(d.join("touched"), b"x").expect("seed");
        fs::write(d.join("untouched"), b"x").expect("seed");
    });
    for (name, want) in [
        ("touched", OpenMode::Direct),
        ("untouched", OpenMode::Passthrough),
    ] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join(name))
            .expect("open");
        let ino = f.metadata().expect("fstat").ino();
        assert_eq!(m.server().open_mode(ino), Some(want), "{name}");
    }
}
