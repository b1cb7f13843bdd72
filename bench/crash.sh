#!/usr/bin/env bash
# Crash mode against native, through `iochaos run`: sequential 1 MiB writes (256 MiB, one
# fsync at the end) and 4 KiB random overwrites of a 64 MiB file with an fsync every 100
# writes, natively, under `iochaos run --crash-mode`, and under a rule that only forces direct
# I/O (percent 0) to split the cost of direct I/O from that of the undo log. Prints MB/s and
# ratios to native, median of ROUNDS (default 3) rounds run back to back. Then pgbench (TPC-B
# like, 4 clients, SECS seconds, default 10) against PostgreSQL running natively and under
# `iochaos run --crash-mode` (skipped when /usr/lib/postgresql is absent), median TPS of ROUNDS.
# Root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${SECS:-10}
cargo build --release --quiet -p iochaos
iochaos=$PWD/target/release/iochaos
dir=$(mktemp -d /var/tmp/iochaos-crash-bench.XXXXXX)
cleanup() {
    [ -n "${pgctl:-}" ] && runuser -u postgres -- "$pgctl" -D "$dir/pg/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT

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

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pgbin" ] || { echo "pgbench: no PostgreSQL in /usr/lib/postgresql, skipped"; exit 0; }
pg=$dir/pg; mkdir -p "$pg/sock"; chmod 755 "$dir"; chown -R postgres: "$pg"
pgctl=$pgbin/pg_ctl
opts="-k $pg/sock -c listen_addresses= -c shared_buffers=64MB"
runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres -D "$pg/data" >/dev/null
runuser -u postgres -- "$pgctl" -D "$pg/data" -w -l "$pg/log" -o "$opts" start >/dev/null
"$pgbin/pgbench" -h "$pg/sock" -U postgres -i -s 4 -q postgres >/dev/null 2>&1
runuser -u postgres -- "$pgctl" -D "$pg/data" -w -m fast stop >/dev/null
ready() { for _ in $(seq 300); do "$pgbin/pg_isready" -q -h "$pg/sock" -U postgres && return; sleep 0.1; done; return 1; }
bench() { "$pgbin/pgbench" -h "$pg/sock" -U postgres -c 4 -j 2 -T "$secs" postgres 2>/dev/null | awk '/^tps/{print $3}'; }
declare -A tps=([native]="" [crash]="")
for r in $(seq "$rounds"); do
    runuser -u postgres -- "$pgctl" -D "$pg/data" -w -l "$pg/log" -o "$opts" start >/dev/null
    tps[native]+="$(bench) "
    runuser -u postgres -- "$pgctl" -D "$pg/data" -w -m fast stop >/dev/null
    "$iochaos" run --path "$pg/data" --crash-mode -- runuser -u postgres -- "$pgbin/postgres" -D "$pg/data" $opts 2>/dev/null &
    run=$!
    ready
    tps[crash]+="$(bench) "
    runuser -u postgres -- "$pgctl" -D "$pg/data" -w -m fast stop >/dev/null
    wait "$run" || true
done
n=$(median <<<"${tps[native]}"); c=$(median <<<"${tps[crash]}")
printf '%-34s %10s %10s %10s   crash/native %.2f\n' "pgbench TPS (4 clients, ${secs}s)" "$n" "$c" - "$(echo "$c / $n" | bc -l)"
