//! A busybox root filesystem for containers.

use std::path::Path;

/// Make `rootfs` a minimal root filesystem: the static busybox at /bin/busybox, a symlink to it
/// in /bin for each of `applets`, and the (empty) directories `dirs`. Needs the Debian package
/// busybox-static; the test fails without it.
pub fn busybox_rootfs(rootfs: &Path, dirs: &[&str], applets: &[&str]) {
    for d in dirs.iter().chain(&["bin"]) {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir in the rootfs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("applet symlink");
    }
}
