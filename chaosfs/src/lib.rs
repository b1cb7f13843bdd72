#![doc = include_str!("../README.md")]

pub mod error;
pub mod rules;

pub use error::{Error, Result};
