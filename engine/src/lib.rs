#![doc = include_str!("../README.md")]

pub mod api;
pub mod chaos;
pub mod daemon;
pub mod error;
pub mod failpoint;
pub mod fusectl;
pub mod inject;
pub mod journal;
pub mod mountinfo;
pub mod ns;
pub mod policy;
pub mod resolve;
pub mod shim;
pub mod starttime;
pub mod swap;
mod sys;
pub mod target;

pub use error::{Error, Result};
