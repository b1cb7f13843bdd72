#!/usr/bin/env bash
# The test command (README): lint, unit and integration tests (real FUSE mounts and real
# ptrace: run as root), then the conformance suites on ChaosFS against the native filesystem.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --release --quiet
cargo test --workspace --release
bash scripts/conformance.sh
