#!/bin/sh
# fdswap benchmark: target pause and whole swap time for 1..10,000 fds, 1 and 64 threads.
# Needs root (ptrace, mount namespaces). REPS=n to change the repetitions (default 5).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p fdswap --bins --examples
exec "$CARGO_TARGET_DIR/release/examples/bench"
