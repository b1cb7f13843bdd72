#!/usr/bin/env bash
# The pause a workload feels from `iochaos inject` / `recover` on a real ChaosFS mount.
# A workload (C, built here) holds FILES files open under a directory; THREADS threads each
# write a byte to one of them every 1 ms and keep the longest gap between two writes. Per
# case: the longest gap in an idle window, then during `iochaos inject` and during
# `iochaos recover`, each minus idle; and, in the same run, the same swap with no FUSE at all
# (fdswap onto a bind mount of the directory over itself) as the ratio's base. Also the
# wall time of inject and recover. Run as root:  bash bench/pause.sh
# (REPS=n rounds per case, default 5, medians; CASES="FILES THREADS,..." (default
# "1000 16,10000 64"); BEFORE=path of another iochaos build, run interleaved with this one
# in the same rounds, e.g. main's, for a before/after table; REQUESTS=1: also count, in the
# first round, the FUSE requests of inject and recover per opcode, split into those the
# target sent — inside its pause, from the stub — and those others sent (tracefs event
# fuse:fuse_request_send, filtered on the ChaosFS connection).)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p iochaos -p fdswap --bins
B="$CARGO_TARGET_DIR/release/iochaos"
bins=("$B")
names=(this)
if [ -n "${BEFORE:-}" ]; then bins=("$BEFORE" "$B"); names=(before this); fi
T="$CARGO_TARGET_DIR/release/fdswap-testee"
REPS=${REPS:-5}
tmp=$(mktemp -d)
export IOCHAOS_RUN_DIR="$tmp/run"
w=
tr=
cleanup() {
    [ -n "$w" ] && kill "$w" 2>/dev/null || true
    if [ -n "$tr" ]; then
        rmdir "$tr/instances/pause$$" 2>/dev/null || true
        [ "$tr" = "$tmp/tracefs" ] && umount "$tr" 2>/dev/null || true
    fi
    "$B" recover --all >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

cat > "$tmp/w.c" <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
static int *fds; static int nthreads; static volatile long maxgap[1024];
static volatile sig_atomic_t reset_req, report_req;
static long now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000L + t.tv_nsec / 1000; }
static void *run(void *a) {
    long k = (long)a, last = now_us();
    struct timespec ms = {0, 1000000};
    for (;;) {
        nanosleep(&ms, NULL);
        if (pwrite(fds[k], "x", 1, 0) != 1) { perror("pwrite"); exit(1); }
        long t = now_us();
        if (t - last > maxgap[k]) maxgap[k] = t - last;
        last = t;
    }
    return NULL;
}
static void on_usr1(int s) { (void)s; reset_req = 1; }
static void on_usr2(int s) { (void)s; report_req = 1; }
int main(int argc, char **argv) {
    const char *dir = argv[1]; int n = atoi(argv[2]); nthreads = atoi(argv[3]);
    struct rlimit r; getrlimit(RLIMIT_NOFILE, &r); r.rlim_cur = r.rlim_max; setrlimit(RLIMIT_NOFILE, &r);
    int m = n > nthreads ? n : nthreads;
    fds = calloc(m, sizeof *fds);
    char p[4096];
    for (int i = 0; i < m; i++) {
        snprintf(p, sizeof p, "%s/f%d", dir, i);
        if ((fds[i] = open(p, O_RDWR | O_CREAT, 0644)) < 0) { perror(p); return 1; }
    }
    signal(SIGUSR1, on_usr1); signal(SIGUSR2, on_usr2);
    for (long k = 0; k < nthreads; k++) { pthread_t t; pthread_create(&t, NULL, run, (void *)k); }
    printf("READY\n"); fflush(stdout);
    for (;;) {
        usleep(2000);
        if (reset_req) { reset_req = 0; for (int k = 0; k < nthreads; k++) maxgap[k] = 0; }
        if (report_req) {
            report_req = 0; long x = 0;
            for (int k = 0; k < nthreads; k++) if (maxgap[k] > x) x = maxgap[k];
            char b[64]; int l = snprintf(b, sizeof b, "%ld\n", x);
            FILE *f = fopen(argv[4], "w"); fwrite(b, 1, l, f); fclose(f);
        }
    }
}
C
cc -O2 -pthread -o "$tmp/w" "$tmp/w.c"

# REQUESTS=1: a tracefs instance of our own recording every FUSE request sent.
if [ -n "${REQUESTS:-}" ]; then
    if [ -d /sys/kernel/tracing/instances ]; then tr=/sys/kernel/tracing
    else mkdir -p "$tmp/tracefs"; mount -t tracefs none "$tmp/tracefs"; tr="$tmp/tracefs"; fi
    ti="$tr/instances/pause$$"; mkdir "$ti"
    echo 16384 > "$ti/buffer_size_kb"
    echo 1 > "$ti/events/fuse/fuse_request_send/enable"
fi
trace_start() { [ -z "$tr" ] || echo > "$ti/trace"; }
# Requests per opcode on the ChaosFS connection $conn (the mount's device minor), by sender:
# a thread of the workload (the stub, inside the pause) or anyone else.
trace_conn() {
    [ -z "$tr" ] && return
    conn=$(awk -v p="$vol" '$5 == p {split($3, d, ":"); c = d[2]} END {print c}' "/proc/$w/mountinfo")
}
trace_count() {
    [ -z "$tr" ] && return
    awk -v c="$conn" -v tids=" $(ls "/proc/$w/task" | tr '\n' ' ')" -v what="$1" '
        / fuse_request_send: / {
            n1 = split($1, t, "-"); pid = t[n1]
            for (i = 1; i <= NF; i++) {
                if ($i == "connection") cn = $(i + 1)
                if ($i == "opcode") op = $(i + 2)
            }
            if (cn != c) next
            gsub(/[()]/, "", op); sub(/^FUSE_/, "", op)
            n[(index(tids, " " pid " ") ? "target:" : "others:") op]++
        }
        END { printf "  %s FUSE requests:", what; for (k in n) printf " %s=%d", k, n[k]; print "" }
    ' "$ti/trace"
}

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
# The workload's longest gap (µs) since the last reset.
gap_now() {
    rm -f "$tmp/gap"; kill -USR2 "$w"
    while [ ! -s "$tmp/gap" ]; do sleep 0.005; done
    cat "$tmp/gap"
}
reset() { kill -USR1 "$w"; sleep 0.01; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
# median of a list minus idle, in ms
med_ms() { local m; m=$(printf '%s\n' "$@" | median); ms $((m - idle_med)); }

echo "pause felt by a workload writing every 1 ms per thread (longest gap minus idle), medians of"
echo "$REPS rounds; $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%6s %7s %-7s | %8s %9s %9s %9s | %9s %9s | %7s %7s\n' files threads build idle \
    inject recover "no-FUSE" "inj wall" "rec wall" "inj/tgt" "rec/tgt"
IFS=, read -ra cases <<< "${CASES:-1000 16,10000 64}"
for case in "${cases[@]}"; do
    read -r files threads <<< "$case"
    vol="$tmp/$files/vol"; mkdir -p "$vol"
    rm -f "$tmp/ready"
    unshare --mount --propagation private "$tmp/w" "$vol" "$files" "$threads" "$tmp/gap" \
        > "$tmp/ready" &
    w=$!
    while ! grep -q READY "$tmp/ready" 2>/dev/null; do sleep 0.01; done
    declare -A inj=() rec=() iw=() rw=()
    idle=() base=() failed=
    for round in $(seq "$REPS"); do
        reset; sleep 0.3; idle+=("$(gap_now)")
        for k in "${!bins[@]}"; do
            reset; if [ "$round" = 1 ]; then trace_start; fi; t0=$(now_us)
            if ! id=$("${bins[$k]}" inject --pid "$w" --path "$vol" --errno EIO --ops fsync); then
                failed="${names[$k]}"; break 2
            fi
            t1=$(now_us); sleep 0.05; inj[$k]+=" $(gap_now)"; iw[$k]+=" $((t1 - t0))"
            if [ "$round" = 1 ]; then trace_conn; trace_count "${names[$k]} inject"; fi
            reset; if [ "$round" = 1 ]; then trace_start; fi; t0=$(now_us)
            "${bins[$k]}" recover "$id" >/dev/null
            t1=$(now_us); sleep 0.05; rec[$k]+=" $(gap_now)"; rw[$k]+=" $((t1 - t0))"
            if [ "$round" = 1 ]; then trace_count "${names[$k]} recover"; fi
        done
        # The same swap with no FUSE: a bind mount of the directory over itself; then back.
        nsenter -t "$w" -m mount --bind "$vol" "$vol"
        m=$(awk -v p="$vol" '$5 == p {m=$1} END {print m}' "/proc/$w/mountinfo")
        reset; "$T" swap "$w" "$vol" >/dev/null; sleep 0.05; base+=("$(gap_now)")
        nsenter -t "$w" -m umount -l "$vol"
        "$T" swap "$w" "$vol" --from-mnt "$m" >/dev/null
    done
    if [ -n "$failed" ]; then
        echo "$files files, $threads threads: inject ($failed) failed (above)"
    else
        idle_med=$(printf '%s\n' "${idle[@]}" | median)
        target=$(( files <= 1000 ? 5000 : 30000 ))
        for k in "${!bins[@]}"; do
            # shellcheck disable=SC2086
            a=$(printf '%s\n' ${inj[$k]} | median); r=$(printf '%s\n' ${rec[$k]} | median)
            # shellcheck disable=SC2086
            printf '%6s %7s %-7s | %5s ms %6s ms %6s ms %6s ms | %6s ms %6s ms | %7s %7s\n' \
                "$files" "$threads" "${names[$k]}" "$(ms "$idle_med")" \
                "$(ms $((a - idle_med)))" "$(ms $((r - idle_med)))" "$(med_ms "${base[@]}")" \
                "$(ms "$(printf '%s\n' ${iw[$k]} | median)")" \
                "$(ms "$(printf '%s\n' ${rw[$k]} | median)")" \
                "$(awk -v a=$((a - idle_med)) -v t="$target" 'BEGIN {printf "%.2f", a / t}')" \
                "$(awk -v a=$((r - idle_med)) -v t="$target" 'BEGIN {printf "%.2f", a / t}')"
        done
    fi
    unset inj rec iw rw
    kill "$w"; wait "$w" 2>/dev/null || true; w=
done
echo "(no-FUSE: fdswap onto a bind mount of the directory over itself, same rounds; inj/tgt,"
echo " rec/tgt: pause / target (5 ms up to 1,000 fds, 30 ms above), <= 1 meets it)"
