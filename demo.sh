#!/usr/bin/env bash
# Build iochaos and run its demo: a live workload's writes fail, slow down, then succeed again.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
# The CRI client (cri:// targets) is generated with protoc at build time.
if ! command -v protoc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "demo.sh: installing protobuf-compiler (protoc builds the CRI client)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
    else
        echo "demo.sh: protoc is missing: install protobuf-compiler" >&2
        exit 1
    fi
fi
cargo build --release --quiet -p iochaos
exec ./target/release/iochaos demo
