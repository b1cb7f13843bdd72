//! Architecture specifics: registers, syscall restart, the stub's machine code.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("fdswap supports x86_64 only for now (aarch64 is planned: add arch/aarch64.rs)");
