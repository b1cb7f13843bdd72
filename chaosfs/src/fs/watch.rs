//! Changes made to the backing files from outside the mount (the host, another container on the
//! volume): a fanotify group with a `FAN_MARK_FILESYSTEM` mark on the backing file system,
//! reporting file handles (`FAN_REPORT_FID | FAN_REPORT_DIR_FID | FAN_REPORT_NAME`). Each event
//! names the changed object and its directory entry by file handle; the handle is looked up in
//! the inode table ([`super::inode::InodeTable::by_handle`]) and the kernel's cached attributes
//! (and data) or entry are invalidated (`FUSE_NOTIFY_INVAL_INODE` / `_ENTRY`). While the watch
//! runs, entries and attributes no rule can touch are cached for [`FsConfig::watched_ttl`]
//! instead of [`FsConfig::ttl`].
//!
//! Changes made by the server itself (through the mount) are skipped: the kernel already knows
//! them (it updates or drops its cache for every write, setattr, create, unlink and rename it
//! sends). Events are attributed by process, so an in-process test must change files from a
//! child process to count as "outside".
//!
//! [`FsConfig::watched_ttl`]: super::FsConfig::watched_ttl
//! [`FsConfig::ttl`]: super::FsConfig::ttl

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Weak;
use std::thread::JoinHandle;

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use rustix::event::{PollFd, PollFlags};

use super::FsInner;

/// `statfs` magic numbers of local file systems whose every change passes through this kernel
/// (so fanotify sees it). A network or FUSE file system changed from elsewhere reports nothing.
const LOCAL_FS: &[i64] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
    0xCA45_1A4E, // bcachefs
];

const FAN_EVENT_INFO_TYPE_FID: u8 = 1;
const FAN_EVENT_INFO_TYPE_DFID_NAME: u8 = 2;
const FAN_EVENT_INFO_TYPE_DFID: u8 = 3;
const METADATA_LEN: usize = 24;

/// What one fanotify event says changed.
#[derive(Debug)]
pub(crate) struct Change<'a> {
    pub mask: MaskFlags,
    /// The changed object's file handle (type, bytes).
    pub object: Option<(i32, &'a [u8])>,
    /// Its directory's file handle and, for an event about a name, the name.
    pub dir: Option<(i32, &'a [u8], &'a [u8])>,
}

/// The running watch: its thread ends when this is dropped.
pub(crate) struct Watcher {
    /// Write end of a pipe the thread polls: closing it ends the thread.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start watching the file system of `root` (the backing directory) for `fs`. Errors say why
/// the watch cannot run (not a local file system, fanotify refused).
pub(crate) fn start(root: &OwnedFd, fs: Weak<FsInner>) -> io::Result<Watcher> {
    let sfs = rustix::fs::fstatfs(root).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion, reason = "f_type is i64 or u32 by target")]
    let kind = i64::from(sfs.f_type);
    if !LOCAL_FS.contains(&kind) {
        return Err(io::Error::other(format!(
            "backing file system (type {kind:#x}) is not a local one known to report every change"
        )));
    }
    let flags = InitFlags::FAN_CLASS_NOTIF
        | InitFlags::FAN_CLOEXEC
        | InitFlags::FAN_NONBLOCK
        | InitFlags::FAN_UNLIMITED_QUEUE
        | InitFlags::from_bits_retain(
            libc::FAN_REPORT_FID | libc::FAN_REPORT_DIR_FID | libc::FAN_REPORT_NAME,
        );
    let group = Fanotify::init(flags, EventFFlags::O_RDONLY).map_err(io::Error::from)?;
    let mask = MaskFlags::FAN_MODIFY
        | MaskFlags::FAN_ATTRIB
        | MaskFlags::FAN_CREATE
        | MaskFlags::FAN_DELETE
        | MaskFlags::FAN_MOVED_FROM
        | MaskFlags::FAN_MOVED_TO
        | MaskFlags::FAN_DELETE_SELF
        | MaskFlags::FAN_MOVE_SELF
        | MaskFlags::FAN_ONDIR;
    group
        .mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            mask,
            root.as_fd(),
            Some("."),
        )
        .map_err(io::Error::from)?;
    let (stop_r, stop_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io::Error::from)?;
    let thread = std::thread::Builder::new()
        .name("chaosfs-watch".into())
        .spawn(move || run(&group, &stop_r, &fs))?;
    Ok(Watcher {
        stop: Some(stop_w),
        thread: Some(thread),
    })
}

fn run(group: &Fanotify, stop: &OwnedFd, fs: &Weak<FsInner>) {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds = [
            PollFd::new(group, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("watch of outside changes ended: poll: {e}");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        loop {
            let n = match rustix::io::read(group, &mut buf) {
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                Err(e) => {
                    tracing::warn!("watch of outside changes ended: read: {e}");
                    return;
                }
            };
            let Some(fs) = fs.upgrade() else { return };
            for_each_event(&buf[..n], |pid, change| {
                if pid != me {
                    fs.outside_change(&change);
                }
            });
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Call `f(pid, change)` for each event in `buf` (what one `read` of the group returned):
/// `struct fanotify_event_metadata` followed by its info records, each a
/// `struct fanotify_event_info_fid` (header, fsid, `struct file_handle`, then a NUL-terminated
/// name for the `DFID_NAME` kind).
pub(crate) fn for_each_event(mut buf: &[u8], mut f: impl FnMut(i32, Change<'_>)) {
    while buf.len() >= METADATA_LEN {
        let (Some(len), Some(meta_len), Some(mask), Some(pid)) = (
            u32_at(buf, 0).and_then(|n| usize::try_from(n).ok()),
            u16_at(buf, 6).map(usize::from),
            u64_at(buf, 8),
            i32_at(buf, 20),
        ) else {
            return;
        };
        if len < METADATA_LEN || len > buf.len() || meta_len > len {
            return;
        }
        let mut change = Change {
            mask: MaskFlags::from_bits_retain(mask),
            object: None,
            dir: None,
        };
        let mut rec = &buf[meta_len..len];
        while rec.len() >= 4 {
            let kind = rec[0];
            let Some(rlen) = u16_at(rec, 2).map(usize::from) else {
                break;
            };
            if rlen < 4 || rlen > rec.len() {
                break;
            }
            let body = &rec[4..rlen];
            // fsid (8 bytes), then struct file_handle.
            if let (Some(hlen), Some(htype)) = (
                u32_at(body, 8).and_then(|n| usize::try_from(n).ok()),
                i32_at(body, 12),
            ) && let Some(handle) = body.get(16..16 + hlen)
            {
                match kind {
                    FAN_EVENT_INFO_TYPE_FID => change.object = Some((htype, handle)),
                    FAN_EVENT_INFO_TYPE_DFID => change.dir = Some((htype, handle, &[])),
                    FAN_EVENT_INFO_TYPE_DFID_NAME => {
                        let rest = &body[16 + hlen..];
                        let name = rest.split(|&c| c == 0).next().unwrap_or(&[]);
                        change.dir = Some((htype, handle, name));
                    }
                    _ => {}
                }
            }
            rec = &rec[rlen..];
        }
        f(pid, change);
        buf = &buf[len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One info record: header, fsid, `struct file_handle`, then `name` (with its NUL) if any.
    fn record(kind: u8, htype: i32, handle: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![7u8; 8]; // fsid
        body.extend(u32::try_from(handle.len()).unwrap_or(0).to_ne_bytes());
        body.extend(htype.to_ne_bytes());
        body.extend(handle);
        if let Some(n) = name {
            body.extend(n);
            body.push(0);
        }
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let mut r = vec![kind, 0];
        r.extend(u16::try_from(body.len() + 4).unwrap_or(0).to_ne_bytes());
        r.extend(body);
        r
    }

    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let len = METADATA_LEN + records.iter().map(Vec::len).sum::<usize>();
        let mut e = Vec::new();
        e.extend(u32::try_from(len).unwrap_or(0).to_ne_bytes());
        e.extend([3u8, 0]);
        e.extend(24u16.to_ne_bytes());
        e.extend(mask.to_ne_bytes());
        e.extend((-1i32).to_ne_bytes());
        e.extend(pid.to_ne_bytes());
        for r in records {
            e.extend(r);
        }
        e
    }

    #[test]
    fn events_with_dir_name_and_object_records_parse() {
        let create = MaskFlags::FAN_CREATE.bits();
        let mut buf = event(
            create,
            42,
            &[
                record(
                    FAN_EVENT_INFO_TYPE_DFID_NAME,
                    1,
                    &[1, 2, 3, 4],
                    Some(b"new"),
                ),
                record(
                    FAN_EVENT_INFO_TYPE_FID,
                    1,
                    &[5, 6, 7, 8, 9, 10, 11, 12],
                    None,
                ),
            ],
        );
        buf.extend(event(
            MaskFlags::FAN_ATTRIB.bits(),
            7,
            &[record(FAN_EVENT_INFO_TYPE_FID, 2, &[9; 12], None)],
        ));
        buf.extend([1, 2, 3]); // a truncated tail is ignored
        let mut seen = Vec::new();
        for_each_event(&buf, |pid, c| {
            seen.push((
                pid,
                c.mask.bits(),
                c.object.map(|(t, h)| (t, h.to_vec())),
                c.dir.map(|(t, h, n)| (t, h.to_vec(), n.to_vec())),
            ));
        });
        assert_eq!(
            seen,
            vec![
                (
                    42,
                    create,
                    Some((1, vec![5, 6, 7, 8, 9, 10, 11, 12])),
                    Some((1, vec![1, 2, 3, 4], b"new".to_vec()))
                ),
                (
                    7,
                    MaskFlags::FAN_ATTRIB.bits(),
                    Some((2, vec![9; 12])),
                    None
                ),
            ]
        );
    }

    #[test]
    fn a_record_longer_than_its_event_stops_the_parse() {
        let mut e = event(
            MaskFlags::FAN_MODIFY.bits(),
            1,
            &[record(FAN_EVENT_INFO_TYPE_FID, 1, &[1; 8], None)],
        );
        // The record claims more bytes than the event holds.
        e[METADATA_LEN + 2] = 0xff;
        let mut n = 0;
        for_each_event(&e, |_, c| {
            assert!(c.object.is_none());
            n += 1;
        });
        assert_eq!(n, 1);
    }
}
