//! x86_64: register sets, the kernel's syscall-restart convention, and the stub.
//!
//! The stub is position independent. The tracer enters it with `r15` = the data header and `rsp`
//! = the top of a stack inside the remote mapping (the target's own stack and red zone are never
//! touched). It interprets the op table (see `program.rs`), then traps with
//! `tgkill(getpid(), gettid(), trapsig)`, `trapsig` a signal the thread does not catch and whose
//! default action is to ignore it, sent while the stub's own mask (everything blocked but
//! `trapsig`) is in force. If no tracer is left to catch that trap, the signal is ignored, and
//! the code after it restores the thread's signal mask and every register from the header and
//! jumps back to the interrupted code, with the syscall restart the kernel would have done.
//! There is no `int3` (untraced, its SIGTRAP kills the target).

use dynasmrt::{DynasmApi, DynasmLabelApi, dynasm};

use crate::error::{Error, Result};

/// Registers as ptrace gets and sets them.
pub(crate) type Regs = libc::user_regs_struct;

/// The `syscall` instruction.
pub(crate) const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// `NAME: size, ...` → `pub const NAME: i32` = the offset of each field, laid out one after the
/// other from 0 (each offset is the previous one plus the previous field's size).
macro_rules! offsets {
    (@at $at:expr;) => {};
    (@at $at:expr; $(#[$doc:meta])* $name:ident: $size:expr, $($rest:tt)*) => {
        $(#[$doc])*
        pub const $name: i32 = $at;
        offsets!(@at $name + $size; $($rest)*);
    };
    ($($fields:tt)*) => {
        offsets!(@at 0; $($fields)*);
    };
}

/// Offsets in the header (`r15`) the code uses. All addresses the stub follows are offsets
/// from the header, so a program can be serialised before the remote mapping exists.
pub(crate) mod hdr {
    offsets! {
        N_OPS: 8,
        /// Offset of the op table.
        OPS: 8,
        STATUS: 8,
        FAIL_INDEX: 8,
        FAIL_RESULT: 8,
        FINAL_ERRORS: 8,
        FINAL_INDEX: 8,
        FINAL_RESULT: 8,
        TGID: 8,
        TID: 8,
        TRAPSIG: 8,
        /// Ops below this index are committed: a rollback stops here.
        FLOOR: 8,
        /// Offset of the undo call table.
        UNDOS: 8,
        /// rax rbx rcx rdx rsi rdi rbp rsp r8 … r15 rflags, for the tracer-less return.
        REGS: 8 * 17,
        /// The thread's signal mask before the stub's first op blocked signals (written by
        /// that op); [`NO_MASK`] until then. Restored after the trap, by the stub itself or
        /// by the tracer.
        ORIG_MASK: 8,
        END: 0,
    }
    pub const REGS_LEN: usize = 17;
    pub const SIZE: usize = 256;
    /// `ORIG_MASK` before the stub saved the mask: no mask the kernel keeps has every bit set
    /// (SIGKILL and SIGSTOP are never blocked).
    pub const NO_MASK: u64 = u64::MAX;
    const _: () = assert!(REGS == 104 && ORIG_MASK == 240 && END <= 256);
}

/// Layout of an op and of a call. Must match `program.rs`.
pub(crate) mod op {
    offsets! {
        /// Within a call: nr, args[6], mask (u32), kind (u32).
        NR: 8,
        ARGS: 6 * 8,
        MASK: 4,
        KIND: 4,
        /// An op: its call, then these.
        CHECK: 4,
        FINAL: 4,
        EXPECT: 8,
        RESULT: 8,
        /// 0: no undo; n: undo call n - 1.
        UNDO: 8,
        SIZE: 0,
    }
    /// A call is what comes before `CHECK`.
    pub const CALL_SIZE: i32 = CHECK;
    const _: () = assert!(CALL_SIZE == 64 && SIZE == 96);
    /// Mask bits, shifted by the argument index: load the argument from the address...
    pub const LOAD: u32 = 1;
    /// ...which is an offset from the header.
    pub const REL: u32 = 1 << 8;
    pub const KIND_SYSCALL: u32 = 0;
    pub const KIND_COMPARE: u32 = 1;
    pub const KIND_NOTHING: u32 = 2;
    pub const KIND_COMMIT: u32 = 3;
    pub const KIND_COMPARE_FILE: u32 = 4;
    /// `stx_ino` in `struct statx`; `stx_dev_major`/`minor` are 104 bytes later, `stx_mnt_id` 112.
    pub const STATX_INO: u64 = 32;
}

/// Status words the stub leaves in the header.
pub(crate) mod status {
    pub const DONE: u64 = 1;
    pub const ROLLED_BACK: u64 = 2;
}

/// The assembled stub and where things are in it.
#[derive(Debug, Clone)]
pub(crate) struct Stub {
    /// Machine code (the return slot at `rip_slot` is patched per process).
    pub code: Vec<u8>,
    /// Entry point.
    pub entry: usize,
    /// `rip` after the trapping `tgkill` returns (the tracer-less return path starts here).
    pub after_tgkill: usize,
    /// 8-byte slot holding the address to return to.
    pub rip_slot: usize,
}

/// The assembler the stub is built with.
type Asm = dynasmrt::VecAssembler<dynasmrt::x64::X64Relocation>;

/// A syscall number or errno as the 32-bit immediate an instruction takes.
fn imm32<T: TryInto<i32> + Copy + std::fmt::Display>(v: T) -> Result<i32> {
    v.try_into()
        .map_err(|_| Error::Assemble(format!("{v} does not fit an imm32")))
}

/// Assemble the stub.
pub(crate) fn assemble() -> Result<Stub> {
    let mut ops = Asm::new(0);
    let entry = ops.offset().0;
    emit_op_loop(&mut ops);
    emit_rollback(&mut ops)?;
    let after_tgkill = emit_trap(&mut ops)?;
    let rip_slot = emit_epilogue(&mut ops);
    emit_undo_of(&mut ops);
    emit_exec_args(&mut ops);
    emit_exec_kind(&mut ops)?;
    let code = ops
        .finalize()
        .map_err(|e| Error::Assemble(format!("{e:?}")))?;
    Ok(Stub {
        code,
        entry,
        after_tgkill,
        rip_slot,
    })
}

/// The interpreter: run each op, check its result; a failure before the point of no return
/// rolls back, one after it is counted and passed over.
fn emit_op_loop(ops: &mut Asm) {
    use self::op::*;
    dynasm!(ops
        ; .arch x64
        ; mov r13, [r15 + hdr::N_OPS]
        ; mov rbx, [r15 + hdr::OPS]
        ; add rbx, r15
        ; xor r12d, r12d
        ; ->next:
        ; cmp r12, r13
        ; jae ->success
        ; mov rbp, rbx
        ; call ->exec
        ; mov [rbx + RESULT], rax
        ; mov ecx, [rbx + CHECK]
        ; cmp ecx, 1
        ; je >nonneg
        ; cmp ecx, 2
        ; je >eq_imm
        ; cmp ecx, 3
        ; je >eq_load
        ; jmp >ok
        ; nonneg:
        ; cmp rax, -4095
        ; jae >bad
        ; jmp >ok
        ; eq_imm:
        ; cmp rax, [rbx + EXPECT]
        ; jne >bad
        ; jmp >ok
        ; eq_load:
        ; mov rdx, [rbx + EXPECT]
        ; cmp rax, [r15 + rdx]
        ; jne >bad
        ; ok:
        ; inc r12
        ; add rbx, SIZE
        ; jmp ->next
        ; bad:
        ; cmp DWORD [rbx + FINAL], 0
        ; je ->rollback
        // A failure after the point of no return: note the first one and go on.
        ; cmp QWORD [r15 + hdr::FINAL_ERRORS], 0
        ; jne >counted
        ; mov [r15 + hdr::FINAL_INDEX], r12
        ; mov [r15 + hdr::FINAL_RESULT], rax
        ; counted:
        ; inc QWORD [r15 + hdr::FINAL_ERRORS]
        ; jmp <ok
    );
}

/// Undo the ops run so far, down to the last commit point, and note where it failed.
fn emit_rollback(ops: &mut Asm) -> Result<()> {
    use self::op::*;
    let rolled_back = imm32(status::ROLLED_BACK)?;
    let done = imm32(status::DONE)?;
    dynasm!(ops
        ; .arch x64
        ; ->rollback:
        ; mov [r15 + hdr::FAIL_INDEX], r12
        ; mov [r15 + hdr::FAIL_RESULT], rax
        ; ->undo_next:
        ; cmp r12, [r15 + hdr::FLOOR]
        ; jbe >undone
        ; dec r12
        ; sub rbx, SIZE
        ; call ->undo_of
        ; jmp ->undo_next
        ; undone:
        ; mov QWORD [r15 + hdr::STATUS], rolled_back
        ; jmp ->trap
        ; ->success:
        ; mov QWORD [r15 + hdr::STATUS], done
    );
    Ok(())
}

/// The trap the tracer waits for, then (no tracer caught it, or it let the stub go on) the
/// signal mask restored; returns the offset after the trapping `tgkill`.
fn emit_trap(ops: &mut Asm) -> Result<usize> {
    let tgkill = imm32(libc::SYS_tgkill)?;
    let getpid = imm32(libc::SYS_getpid)?;
    let gettid = imm32(libc::SYS_gettid)?;
    let sigprocmask = imm32(libc::SYS_rt_sigprocmask)?;
    let setmask = libc::SIG_SETMASK;
    dynasm!(ops
        ; .arch x64
        ; ->trap:
        // tgkill(getpid(), gettid(), trapsig): the ids as the target sees them (its pid
        // namespace), not as the tracer does.
        ; mov eax, getpid
        ; syscall
        ; mov r12, rax
        ; mov eax, gettid
        ; syscall
        ; mov rsi, rax
        ; mov rdi, r12
        ; mov rdx, [r15 + hdr::TRAPSIG]
        ; mov eax, tgkill
        ; syscall
    );
    let after_tgkill = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        // rt_sigprocmask(SIG_SETMASK, &ORIG_MASK, NULL, 8), if the first op saved it.
        ; lea rsi, [r15 + hdr::ORIG_MASK]
        ; cmp QWORD [rsi], -1
        ; je ->epilogue
        ; mov edi, setmask
        ; xor edx, edx
        ; mov r10d, 8
        ; mov eax, sigprocmask
        ; syscall
        ; jmp ->epilogue
    );
    Ok(after_tgkill)
}

/// No tracer caught the trap: restore the interrupted state and return to it. Returns the
/// offset of the 8-byte return address slot.
fn emit_epilogue(ops: &mut Asm) -> usize {
    let r = hdr::REGS;
    dynasm!(ops
        ; .arch x64
        ; ->epilogue:
        ; push QWORD [r15 + r + 16 * 8]
        ; popfq
        ; mov rax, [r15 + r]
        ; mov rbx, [r15 + r + 8]
        ; mov rcx, [r15 + r + 2 * 8]
        ; mov rdx, [r15 + r + 3 * 8]
        ; mov rsi, [r15 + r + 4 * 8]
        ; mov rdi, [r15 + r + 5 * 8]
        ; mov rbp, [r15 + r + 6 * 8]
        ; mov rsp, [r15 + r + 7 * 8]
        ; mov r8, [r15 + r + 8 * 8]
        ; mov r9, [r15 + r + 9 * 8]
        ; mov r10, [r15 + r + 10 * 8]
        ; mov r11, [r15 + r + 11 * 8]
        ; mov r12, [r15 + r + 12 * 8]
        ; mov r13, [r15 + r + 13 * 8]
        ; mov r14, [r15 + r + 14 * 8]
        ; mov r15, [r15 + r + 15 * 8]
        // jmp [rip+0]; the 8 bytes that follow are the return address.
        ; .bytes [0xffu8, 0x25, 0, 0, 0, 0]
    );
    ops.offset().0
}

/// The return address slot, then `undo_of`: run the undo call of the op at rbx, if any.
fn emit_undo_of(ops: &mut Asm) {
    use self::op::*;
    dynasm!(ops
        ; .arch x64
        ; .u64 0
        // undo_of: run the undo call of the op at rbx, if it has one.
        ; ->undo_of:
        ; mov eax, [rbx + UNDO]
        ; test eax, eax
        ; jz >no_undo
        ; dec eax
        ; shl rax, 6
        ; mov rbp, [r15 + hdr::UNDOS]
        ; add rbp, r15
        ; add rbp, rax
        ; call ->exec
        ; no_undo:
        ; ret
    );
}

/// `exec`, first part: load the six arguments of the call at rbp (each an immediate, or
/// loaded from an address, absolute or relative to the header, as its mask bits say).
fn emit_exec_args(ops: &mut Asm) {
    use self::op::*;
    dynasm!(ops
        ; .arch x64
        // exec: run the call at rbp; result in rax.
        ; ->exec:
        ; mov r14d, [rbp + MASK]
        ; mov rdi, [rbp + ARGS]
        ; test r14d, 0x100
        ; jz >r0
        ; add rdi, r15
        ; r0:
        ; test r14d, 1
        ; jz >a1
        ; mov rdi, [rdi]
        ; a1:
        ; mov rsi, [rbp + ARGS + 8]
        ; test r14d, 0x200
        ; jz >r1
        ; add rsi, r15
        ; r1:
        ; test r14d, 2
        ; jz >a2
        ; mov rsi, [rsi]
        ; a2:
        ; mov rdx, [rbp + ARGS + 16]
        ; test r14d, 0x400
        ; jz >r2
        ; add rdx, r15
        ; r2:
        ; test r14d, 4
        ; jz >a3
        ; mov rdx, [rdx]
        ; a3:
        ; mov r10, [rbp + ARGS + 24]
        ; test r14d, 0x800
        ; jz >r3
        ; add r10, r15
        ; r3:
        ; test r14d, 8
        ; jz >a4
        ; mov r10, [r10]
        ; a4:
        ; mov r8, [rbp + ARGS + 32]
        ; test r14d, 0x1000
        ; jz >r4
        ; add r8, r15
        ; r4:
        ; test r14d, 16
        ; jz >a5
        ; mov r8, [r8]
        ; a5:
        ; mov r9, [rbp + ARGS + 40]
        ; test r14d, 0x2000
        ; jz >r5
        ; add r9, r15
        ; r5:
        ; test r14d, 32
        ; jz >a6
        ; mov r9, [r9]
        ; a6:
    );
}

/// `exec`, second part: by the call's kind, the syscall, a commit point, or a comparison
/// (`-ESTALE` when it differs); result in rax.
fn emit_exec_kind(ops: &mut Asm) -> Result<()> {
    use self::op::*;
    let estale = -imm32(libc::ESTALE)?;
    dynasm!(ops
        ; .arch x64
        ; mov eax, [rbp + KIND]
        ; test eax, eax
        ; jnz >not_syscall
        ; mov rax, [rbp + NR]
        ; syscall
        ; ret
        ; not_syscall:
        ; cmp eax, 3
        ; jne >not_commit
        // Commit point: later failures roll back to here only.
        ; lea rax, [r12 + 1]
        ; mov [r15 + hdr::FLOOR], rax
        ; xor eax, eax
        ; ret
        ; not_commit:
        ; cmp eax, 4
        ; jne >not_file
        // statx buffer at rdi (its stx_ino): inode, device, mount.
        ; cmp [rdi], rsi
        ; jne >differ
        ; cmp [rdi + 104], rdx
        ; jne >differ
        ; cmp [rdi + 112], r10
        ; jne >differ
        ; xor eax, eax
        ; ret
        ; not_file:
        ; cmp eax, 1
        ; jne >nothing
        ; cmp rdi, rsi
        ; jne >differ
        ; xor eax, eax
        ; ret
        ; differ:
        ; mov rax, estale
        ; ret
        ; nothing:
        ; xor eax, eax
        ; ret
    );
    Ok(())
}

/// Space the trampoline needs.
pub(crate) const TRAMPOLINE_LEN: usize = 128;

/// A `syscall` followed by code that loads every register a syscall injection changes (and
/// the syscall clobbers) from `r` with its restart applied, and jumps back to the interrupted
/// code. The injected syscall runs at offset 0; a tracer that dies after setting it up leaves
/// a thread that runs the syscall and then simply carries on where it was.
pub(crate) fn trampoline(orig: &Regs) -> Result<Vec<u8>> {
    let a = after_restart(orig);
    let mut ops = dynasmrt::VecAssembler::<dynasmrt::x64::X64Relocation>::new(0);
    dynasm!(ops
        ; .arch x64
        ; syscall
        ; mov rax, QWORD signed(a.rax)
        ; mov rcx, QWORD signed(a.rcx)
        ; mov rdx, QWORD signed(a.rdx)
        ; mov rsi, QWORD signed(a.rsi)
        ; mov rdi, QWORD signed(a.rdi)
        ; mov r8, QWORD signed(a.r8)
        ; mov r9, QWORD signed(a.r9)
        ; mov r10, QWORD signed(a.r10)
        ; mov r11, QWORD signed(a.r11)
        ; .bytes [0xffu8, 0x25, 0, 0, 0, 0]
        ; .u64 a.rip
    );
    let code = ops
        .finalize()
        .map_err(|e| Error::Assemble(format!("{e:?}")))?;
    debug_assert!(code.len() <= TRAMPOLINE_LEN);
    Ok(code)
}

/// Instruction pointer.
pub(crate) fn ip(r: &Regs) -> u64 {
    r.rip
}

/// Syscall return value.
pub(crate) fn ret(r: &Regs) -> i64 {
    signed(r.rax)
}

/// A register word read as the signed value the syscall ABI means by it (two's complement:
/// `-errno`, a syscall number, `-1` for none).
pub(crate) fn signed(w: u64) -> i64 {
    i64::from_ne_bytes(w.to_ne_bytes())
}

/// A signed value as the register word that holds it (two's complement).
pub(crate) fn word(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Registers to run one syscall `nr(args)` at the `syscall` instruction at `at`, with no
/// syscall restart pending.
pub(crate) fn syscall_regs(orig: &Regs, at: u64, nr: i64, args: [u64; 6]) -> Regs {
    let mut r = *orig;
    r.rip = at;
    r.rax = word(nr);
    r.orig_rax = u64::MAX;
    r.rdi = args[0];
    r.rsi = args[1];
    r.rdx = args[2];
    r.r10 = args[3];
    r.r8 = args[4];
    r.r9 = args[5];
    r
}

/// Registers to enter the stub.
pub(crate) fn stub_regs(orig: &Regs, entry: u64, header: u64, stack_top: u64) -> Regs {
    let mut r = *orig;
    r.rip = entry;
    r.r15 = header;
    r.rsp = stack_top;
    r.orig_rax = u64::MAX;
    r.eflags &= !0x400; // direction flag clear, as the ABI expects
    r
}

/// Syscalls that return `-EINTR` (not a restart code) when the thread is merely stopped and
/// continued (signal(7)); on those fdswap sets `-ERESTARTNOHAND`, which the kernel restarts
/// when no handler runs and turns into `EINTR` when one does — what would have happened anyway.
const EINTR_ON_STOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_rt_sigtimedwait,
];

/// If the stop turned a blocking syscall into a spurious `EINTR`, make it restart instead.
/// Returns whether the registers were changed.
pub(crate) fn fix_spurious_eintr(r: &mut Regs) -> bool {
    let nr = signed(r.orig_rax);
    if nr >= 0 && signed(r.rax) == -i64::from(libc::EINTR) && EINTR_ON_STOP.contains(&nr) {
        r.rax = word(-ERESTARTNOHAND);
        return true;
    }
    false
}

/// The registers the thread would run with after the kernel's restart logic (no handler): what
/// the tracer-less return path loads.
pub(crate) fn after_restart(r: &Regs) -> Regs {
    let mut o = *r;
    if signed(r.orig_rax) >= 0 {
        match -signed(r.rax) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                o.rax = r.orig_rax;
                o.rip = r.rip.wrapping_sub(2);
            }
            ERESTART_RESTARTBLOCK => {
                o.rax = word(libc::SYS_restart_syscall);
                o.rip = r.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    o
}

/// The register block of the header (see [`hdr::REGS`]) and the return address.
pub(crate) fn return_block(r: &Regs) -> ([u64; hdr::REGS_LEN], u64) {
    let a = after_restart(r);
    (
        [
            a.rax, a.rbx, a.rcx, a.rdx, a.rsi, a.rdi, a.rbp, a.rsp, a.r8, a.r9, a.r10, a.r11,
            a.r12, a.r13, a.r14, a.r15, a.eflags,
        ],
        a.rip,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles() {
        let s = assemble().expect("assembles");
        assert!(s.code.len() < 4096);
        assert_eq!(&s.code[s.after_tgkill - 2..s.after_tgkill], &SYSCALL_INSN);
        assert_eq!(
            &s.code[s.rip_slot - 6..s.rip_slot],
            &[0xff, 0x25, 0, 0, 0, 0]
        );
    }

    #[test]
    fn trampoline_fits() {
        let mut r = zero_regs();
        r.rip = 0x1234;
        let t = trampoline(&r).expect("assembles");
        assert!(t.len() <= TRAMPOLINE_LEN);
        assert_eq!(&t[..2], &SYSCALL_INSN);
        assert_eq!(&t[t.len() - 8..], &0x1234u64.to_le_bytes());
    }

    #[test]
    fn restart_is_emulated() {
        let mut r: Regs = zero_regs();
        r.orig_rax = word(libc::SYS_read);
        r.rax = word(-ERESTARTSYS);
        r.rip = 0x1002;
        let a = after_restart(&r);
        assert_eq!((a.rax, a.rip), (word(libc::SYS_read), 0x1000));
        r.rax = word(-ERESTART_RESTARTBLOCK);
        assert_eq!(after_restart(&r).rax, word(libc::SYS_restart_syscall));
        r.orig_rax = u64::MAX;
        assert_eq!(after_restart(&r).rip, 0x1002);
    }

    fn zero_regs() -> Regs {
        Regs {
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rbp: 0,
            rbx: 0,
            r11: 0,
            r10: 0,
            r9: 0,
            r8: 0,
            rax: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            orig_rax: 0,
            rip: 0,
            cs: 0,
            eflags: 0,
            rsp: 0,
            ss: 0,
            fs_base: 0,
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        }
    }
}
