#![doc = include_str!("../README.md")]

pub mod config;
pub mod error;
pub mod hook;
pub mod oci;
pub mod privileges;
pub mod server;
mod sys;

pub use error::{Error, Result};

/// The annotation that carries the JSON spec.
pub use engine::annotation::ANNOTATION;
