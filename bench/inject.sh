#!/usr/bin/env bash
# Wall time of `iochaos inject` (call -> faults live: the CLI returns once the server reports
# the swap done) and `iochaos recover` (call -> gone: mount detached, fds back, server exited,
# journal empty), against a process holding 0 and 1,000 files open under the injected path.
# Run as root:  bash bench/inject.sh          (N=20 rounds per case by default;
# IOCHAOS=path to time another build)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build --release -p iochaos --quiet
# IOCHAOS=path: time another build instead (e.g. main's, for a before/after).
B="${IOCHAOS:-$CARGO_TARGET_DIR/release/iochaos}"
N=${N:-20}
tmp=$(mktemp -d)
export IOCHAOS_RUN_DIR="$tmp/run"
holder=
cleanup() {
    [ -n "$holder" ] && kill "$holder" 2>/dev/null || true
    [ -d "$IOCHAOS_RUN_DIR" ] && "$B" recover --all >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
stats() { # name, values (µs) -> median / p90 / max in ms
    sort -n | awk -v name="$1" '{v[NR]=$1} END {
        m=v[int((NR+1)/2)]; p=v[int(NR*0.9+0.5)]; x=v[NR];
        printf "%-28s median %6.1f ms   p90 %6.1f ms   max %6.1f ms   (n=%d)\n", name, m/1000, p/1000, x/1000, NR }'
}

echo "iochaos inject/recover wall time, $N rounds each, $(nproc) CPUs, kernel $(uname -r)"
for files in 0 1000; do
    vol="$tmp/$files/vol"
    mkdir -p "$vol"
    unshare --mount --propagation private bash -c \
        "ulimit -n 4096; for i in \$(seq $files); do exec {fd}>>$vol/f\$i; done; exec sleep 100000" &
    holder=$!
    # Ready when the holder is `sleep` with all its files open.
    while [ "$(cat /proc/$holder/comm 2>/dev/null)" != sleep ] ||
          [ "$(ls /proc/$holder/fd | wc -l)" -lt "$files" ]; do :; done
    inj=() rec=()
    for _ in $(seq "$N"); do
        t0=$(now_us)
        id=$("$B" inject --pid "$holder" --path "$vol" --errno EIO --ops write)
        t1=$(now_us)
        "$B" recover "$id" >/dev/null
        t2=$(now_us)
        inj+=($((t1 - t0))) rec+=($((t2 - t1)))
    done
    printf '%s\n' "${inj[@]}" | stats "inject, $files open files"
    printf '%s\n' "${rec[@]}" | stats "recover, $files open files"
    kill "$holder"; wait "$holder" 2>/dev/null || true; holder=
done
