#![doc = include_str!("../README.md")]

pub mod adapters;
pub mod annotation;
pub mod api;
pub mod error;
pub mod failpoint;
pub mod fdlimit;
pub mod fusectl;
pub mod inject;
pub mod journal;
#[cfg(feature = "logging")]
pub mod logging;
pub mod mountinfo;
pub mod ns;
pub mod policy;
pub mod resolve;
pub mod runtimes;
pub mod server;
mod sys;
pub mod target;

pub use error::{Error, Result};
