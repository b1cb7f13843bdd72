//! Raw system calls. Every `unsafe` block of the crate lives under this module; the rest of the
//! crate sees safe functions that return `io::Result` carrying the real errno.

pub(crate) mod file;
pub(crate) mod fuse_dev;
pub(crate) mod lock;
pub(crate) mod mount;
pub(crate) mod thread;
pub(crate) mod uring;

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;

/// Turn a `-1`-on-error return value into `io::Result`, capturing `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// For calls that return a non-negative count or id, or -1 with `errno` set (`read` and
/// `splice` with `ssize_t`, `fcntl(F_SETPIPE_SZ)` and the FUSE backing ioctl with `int`): the
/// value as the unsigned type the caller uses. `U` must hold every non-negative `T`, so the
/// conversion fails only for -1, the one negative value these calls return.
pub(crate) fn cvt_unsigned<T: TryInto<U>, U>(ret: T) -> io::Result<U> {
    ret.try_into().map_err(|_| io::Error::last_os_error())
}

/// Like [`cvt`] for calls returning `long`.
pub(crate) fn cvt_long(ret: i64) -> io::Result<i64> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Names up to this length are converted to C strings on the stack.
const STACK_NAME: usize = 256;

/// Run `f` with `name` as a NUL-terminated C string, without allocating for ordinary names.
/// A name containing a NUL byte cannot exist on Linux: EINVAL.
pub(crate) fn with_cstr<T>(name: &OsStr, f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    let bytes = name.as_bytes();
    if bytes.len() < STACK_NAME {
        let mut buf = [0u8; STACK_NAME];
        buf[..bytes.len()].copy_from_slice(bytes);
        let c = CStr::from_bytes_with_nul(&buf[..=bytes.len()])
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        f(c)
    } else {
        let c = std::ffi::CString::new(bytes)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        f(&c)
    }
}

/// Decimal representation of an fd number as a C string (the name of its entry in `/proc/self/fd`).
pub(crate) struct FdName {
    buf: [u8; 16],
}

impl FdName {
    pub(crate) fn new(fd: i32) -> Self {
        let mut digits = [0u8; 16];
        let mut n = fd.unsigned_abs();
        let mut i = 0;
        loop {
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            i += 1;
            if n == 0 || i == 15 {
                break;
            }
        }
        let mut buf = [0u8; 16];
        for (j, d) in digits[..i].iter().rev().enumerate() {
            buf[j] = *d;
        }
        FdName { buf }
    }

    pub(crate) fn as_cstr(&self) -> &CStr {
        // The buffer holds `len` ASCII digits followed by zeros, so a NUL exists at `len`.
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names() {
        assert_eq!(FdName::new(0).as_cstr(), c"0");
        assert_eq!(FdName::new(1234).as_cstr(), c"1234");
    }

    #[test]
    fn cstr_conversion() {
        let r = with_cstr(OsStr::new("abc"), |c| Ok(c.to_bytes().len()));
        assert_eq!(r.ok(), Some(3));
        let long = "x".repeat(300);
        let r = with_cstr(OsStr::new(&long), |c| Ok(c.to_bytes().len()));
        assert_eq!(r.ok(), Some(300));
        assert!(with_cstr(OsStr::new("a\0b"), |_| Ok(())).is_err());
    }
}
