#![doc = include_str!("../README.md")]

pub mod args;
pub mod daemon;
pub mod delete;
pub mod error;
pub mod spec;
pub mod start;
mod sys;
pub mod wire;

pub use error::{Error, Result};
