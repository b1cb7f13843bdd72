//! Generates the Chaos ttrpc API (messages and service) from `proto/chaos.proto`, in pure Rust
//! (no protoc). The generated files carry inner attributes (`#![allow(..)]`), which `include!`
//! cannot take inside a `mod { }`; they are stripped here and the allows put on the module
//! (`src/api/proto.rs`).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=proto/chaos.proto");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let gen_dir = Path::new(&out).join("gen");
    std::fs::create_dir_all(&gen_dir).expect("creating OUT_DIR/gen");
    ttrpc_codegen::Codegen::new()
        .out_dir(&gen_dir)
        .inputs(["proto/chaos.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            gen_mod: false,
            ..Default::default()
        })
        .run()
        .expect("generating the Chaos ttrpc code from proto/chaos.proto");
    for name in ["chaos.rs", "chaos_ttrpc.rs"] {
        let text = std::fs::read_to_string(gen_dir.join(name)).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(Path::new(&out).join(name), kept.join("\n"))
            .expect("writing generated code");
    }
}
