//! The implementations of [`crate::inject`]'s traits: the moving parts that live in other crates.
//!
//! * [`chaosfs`]: ChaosFS behind [`crate::inject::FsLauncher`] / [`crate::inject::FsServer`].
//! * [`fdswap`]: the fd swap behind [`crate::inject::Swapper`].
//! * [`start`]: the swapper of a start-time injection (nothing to move at inject).

pub mod chaosfs;
pub mod fdswap;
pub mod start;
