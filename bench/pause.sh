#!/usr/bin/env bash
# The pause a workload feels from `iochaos inject` / `recover` on a real ChaosFS mount.
# A workload (C, built here) holds FILES files open under a directory; THREADS threads each
# write a byte to one of them every 1 ms and keep the longest gap between two writes. Per
# case: the longest gap in an idle window, then during `iochaos inject` and during
# `iochaos recover`, each minus idle; and, in the same run, the same swap with no FUSE at all
# (fdswap onto a bind mount of the directory over itself) as the ratio's base. Also the
# wall time of inject and recover. Run as root:  bash bench/pause.sh
# (REPS=n rounds per case, default 5, medians; IOCHAOS=path to compare another build.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${IOCHAOS:-}" ]; then cargo build --release -q -p iochaos; fi
cargo build --release -q -p fdswap --bins
B="${IOCHAOS:-$CARGO_TARGET_DIR/release/iochaos}"
T="$CARGO_TARGET_DIR/release/fdswap-testee"
REPS=${REPS:-5}
tmp=$(mktemp -d)
export IOCHAOS_RUN_DIR="$tmp/run"
w=
cleanup() {
    [ -n "$w" ] && kill "$w" 2>/dev/null || true
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

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
# The workload's longest gap (µs) since the last reset, over a window of `s` seconds.
gap_after() {
    rm -f "$tmp/gap"; kill -USR2 "$w"
    while [ ! -s "$tmp/gap" ]; do sleep 0.005; done
    cat "$tmp/gap"
}
reset() { kill -USR1 "$w"; sleep 0.01; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }

echo "pause felt by a workload writing every 1 ms per thread; medians of $REPS; $(nproc) CPUs, kernel $(uname -r)"
printf '%6s %7s | %9s %9s %9s %7s | %9s %9s | %11s %12s\n' files threads idle \
    inject recover base ratio inj-wall rec-wall "inject/5ms" "recover/5ms"
for case in "1000 16" "10000 64"; do
    set -- $case; files=$1 threads=$2
    vol="$tmp/$files/vol"; mkdir -p "$vol"
    unshare --mount --propagation private "$tmp/w" "$vol" "$files" "$threads" "$tmp/gap" > "$tmp/ready" &
    w=$!
    while ! grep -q READY "$tmp/ready" 2>/dev/null; do sleep 0.01; done
    idle=() inj=() rec=() base=() iw=() rw=()
    for _ in $(seq "$REPS"); do
        reset; sleep 0.3; idle+=($(gap_after))
        reset; t0=$(now_us)
        id=$("$B" inject --pid "$w" --path "$vol" --errno EIO --ops fsync)
        t1=$(now_us); sleep 0.05; inj+=($(gap_after)); iw+=($((t1 - t0)))
        reset; t0=$(now_us)
        "$B" recover "$id" >/dev/null
        t1=$(now_us); sleep 0.05; rec+=($(gap_after)); rw+=($((t1 - t0)))
        # The same swap with no FUSE: a bind mount of the directory over itself.
        nsenter -t "$w" -m mount --bind "$vol" "$vol"
        reset; "$T" swap "$w" "$vol" >/dev/null; sleep 0.05; base+=($(gap_after))
        nsenter -t "$w" -m umount -l "$vol"
    done
    i=$(printf '%s\n' "${idle[@]}" | median)
    a=$(printf '%s\n' "${inj[@]}" | median); a=$((a - i))
    r=$(printf '%s\n' "${rec[@]}" | median); r=$((r - i))
    b=$(printf '%s\n' "${base[@]}" | median); b=$((b - i))
    iwm=$(printf '%s\n' "${iw[@]}" | median); rwm=$(printf '%s\n' "${rw[@]}" | median)
    target=$([ "$files" = 1000 ] && echo 5000 || echo 30000)
    printf '%6s %7s | %6s ms %6s ms %6s ms %6s ms %6sx | %6s ms %6s ms | %11s %12s\n' \
        "$files" "$threads" "$(ms "$i")" "$(ms "$a")" "$(ms "$r")" "$(ms "$b")" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')" \
        "$(ms "$iwm")" "$(ms "$rwm")" \
        "$(awk -v a="$a" -v t="$target" 'BEGIN {printf "%.2f", a / t}')" \
        "$(awk -v a="$r" -v t="$target" 'BEGIN {printf "%.2f", a / t}')"
    kill "$w"; wait "$w" 2>/dev/null || true; w=
done
echo "(pause columns: longest gap minus idle; base: fdswap onto a bind mount, no FUSE; ratio: inject / base;"
echo " inject/5ms, recover/5ms: pause / target (5 ms at 1,000 fds, 30 ms at 10,000); ≤ 1 meets it)"
