#!/usr/bin/env bash
# Build iochaos and run its demo: a live workload's writes fail, slow down, then succeed again.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p iochaos
exec ./target/release/iochaos demo
