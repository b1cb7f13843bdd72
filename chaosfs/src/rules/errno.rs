//! Errno names: every Linux errno the `libc` crate defines, by its C name.

use std::fmt;

/// An errno value that knows the name it was given by (aliases such as `EWOULDBLOCK` keep
/// their own name; they fail requests with the same code as `EAGAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno {
    code: i32,
    name: &'static str,
}

macro_rules! errno_table {
    ($($name:ident,)*) => {
        /// `(name, code)` for every errno, canonical names before their aliases.
        const TABLE: &[(&str, i32)] = &[$((stringify!($name), libc::$name),)*];
    };
}

errno_table! {
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    ENOEXEC,
    EBADF,
    ECHILD,
    EAGAIN,
    EWOULDBLOCK,
    ENOMEM,
    EACCES,
    EFAULT,
    ENOTBLK,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    EPIPE,
    EDOM,
    ERANGE,
    EDEADLK,
    EDEADLOCK,
    ENAMETOOLONG,
    ENOLCK,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENOMSG,
    EIDRM,
    ECHRNG,
    EL2NSYNC,
    EL3HLT,
    EL3RST,
    ELNRNG,
    EUNATCH,
    ENOCSI,
    EL2HLT,
    EBADE,
    EBADR,
    EXFULL,
    ENOANO,
    EBADRQC,
    EBADSLT,
    EBFONT,
    ENOSTR,
    ENODATA,
    ETIME,
    ENOSR,
    ENONET,
    ENOPKG,
    EREMOTE,
    ENOLINK,
    EADV,
    ESRMNT,
    ECOMM,
    EPROTO,
    EMULTIHOP,
    EDOTDOT,
    EBADMSG,
    EOVERFLOW,
    ENOTUNIQ,
    EBADFD,
    EREMCHG,
    ELIBACC,
    ELIBBAD,
    ELIBSCN,
    ELIBMAX,
    ELIBEXEC,
    EILSEQ,
    ERESTART,
    ESTRPIPE,
    EUSERS,
    ENOTSOCK,
    EDESTADDRREQ,
    EMSGSIZE,
    EPROTOTYPE,
    ENOPROTOOPT,
    EPROTONOSUPPORT,
    ESOCKTNOSUPPORT,
    EOPNOTSUPP,
    ENOTSUP,
    EPFNOSUPPORT,
    EAFNOSUPPORT,
    EADDRINUSE,
    EADDRNOTAVAIL,
    ENETDOWN,
    ENETUNREACH,
    ENETRESET,
    ECONNABORTED,
    ECONNRESET,
    ENOBUFS,
    EISCONN,
    ENOTCONN,
    ESHUTDOWN,
    ETOOMANYREFS,
    ETIMEDOUT,
    ECONNREFUSED,
    EHOSTDOWN,
    EHOSTUNREACH,
    EALREADY,
    EINPROGRESS,
    ESTALE,
    EUCLEAN,
    ENOTNAM,
    ENAVAIL,
    EISNAM,
    EREMOTEIO,
    EDQUOT,
    ENOMEDIUM,
    EMEDIUMTYPE,
    ECANCELED,
    ENOKEY,
    EKEYEXPIRED,
    EKEYREVOKED,
    EKEYREJECTED,
    EOWNERDEAD,
    ENOTRECOVERABLE,
    ERFKILL,
    EHWPOISON,
}

impl Errno {
    /// Look a name up (`"EIO"`; lower case is accepted too). `None` if Linux has no such errno.
    pub fn from_name(name: &str) -> Option<Errno> {
        TABLE
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(name, code)| Errno { code, name })
    }

    /// The errno for a code, under its canonical name.
    pub fn from_code(code: i32) -> Option<Errno> {
        TABLE
            .iter()
            .find(|(_, c)| *c == code)
            .map(|&(name, code)| Errno { code, name })
    }

    /// The value a failed request returns (positive, as `errno` holds it).
    pub fn code(self) -> i32 {
        self.code
    }

    /// The C name, upper case.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Every known name, in table order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        TABLE.iter().map(|(n, _)| *n)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl serde::Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> serde::Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Errno;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an errno name such as \"EIO\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Errno, E> {
                Errno::from_name(s).ok_or_else(|| E::custom(format!("unknown errno {s:?}")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes() {
        let eio = Errno::from_name("EIO").expect("EIO");
        assert_eq!((eio.code(), eio.name()), (libc::EIO, "EIO"));
        assert_eq!(
            Errno::from_name("enospc").map(Errno::code),
            Some(libc::ENOSPC)
        );
        let ew = Errno::from_name("EWOULDBLOCK").expect("alias");
        assert_eq!((ew.code(), ew.name()), (libc::EAGAIN, "EWOULDBLOCK"));
        assert_eq!(
            Errno::from_code(libc::EAGAIN).map(Errno::name),
            Some("EAGAIN")
        );
        assert_eq!(Errno::from_name("EIOO"), None);
        assert_eq!(Errno::from_name(""), None);
    }

    #[test]
    fn the_table_covers_what_users_ask_for() {
        for name in [
            "EIO",
            "ENOSPC",
            "EDQUOT",
            "EROFS",
            "EACCES",
            "EPERM",
            "EINTR",
            "EAGAIN",
            "ENOENT",
            "EEXIST",
            "EBUSY",
            "ETIMEDOUT",
            "ENOTCONN",
            "EFBIG",
            "EMFILE",
            "ENFILE",
            "ENAMETOOLONG",
            "ENOTEMPTY",
            "EXDEV",
            "EBADF",
            "EINVAL",
            "ESTALE",
            "EHWPOISON",
            "ENOTSUP",
            "EOPNOTSUPP",
            "EDEADLOCK",
            "ENODATA",
            "EOVERFLOW",
            "ELOOP",
        ] {
            assert!(Errno::from_name(name).is_some(), "{name} missing");
        }
        assert!(Errno::names().count() > 130);
        // Every code is positive and names are unique.
        let mut seen = std::collections::HashSet::new();
        for &(name, code) in TABLE {
            assert!(code > 0, "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
    }
}
