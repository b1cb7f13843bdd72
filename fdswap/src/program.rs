//! The op table the stub interprets, and its memory layout.
//!
//! Each op is a syscall (or a compare, or nothing) with six arguments, each either a value or the
//! address of a value to load (the result of an earlier op, a word the scan wrote), a check of
//! its result, and an undo call. The stub runs the ops in order; when a check fails it runs the
//! undo calls of every earlier op in reverse order (the process is back to its original files)
//! and stops. Ops marked *final* come after the point of no return: their failures are counted,
//! not undone.

use crate::arch::{self, hdr, op};

/// An argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A value.
    Imm(u64),
    /// The address of data item `n`.
    Data(usize),
    /// The result of op `n` (loaded when the call runs).
    Result(usize),
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
pub(crate) enum Kind {
    Syscall(i64),
    /// `arg0 == arg1`, else `-ESTALE`.
    Compare,
    Nothing,
    /// Everything before is committed: a later rollback stops here.
    Commit,
}

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
    /// Compare the u64 at data item `data` + `offset` with `value`.
    pub(crate) fn compare_data(data: usize, offset: u64, value: u64) -> Call {
        Call {
            kind: Kind::Compare,
            args: [
                Arg::Data(data),
                Arg::Imm(value),
                Arg::Imm(offset),
                Arg::Imm(0),
                Arg::Imm(0),
                Arg::Imm(0),
            ],
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

#[derive(Debug, Clone)]
pub(crate) struct Op {
    main: Call,
    undo: Option<Call>,
    check: Check,
    last: bool,
    /// What this op does, for errors (`openat /data/x for fd 7`).
    pub what: String,
}

/// A program under construction: ops plus data items (strings, buffers).
#[derive(Debug, Default)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    data: Vec<Vec<u8>>,
    final_part: bool,
}

/// Where a laid-out program lives in the remote mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub code_len: usize,
    pub ops_off: usize,
    pub data_off: usize,
    pub stack_off: usize,
    pub total: usize,
}

const PAGE: usize = 4096;
const STACK: usize = 64 * 1024;

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Op {
    pub(crate) fn set_undo(&mut self, undo: Call) {
        self.undo = Some(undo);
    }
}

impl Program {
    /// Add a data item; returns its index.
    pub(crate) fn data(&mut self, bytes: Vec<u8>) -> usize {
        self.data.push(bytes);
        self.data.len() - 1
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
        what: impl Into<String>,
        main: Call,
        check: Check,
        undo: Option<Call>,
    ) -> usize {
        self.ops.push(Op {
            main,
            undo,
            check,
            last: self.final_part,
            what: what.into(),
        });
        self.ops.len() - 1
    }

    /// Offsets of the parts, for a code of `code_len` bytes.
    pub(crate) fn layout(&self, code_len: usize) -> Layout {
        let code = round_up(code_len, 64);
        let hdr_off = code;
        let ops_off = hdr_off + hdr::SIZE;
        let data_off = ops_off + self.ops.len() * op::SIZE as usize;
        let data_len: usize = self.data.iter().map(|d| round_up(d.len().max(1), 8)).sum();
        let stack_off = round_up(data_off + data_len, PAGE);
        Layout {
            code_len: code,
            ops_off,
            data_off,
            stack_off,
            total: stack_off + STACK,
        }
    }

    /// Serialise header, ops and data (everything after the code) for a mapping at `base`.
    pub(crate) fn serialize(&self, layout: &Layout, base: u64, header_words: &Header) -> Vec<u8> {
        let hdr_base = base + layout.code_len as u64;
        let mut data_addr = Vec::with_capacity(self.data.len());
        let mut at = base + layout.data_off as u64;
        for d in &self.data {
            data_addr.push(at);
            at += round_up(d.len().max(1), 8) as u64;
        }
        let op_addr = |n: usize| base + (layout.ops_off + n * op::SIZE as usize) as u64;
        let mut out = vec![0u8; layout.stack_off - layout.code_len];
        let put = |out: &mut Vec<u8>, off: usize, v: u64| {
            out[off..off + 8].copy_from_slice(&v.to_le_bytes());
        };
        let put32 = |out: &mut Vec<u8>, off: usize, v: u32| {
            out[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        // Header.
        put(&mut out, hdr::N_OPS as usize, self.ops.len() as u64);
        put(&mut out, hdr::OPS as usize, op_addr(0));
        put(&mut out, hdr::TGID as usize, header_words.tgid as u64);
        put(&mut out, hdr::TID as usize, header_words.tid as u64);
        put(&mut out, hdr::TRAPSIG as usize, header_words.trapsig as u64);
        for (i, w) in header_words.regs.iter().enumerate() {
            put(&mut out, hdr::REGS as usize + 8 * i, *w);
        }
        // Ops.
        let call = |out: &mut Vec<u8>, off: usize, c: &Call| {
            let (kind, nr) = match c.kind {
                Kind::Syscall(nr) => (0u32, nr as u64),
                Kind::Compare => (1, 0),
                Kind::Nothing => (2, 0),
                Kind::Commit => (3, 0),
            };
            put(out, off + op::NR as usize, nr);
            let mut mask = 0u32;
            for (i, a) in c.args.iter().enumerate() {
                let v = match *a {
                    Arg::Imm(v) => v,
                    Arg::Data(n) => data_addr[n],
                    Arg::Result(n) => {
                        mask |= 1 << i;
                        op_addr(n) + op::RESULT as u64
                    }
                };
                put(out, off + op::ARGS as usize + 8 * i, v);
            }
            if let Kind::Compare = c.kind {
                // arg0 is loaded: the address of the data item plus the offset in arg2.
                let a0 = off + op::ARGS as usize;
                let base0 = u64::from_le_bytes(out[a0..a0 + 8].try_into().unwrap_or([0; 8]));
                let extra = match c.args[2] {
                    Arg::Imm(v) => v,
                    _ => 0,
                };
                put(out, a0, base0 + extra);
                mask |= 1;
            }
            put32(out, off + op::MASK as usize, mask);
            put32(out, off + op::KIND as usize, kind);
        };
        for (n, o) in self.ops.iter().enumerate() {
            let off = hdr::SIZE + n * op::SIZE as usize;
            call(&mut out, off + op::MAIN as usize, &o.main);
            call(
                &mut out,
                off + op::UNDO as usize,
                o.undo.as_ref().unwrap_or(&Call::nothing()),
            );
            let (check, expect) = match o.check {
                Check::None => (0u32, 0u64),
                Check::NonNeg => (1, 0),
                Check::Eq(v) => (2, v),
                Check::EqResult(k) => (3, op_addr(k) + op::RESULT as u64),
            };
            put32(&mut out, off + op::CHECK as usize, check);
            put32(&mut out, off + op::FINAL as usize, u32::from(o.last));
            put(&mut out, off + op::EXPECT as usize, expect);
        }
        // Data.
        let mut at = layout.data_off - layout.code_len;
        for d in &self.data {
            out[at..at + d.len()].copy_from_slice(d);
            at += round_up(d.len().max(1), 8);
        }
        let _ = hdr_base;
        out
    }
}

/// Per-process header values.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub tgid: i32,
    pub tid: i32,
    pub trapsig: i32,
    pub regs: [u64; hdr::REGS_LEN],
}

/// Results read back from the header and ops.
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
        let w = |off: i32| {
            let o = off as usize;
            u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or([0; 8]))
        };
        Outcome {
            status: w(hdr::STATUS),
            fail_index: w(hdr::FAIL_INDEX),
            fail_result: w(hdr::FAIL_RESULT) as i64,
            final_errors: w(hdr::FINAL_ERRORS),
            final_index: w(hdr::FINAL_INDEX),
            final_result: w(hdr::FINAL_RESULT) as i64,
            floor: w(hdr::FLOOR),
        }
    }
}

/// `arch::Stub` re-exported for the swapper.
pub(crate) type Stub = arch::Stub;
