//! Changes made to the backing directory from outside the mount (another process writing the
//! directory underneath) are seen inside although entries and attributes are cached for an
//! hour: the server watches the backing file system (fanotify) and invalidates the kernel's
//! cache. A file a rule can touch keeps the rule's attributes.

mod fs_support;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use chaosfs::Config;
use chaosfs::rules::RuleSet;
use fs_support::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Entries and attributes cached for an hour whether or not the watch runs: only an
/// invalidation can show an outside change.
fn hour_cache() -> Config {
    Config {
        ttl: HOUR,
        watched_ttl: HOUR,
        ..Config::default()
    }
}

/// Wait (up to 10 s, far below the hour the kernel may cache) for `seen` to hold for `p` as
/// stat through the mount shows it; the last stat result.
fn until(p: &Path, seen: impl Fn(&std::io::Result<fs::Metadata>) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if seen(&fs::symlink_metadata(p)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mode(m: &std::io::Result<fs::Metadata>) -> Option<u32> {
    m.as_ref().ok().map(|m| m.permissions().mode() & 0o7777)
}

fn gone(m: &std::io::Result<fs::Metadata>) -> bool {
    m.as_ref().is_err_and(|e| e.kind() == ErrorKind::NotFound)
}

#[test]
fn outside_changes_are_seen_inside_despite_an_hour_of_cache() {
    let m = mount_with(RuleSet::empty(), hour_cache(), |d| {
        fs::write(d.join("f"), b"old").expect("write f");
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(d.join("gone"), b"x").expect("write gone");
        fs::write(d.join("moved"), b"x").expect("write moved");
        fs::create_dir(d.join("sub")).expect("mkdir");
    });
    assert!(
        m.server().watching(),
        "the watch must run on the test's /tmp"
    );
    // Everything inside is looked up and cached now, the missing names as negative entries.
    assert_eq!(mode(&fs::metadata(m.join("f"))), Some(0o644));
    assert_eq!(fs::metadata(m.join("f")).expect("stat f").len(), 3);
    assert!(fs::metadata(m.join("gone")).is_ok());
    assert!(fs::metadata(m.join("moved")).is_ok());
    assert!(gone(&fs::metadata(m.join("new"))));
    assert!(gone(&fs::metadata(m.join("moved2"))));
    assert!(gone(&fs::metadata(m.join("sub/inner"))));

    // Another process changes the directory underneath.
    let mut py = Py::start();
    let b = |rel: &str| py_path(&m.backing(rel));
    py.ok(&format!("os.chmod({}, 0o600)", b("f")));
    assert!(
        until(&m.join("f"), |s| mode(s) == Some(0o600)),
        "outside chmod not seen"
    );
    py.ok(&format!(
        "open({}, 'w').write('new content, longer')",
        b("f")
    ));
    assert!(
        until(&m.join("f"), |s| s.as_ref().is_ok_and(|s| s.len() == 19)),
        "outside write (size) not seen"
    );
    assert_eq!(
        fs::read(m.join("f")).expect("read f"),
        b"new content, longer"
    );
    py.ok(&format!("open({}, 'w').write('n')", b("new")));
    assert!(
        until(&m.join("new"), |s| s.is_ok()),
        "outside create not seen"
    );
    py.ok(&format!("os.mkdir({})", b("sub/inner")));
    assert!(
        until(&m.join("sub/inner"), |s| s
            .as_ref()
            .is_ok_and(|s| s.is_dir())),
        "outside mkdir in a subdirectory not seen"
    );
    py.ok(&format!("os.unlink({})", b("gone")));
    assert!(until(&m.join("gone"), gone), "outside unlink not seen");
    py.ok(&format!("os.rename({}, {})", b("moved"), b("moved2")));
    assert!(
        until(&m.join("moved"), gone),
        "outside rename: old name still seen"
    );
    assert!(
        until(&m.join("moved2"), |s| s.is_ok()),
        "outside rename: new name not seen"
    );
    assert!(m.server().outside_changes() > 0);
    drop(py);
    m.unmount();
}

#[test]
fn a_rule_touched_file_keeps_the_rules_attributes_after_an_outside_change() {
    let m = mount_with(
        rules(r#"{"rules":[{"glob":"odd","attr":{"uid":4242,"perm":"0600"}}]}"#),
        hour_cache(),
        |d| {
            fs::write(d.join("odd"), b"x").expect("write odd");
            fs::write(d.join("plain"), b"x").expect("write plain");
            fs::set_permissions(d.join("plain"), fs::Permissions::from_mode(0o644)).expect("chmod");
        },
    );
    assert!(m.server().watching());
    let odd = fs::metadata(m.join("odd")).expect("stat odd");
    assert_eq!((odd.uid(), odd.mode() & 0o7777), (4242, 0o600));
    assert_eq!(mode(&fs::metadata(m.join("plain"))), Some(0o644));
    let mut py = Py::start();
    py.ok(&format!("os.chmod({}, 0o755)", py_path(&m.backing("odd"))));
    py.ok(&format!(
        "os.chmod({}, 0o700)",
        py_path(&m.backing("plain"))
    ));
    // The plain file's change is seen (the invalidation came); the rule still decides the
    // touched file's attributes.
    assert!(until(&m.join("plain"), |s| mode(s) == Some(0o700)));
    let odd = fs::metadata(m.join("odd")).expect("stat odd");
    assert_eq!((odd.uid(), odd.mode() & 0o7777), (4242, 0o600));
    assert_eq!(
        fs::metadata(m.backing("odd")).expect("stat under").mode() & 0o7777,
        0o755
    );
    drop(py);
    m.unmount();
}
