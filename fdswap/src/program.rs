//! The op table the stub interprets, and its memory layout.
//!
//! Each op is a syscall (or a compare, a commit point, or nothing) with six arguments, each a
//! value, an offset from the header (an address in the remote mapping), or a value loaded from
//! there (the result of an earlier op, a word the scan wrote); a check of its result; and
//! optionally an undo call. The stub runs the ops in order; when a check fails it runs the undo
//! calls of the earlier ops in reverse order, down to the last commit point (the process is back
//! to its original files), and traps. Ops marked *final* come after the point of no return of
//! their batch: their failures are counted, not undone.
//!
//! Everything is addressed relative to the header (`r15` in the stub), so a program is built
//! and serialised before the target is stopped; only the header words are patched in after.

use std::path::Path;

use crate::arch::{hdr, op};
use crate::plan::ProcessPlan;

/// An argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A value.
    Imm(u64),
    /// The address of data item `n`.
    Data(usize),
    /// The result of op `n` (loaded when the call runs).
    Result(usize),
    /// The address of the header word at this offset (`hdr::*`).
    Header(i32),
    /// The 8 bytes at this offset in data item `n` (loaded when the call runs): e.g. an fd
    /// number the kernel wrote there (`SCM_RIGHTS`); for an `int` argument the kernel reads
    /// the low 32 bits only.
    Load(usize, u64),
}

/// What is checked of an op's result.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    /// Nothing.
    None,
    /// Not `-errno`.
    NonNeg,
    /// Equal to this value.
    Eq(u64),
    /// Equal to the result of op `n`.
    EqResult(usize),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Syscall(i64),
    /// `*(data + off) == value`, else `-ESTALE`.
    Compare {
        data: usize,
        off: u64,
        value: u64,
    },
    /// The result of op `op` `== value`, else `-ESTALE`.
    CompareResult {
        op: usize,
        value: u64,
    },
    /// A `statx` buffer's inode, device and mount id equal these, else `-ESTALE`.
    CompareFile {
        data: usize,
        ino: u64,
        dev: u64,
        mnt: u64,
    },
    Nothing,
    Commit,
}

/// A call (main or undo).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    kind: Kind,
    args: [Arg; 6],
}

impl Call {
    pub(crate) fn sys(nr: i64, args: &[Arg]) -> Call {
        let mut a = [Arg::Imm(0); 6];
        a[..args.len()].copy_from_slice(args);
        Call {
            kind: Kind::Syscall(nr),
            args: a,
        }
    }
    /// Compare the u64 at data item `data` + `off` with `value`.
    pub(crate) fn compare_data(data: usize, off: u64, value: u64) -> Call {
        Call {
            kind: Kind::Compare { data, off, value },
            args: [Arg::Imm(0); 6],
        }
    }
    /// Compare the result of op `op` with `value` (a separate op, so that a failing check
    /// still runs `op`'s undo).
    pub(crate) fn compare_result(op: usize, value: u64) -> Call {
        Call {
            kind: Kind::CompareResult { op, value },
            args: [Arg::Imm(0); 6],
        }
    }
    /// Compare a `struct statx` in data item `data` with a file id.
    pub(crate) fn compare_file(data: usize, id: &crate::sys::FileId) -> Call {
        Call {
            kind: Kind::CompareFile {
                data,
                ino: id.ino,
                dev: id.dev_word(),
                mnt: id.mnt_id,
            },
            args: [Arg::Imm(0); 6],
        }
    }
    pub(crate) fn commit() -> Call {
        Call {
            kind: Kind::Commit,
            args: [Arg::Imm(0); 6],
        }
    }
    pub(crate) fn nothing() -> Call {
        Call {
            kind: Kind::Nothing,
            args: [Arg::Imm(0); 6],
        }
    }
}

/// What an op does, for error messages (rendered only when one fails).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Desc {
    step: &'static str,
    fd: i32,
    addr: u64,
}

/// A step of the whole process.
pub(crate) fn step(step: &'static str) -> Desc {
    Desc {
        step,
        fd: -1,
        addr: 0,
    }
}

/// A step for an fd.
pub(crate) fn on_fd(step: &'static str, fd: i32) -> Desc {
    Desc { step, fd, addr: 0 }
}

/// A step for a mapping.
pub(crate) fn on_map(step: &'static str, addr: u64) -> Desc {
    Desc { step, fd: -1, addr }
}

#[derive(Debug, Clone)]
pub(crate) struct Op {
    main: Call,
    undo: Option<Call>,
    check: Check,
    last: bool,
    what: Desc,
}

impl Op {
    pub(crate) fn set_undo(&mut self, undo: Call) {
        self.undo = Some(undo);
    }
}

/// A program under construction: ops plus data items (strings, buffers).
#[derive(Debug, Default)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    data: Vec<Vec<u8>>,
    final_part: bool,
    /// Pointers inside data items: (item, offset in it, the item it points to). Serialised
    /// relative to the header and made absolute by [`Program::relocate`].
    pointers: Vec<(usize, usize, usize)>,
}

/// Where a laid-out program lives in the remote mapping (offsets from the mapping's start).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Code length, rounded; the header follows.
    pub code_len: usize,
    /// Size of the mapping.
    pub total: usize,
}

const PAGE: usize = 4096;
const STACK: usize = 64 * 1024;

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Program {
    /// Add a data item; returns its index.
    pub(crate) fn data(&mut self, bytes: Vec<u8>) -> usize {
        self.data.push(bytes);
        self.data.len() - 1
    }

    /// Make the 8 bytes at `off` in data item `item` a pointer to data item `to` (for the
    /// kernel: a `msghdr`'s iovec and control buffer).
    pub(crate) fn pointer(&mut self, item: usize, off: usize, to: usize) {
        self.pointers.push((item, off, to));
    }

    /// Offsets in the body of each data item.
    fn data_at(&self) -> Vec<usize> {
        let mut data_at = Vec::with_capacity(self.data.len());
        let mut at = self.data_off();
        for d in &self.data {
            data_at.push(at);
            at += round_up(d.len().max(1), 8);
        }
        data_at
    }

    /// Turn the pointers of a serialised body into addresses, the header being at `header`.
    pub(crate) fn relocate(&self, body: &mut [u8], header: u64) {
        let data_at = self.data_at();
        for &(item, off, _) in &self.pointers {
            let o = data_at[item] + off;
            let rel = u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or([0; 8]));
            body[o..o + 8].copy_from_slice(&(rel + header).to_le_bytes());
        }
    }

    /// From now on, ops are after the point of no return (failures are counted, not undone).
    pub(crate) fn begin_final(&mut self) {
        self.final_part = true;
    }

    /// Back to undoable ops.
    pub(crate) fn end_final(&mut self) {
        self.final_part = false;
    }

    /// Add an op; returns its index.
    pub(crate) fn push(
        &mut self,
        what: Desc,
        main: Call,
        check: Check,
        undo: Option<Call>,
    ) -> usize {
        self.ops.push(Op {
            main,
            undo,
            check,
            last: self.final_part,
            what,
        });
        self.ops.len() - 1
    }

    /// Describe op `i` for an error message.
    /// The step name of op `i`, if there is one.
    pub(crate) fn step_of(&self, i: u64) -> Option<&'static str> {
        let o = usize::try_from(i).ok().and_then(|i| self.ops.get(i))?;
        Some(o.what.step)
    }

    pub(crate) fn describe(&self, i: u64, unit: &ProcessPlan) -> String {
        let Some(o) = usize::try_from(i).ok().and_then(|i| self.ops.get(i)) else {
            return format!("op {i}");
        };
        let d = o.what;
        if d.fd >= 0 {
            let p = path_of(&unit.fds, |f| f.fd == d.fd, |f| &f.path);
            format!("{} fd {} ({p})", d.step, d.fd)
        } else if d.addr != 0 {
            let p = path_of(&unit.maps, |m| m.start == d.addr, |m| &m.path);
            format!("{} mapping {:x} ({p})", d.step, d.addr)
        } else {
            d.step.to_owned()
        }
    }

    fn undo_count(&self) -> usize {
        self.ops.iter().filter(|o| o.undo.is_some()).count()
    }

    /// Offsets of the parts, for a code of `code_len` bytes.
    pub(crate) fn layout(&self, code_len: usize) -> Layout {
        let code = round_up(code_len, 64);
        let body = self.body_len();
        let stack_off = round_up(code + body, PAGE);
        Layout {
            code_len: code,
            total: stack_off + STACK,
        }
    }

    fn ops_off() -> usize {
        hdr::SIZE
    }
    fn undos_off(&self) -> usize {
        Self::ops_off() + self.ops.len() * op::SIZE as usize
    }
    fn data_off(&self) -> usize {
        self.undos_off() + self.undo_count() * op::CALL_SIZE as usize
    }
    fn body_len(&self) -> usize {
        self.data_off()
            + self
                .data
                .iter()
                .map(|d| round_up(d.len().max(1), 8))
                .sum::<usize>()
    }

    /// Serialise header, ops, undo calls and data: everything the stub reads, relative to the
    /// header. The per-stop header words are filled in by [`patch_header`].
    pub(crate) fn serialize(&self) -> Vec<u8> {
        // Offsets in the body as indices (`*_at`) and as the u64 words the stub adds to r15.
        let data_at = self.data_at();
        let data_off: Vec<u64> = data_at.iter().map(|&a| a as u64).collect();
        let op_at = |n: usize| Self::ops_off() + n * op::SIZE as usize;
        let op_off = |n: usize| op_at(n) as u64;
        let mut out = vec![0u8; self.body_len()];
        fn put(out: &mut [u8], off: usize, v: u64) {
            out[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn put32(out: &mut [u8], off: usize, v: u32) {
            out[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        put(&mut out, hdr::N_OPS as usize, self.ops.len() as u64);
        put(&mut out, hdr::OPS as usize, Self::ops_off() as u64);
        put(&mut out, hdr::UNDOS as usize, self.undos_off() as u64);
        let call = |out: &mut [u8], off: usize, c: &Call| {
            let mut args = [0u64; 6];
            let mut mask = 0u32;
            for (i, a) in c.args.iter().enumerate() {
                args[i] = match *a {
                    Arg::Imm(v) => v,
                    Arg::Data(n) => {
                        mask |= op::REL << i;
                        data_off[n]
                    }
                    Arg::Result(n) => {
                        mask |= (op::REL | op::LOAD) << i;
                        op_off(n) + op::RESULT as u64
                    }
                    Arg::Header(off) => {
                        mask |= op::REL << i;
                        u64::from(off.cast_unsigned())
                    }
                    Arg::Load(n, off) => {
                        mask |= (op::REL | op::LOAD) << i;
                        data_off[n] + off
                    }
                };
            }
            let (kind, nr) = match c.kind {
                Kind::Syscall(nr) => (op::KIND_SYSCALL, crate::arch::word(nr)),
                Kind::Compare { data, off, value } => {
                    args[0] = data_off[data] + off;
                    args[1] = value;
                    mask = op::REL | op::LOAD;
                    (op::KIND_COMPARE, 0)
                }
                Kind::CompareResult { op: n, value } => {
                    args[0] = op_off(n) + op::RESULT as u64;
                    args[1] = value;
                    mask = op::REL | op::LOAD;
                    (op::KIND_COMPARE, 0)
                }
                Kind::CompareFile {
                    data,
                    ino,
                    dev,
                    mnt,
                } => {
                    args[0] = data_off[data] + op::STATX_INO;
                    args[1] = ino;
                    args[2] = dev;
                    args[3] = mnt;
                    mask = op::REL;
                    (op::KIND_COMPARE_FILE, 0)
                }
                Kind::Nothing => (op::KIND_NOTHING, 0),
                Kind::Commit => (op::KIND_COMMIT, 0),
            };
            put(out, off + op::NR as usize, nr);
            for (i, v) in args.iter().enumerate() {
                put(out, off + op::ARGS as usize + 8 * i, *v);
            }
            put32(out, off + op::MASK as usize, mask);
            put32(out, off + op::KIND as usize, kind);
        };
        let mut undo_n = 0u32;
        for (n, o) in self.ops.iter().enumerate() {
            let off = op_at(n);
            call(&mut out, off, &o.main);
            if let Some(u) = &o.undo {
                let uoff = self.undos_off() + undo_n as usize * op::CALL_SIZE as usize;
                call(&mut out, uoff, u);
                undo_n += 1;
                put32(&mut out, off + op::UNDO as usize, undo_n);
            }
            let (check, expect) = match o.check {
                Check::None => (0u32, 0u64),
                Check::NonNeg => (1, 0),
                Check::Eq(v) => (2, v),
                Check::EqResult(k) => (3, op_off(k) + op::RESULT as u64),
            };
            put32(&mut out, off + op::CHECK as usize, check);
            put32(&mut out, off + op::FINAL as usize, u32::from(o.last));
            put(&mut out, off + op::EXPECT as usize, expect);
        }
        for (d, &o) in self.data.iter().zip(&data_at) {
            out[o..o + d.len()].copy_from_slice(d);
        }
        for &(item, off, to) in &self.pointers {
            put(&mut out, data_at[item] + off, data_off[to]);
        }
        out
    }
}

/// Per-stop header values.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub tgid: i32,
    pub tid: i32,
    pub trapsig: i32,
    pub regs: [u64; hdr::REGS_LEN],
}

/// Fill the per-stop words into a serialised program.
pub(crate) fn patch_header(body: &mut [u8], h: &Header) {
    let mut put = |o: usize, v: u64| {
        body[o..o + 8].copy_from_slice(&v.to_le_bytes());
    };
    // The ids and the signal are tgkill's int arguments: register words.
    let int = |v: i32| crate::arch::word(i64::from(v));
    put(hdr::TGID as usize, int(h.tgid));
    put(hdr::TID as usize, int(h.tid));
    put(hdr::TRAPSIG as usize, int(h.trapsig));
    put(hdr::ORIG_MASK as usize, hdr::NO_MASK);
    for (i, w) in h.regs.iter().enumerate() {
        put(hdr::REGS as usize + 8 * i, *w);
    }
}

/// Results read back from the header.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub status: u64,
    pub fail_index: u64,
    pub fail_result: i64,
    pub final_errors: u64,
    pub final_index: u64,
    pub final_result: i64,
    pub floor: u64,
}

impl Outcome {
    pub(crate) fn parse(header: &[u8]) -> Outcome {
        let w = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or([0; 8]));
        Outcome {
            status: w(hdr::STATUS as usize),
            fail_index: w(hdr::FAIL_INDEX as usize),
            fail_result: crate::arch::signed(w(hdr::FAIL_RESULT as usize)),
            final_errors: w(hdr::FINAL_ERRORS as usize),
            final_index: w(hdr::FINAL_INDEX as usize),
            final_result: crate::arch::signed(w(hdr::FINAL_RESULT as usize)),
            floor: w(hdr::FLOOR as usize),
        }
    }
}

/// `arch::Stub` re-exported for the swapper.
pub(crate) type Stub = crate::arch::Stub;

/// The path of the first of `items` that `hit` picks, as text (empty if none).
fn path_of<T>(items: &[T], hit: impl Fn(&T) -> bool, path: impl Fn(&T) -> &Path) -> String {
    items
        .iter()
        .find(|x| hit(x))
        .map(|x| path(x).display().to_string())
        .unwrap_or_default()
}
