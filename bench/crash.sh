#!/usr/bin/env bash
# Crash mode against native, through `iochaos run`: sequential 1 MiB writes (256 MiB, one
# fsync at the end) and 4 KiB random overwrites of a 64 MiB file with an fsync every 100
# writes, natively, under `iochaos run --crash-mode`, and under a rule that only forces direct
# I/O (percent 0) to split the cost of direct I/O from that of the undo log. Prints MB/s and
# ratios to native, median of ROUNDS (default 3) rounds run back to back. Root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet -p iochaos
iochaos=$PWD/target/release/iochaos
dir=$(mktemp -d /var/tmp/iochaos-crash-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# The workload: prints "seq MBPS" and "rand MBPS" for directory $1.
work=$(cat <<'PY'
import os, sys, time, random
d = sys.argv[1]
buf = b"x" * (1 << 20)
p = os.path.join(d, "seq")
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t = time.monotonic()
for _ in range(256):
    os.write(fd, buf)
os.fsync(fd)
print("seq %.1f" % (256 / (time.monotonic() - t)))
os.close(fd)
p = os.path.join(d, "rand")
fd = os.open(p, os.O_RDWR)
rng = random.Random(1)
blk = b"y" * 4096
n = 20000
t = time.monotonic()
for i in range(n):
    os.pwrite(fd, blk, rng.randrange(0, (64 << 20) // 4096) * 4096)
    if i % 100 == 99:
        os.fsync(fd)
print("rand %.1f" % (n * 4096 / (1 << 20) / (time.monotonic() - t)))
os.close(fd)
PY
)

prepare() { # a fresh directory with a 64 MiB file to overwrite
    rm -rf "$1"; mkdir -p "$1"
    head -c $((64 << 20)) /dev/zero > "$1/rand"; sync "$1/rand"
}

declare -A seq rand
for mode in native crash direct; do seq[$mode]=""; rand[$mode]=""; done
for r in $(seq "$rounds"); do
    for mode in native crash direct; do
        d=$dir/$mode; prepare "$d"
        case $mode in
            native) out=$(python3 -c "$work" "$d") ;;
            crash) out=$("$iochaos" run --path "$d" --crash-mode -- python3 -c "$work" "$d") ;;
            direct) out=$("$iochaos" run --path "$d" --errno EIO --percent 0 -- python3 -c "$work" "$d") ;;
        esac
        seq[$mode]+="$(awk '$1=="seq"{print $2}' <<<"$out") "
        rand[$mode]+="$(awk '$1=="rand"{print $2}' <<<"$out") "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
printf '%-34s %10s %10s %10s\n' "MB/s (median of $rounds)" native crash-mode direct-io
for w in seq rand; do
    declare -n m=$w
    n=$(median <<<"${m[native]}"); c=$(median <<<"${m[crash]}"); x=$(median <<<"${m[direct]}")
    label=$([ $w = seq ] && echo "seq write 1 MiB, 256 MiB" || echo "4 KiB random, fsync every 100")
    printf '%-34s %10s %10s %10s   crash/native %.2f  direct/native %.2f\n' "$label" "$n" "$c" "$x" \
        "$(echo "$c / $n" | bc -l)" "$(echo "$x / $n" | bc -l)"
done
