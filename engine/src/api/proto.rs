//! Code generated at build time from `proto/chaos.proto` (see `build.rs`).
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_mut,
    unused_results
)]

#[rustfmt::skip]
pub mod chaos {
    include!(concat!(env!("OUT_DIR"), "/chaos.rs"));
}

#[rustfmt::skip]
pub mod chaos_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/chaos_ttrpc.rs"));
}
