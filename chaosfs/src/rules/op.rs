//! Operation names: the FUSE requests ChaosFS serves, named as users know them.

/// One operation ChaosFS serves. Names are lower case in specs: the FUSE name, plus
/// syscall-level aliases (see [`Op::parse_names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Statfs,
    Access,
    Getxattr,
    Setxattr,
    Listxattr,
    Removexattr,
    Fallocate,
    Lseek,
    CopyFileRange,
    Ioctl,
}

impl Op {
    /// Every op, in declaration order.
    pub const ALL: [Op; 32] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Create,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Access,
        Op::Getxattr,
        Op::Setxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
        Op::Ioctl,
    ];

    /// The canonical (FUSE) name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Create => "create",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Access => "access",
            Op::Getxattr => "getxattr",
            Op::Setxattr => "setxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
            Op::Ioctl => "ioctl",
        }
    }

    /// The ops a user-facing name stands for: the canonical names, plus syscall-level aliases
    /// (`stat`, `fstat`, `lstat`, `statx` → getattr; `open` → open + create; `close` → flush;
    /// `fdatasync` → fsync; `chmod`, `chown`, `truncate`, `ftruncate`, `utimes`, `utimensat` →
    /// setattr; `getdents`/`getdents64` → readdir; `mkfifo` → mknod; `rename2`/`renameat2` →
    /// rename; `setxattr`... as is). `None` for an unknown name.
    pub fn parse_names(name: &str) -> Option<&'static [Op]> {
        Some(match name {
            "stat" | "fstat" | "lstat" | "statx" | "newfstatat" => &[Op::Getattr],
            "open" | "openat" => &[Op::Open, Op::Create],
            "close" => &[Op::Flush],
            "fdatasync" | "sync_file_range" => &[Op::Fsync],
            "chmod" | "fchmod" | "chown" | "fchown" | "lchown" | "truncate" | "ftruncate"
            | "utimes" | "utimensat" | "utime" => &[Op::Setattr],
            "getdents" | "getdents64" | "readdirplus" => &[Op::Readdir],
            "mkfifo" => &[Op::Mknod],
            "renameat" | "renameat2" => &[Op::Rename],
            "linkat" => &[Op::Link],
            "unlinkat" => &[Op::Unlink],
            "mkdirat" => &[Op::Mkdir],
            "symlinkat" => &[Op::Symlink],
            "readlinkat" => &[Op::Readlink],
            "pread" | "pread64" | "readv" | "preadv" => &[Op::Read],
            "pwrite" | "pwrite64" | "writev" | "pwritev" => &[Op::Write],
            "statfs" | "fstatfs" => &[Op::Statfs],
            "faccessat" => &[Op::Access],
            "lgetxattr" | "fgetxattr" => &[Op::Getxattr],
            "lsetxattr" | "fsetxattr" => &[Op::Setxattr],
            "llistxattr" | "flistxattr" => &[Op::Listxattr],
            "lremovexattr" | "fremovexattr" => &[Op::Removexattr],
            _ => {
                let i = Op::ALL.iter().position(|op| op.name() == name)?;
                std::slice::from_ref(&Op::ALL[i])
            }
        })
    }
}

/// A set of ops as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSet(u64);

impl OpSet {
    /// Every op.
    pub const ALL: OpSet = OpSet((1u64 << Op::ALL.len()) - 1);
    /// No op.
    pub const EMPTY: OpSet = OpSet(0);

    /// The set of the given ops (usable in constants).
    pub const fn of(ops: &[Op]) -> OpSet {
        let mut bits = 0u64;
        let mut i = 0;
        while i < ops.len() {
            bits |= 1 << ops[i] as u8;
            i += 1;
        }
        OpSet(bits)
    }

    /// Ops in either set.
    pub const fn union(self, other: OpSet) -> OpSet {
        OpSet(self.0 | other.0)
    }

    /// Ops in `self` but not in `other`.
    pub const fn difference(self, other: OpSet) -> OpSet {
        OpSet(self.0 & !other.0)
    }

    /// True if every op of `self` is in `other`.
    pub const fn is_subset(self, other: OpSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The ops of the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Op> {
        Op::ALL.into_iter().filter(move |&op| self.contains(op))
    }

    pub fn insert(&mut self, op: Op) {
        self.0 |= 1 << op as u8;
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op as u8) != 0
    }

    pub fn intersects(self, other: OpSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Op> for OpSet {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        let mut set = OpSet::EMPTY;
        for op in iter {
            set.insert(op);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_name_parses_to_itself() {
        for op in Op::ALL {
            let ops = Op::parse_names(op.name()).unwrap_or_default();
            assert!(ops.contains(&op), "{} does not select itself", op.name());
        }
    }

    #[test]
    fn aliases_and_unknown_names() {
        assert_eq!(Op::parse_names("stat"), Some(&[Op::Getattr][..]));
        assert_eq!(Op::parse_names("open"), Some(&[Op::Open, Op::Create][..]));
        assert_eq!(Op::parse_names("wrtie"), None);
    }

    #[test]
    fn opset_membership() {
        let set: OpSet = [Op::Read, Op::Ioctl].into_iter().collect();
        assert!(set.contains(Op::Read) && set.contains(Op::Ioctl));
        assert!(!set.contains(Op::Write));
        assert!(OpSet::ALL.contains(Op::Ioctl));
        assert_eq!(OpSet::of(&[Op::Read, Op::Ioctl]), set);
        assert!(set.is_subset(OpSet::ALL) && !OpSet::ALL.is_subset(set));
        assert_eq!(
            set.difference(OpSet::of(&[Op::Read])),
            OpSet::of(&[Op::Ioctl])
        );
        assert_eq!(set.iter().collect::<Vec<_>>(), [Op::Read, Op::Ioctl]);
        assert_eq!(OpSet::ALL.iter().count(), Op::ALL.len());
    }
}
