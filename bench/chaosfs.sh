#!/usr/bin/env bash
# ChaosFS/native ratios for sequential write/read, 4 KiB random read, stat, create, unlink,
# for files no rule touches and for files a rule touches (percent 0). Root and /dev/fuse needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p iochaos-bench
exec ./target/release/chaosfs-bench "$@"
