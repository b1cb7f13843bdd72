//! mount(2) and umount2(2).

use std::ffi::CStr;
use std::io;

use super::cvt;

/// `mount(source, target, fstype, flags, data)`.
pub(crate) fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: u64,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: all strings are NUL-terminated and live for the call; `data` is a string option
    // list, which is what the fuse file system type parses.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags as libc::c_ulong,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// `umount2(target, flags)`.
pub(crate) fn umount2(target: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}
