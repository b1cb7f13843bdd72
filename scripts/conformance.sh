#!/usr/bin/env bash
# Conformance: with a rule that selects nothing, ChaosFS must pass the POSIX suite (pjdfstest)
# and the data-integrity exerciser (fsx) exactly as the backing filesystem does. Both run on a
# native directory and on the same kind of directory under `iochaos run` (ChaosFS mounted over
# it, a rule selecting nothing); the sets of
# failing pjdfstest cases must be identical and fsx must succeed on both.
# Needs root, /dev/fuse, pjdfstest and fsx (cargo install pjdfstest fsx), a user `tests`.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
iochaos=${IOCHAOS:-$here/target/release/iochaos}
[ -x "$iochaos" ] || cargo build --release --quiet -p iochaos
fsx_ops=${FSX_OPS:-20000}

id tests >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin tests

work=$(mktemp -d /tmp/iochaos-conformance.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
mkdir -m 0777 "$work/native" "$work/chaosfs"
# A spec needs at least one rule: this one selects no file pjdfstest or fsx makes, so every file is
# served as with no rules (kernel passthrough, cached metadata).
echo '{"rules":[{"glob":"iochaos-conformance-never","errno":"EIO"}]}' > "$work/spec.json"

failures() { grep -E '[[:space:]](FAILED|failed)$' "$1" | grep -v '^Error:' | awk '{print $1}' | sort || true; }
summary() { grep '^Summary:' "$1" || echo "no summary (suite crashed?)"; }

echo "== pjdfstest, native"
(cd "$work/native" && pjdfstest -c "$here/scripts/pjdfstest.toml" -p "$work/native" >"$work/pjd-native.txt" 2>&1) || true
summary "$work/pjd-native.txt"
echo "== pjdfstest, ChaosFS (no file selected)"
"$iochaos" run --path "$work/chaosfs" --spec "$work/spec.json" -- \
    sh -c "cd '$work/chaosfs' && pjdfstest -c '$here/scripts/pjdfstest.toml' -p '$work/chaosfs'" \
    >"$work/pjd-chaosfs.txt" 2>&1 || true
summary "$work/pjd-chaosfs.txt"

skips() { grep -E '[[:space:]]skipped$' "$1" | awk '{print $1}' | sort || true; }
# Skips are reported, not judged: pathconf(LINK_MAX) is unknown to glibc on any FUSE filesystem
# (it maps limits by f_type, and FUSE reports its own), so link::link_count_max is skipped there.
if ! diff <(skips "$work/pjd-native.txt") <(skips "$work/pjd-chaosfs.txt") >"$work/skip-diff"; then
    echo "pjdfstest cases skipped only on one side (< native, > ChaosFS):"
    grep '^[<>]' "$work/skip-diff" || true
fi
failures "$work/pjd-native.txt" >"$work/fail-native"
failures "$work/pjd-chaosfs.txt" >"$work/fail-chaosfs"
status=0
if ! grep -q '^Summary:' "$work/pjd-chaosfs.txt"; then
    tail -20 "$work/pjd-chaosfs.txt"
    status=1
elif ! diff -u "$work/fail-native" "$work/fail-chaosfs"; then
    echo "pjdfstest: ChaosFS fails differently from the native filesystem (diff above: - native, + ChaosFS)"
    grep -A3 -E '[[:space:]]FAILED$' "$work/pjd-chaosfs.txt" | head -60 || true
    # A case only ChaosFS failed is run again, twice, on its own. One seen to race with the
    # suite's own timing (open::etxtbsy, about 1 run in 15: it execs a file and opens it for
    # writing at once) is reported as FLAKY when a rerun passes; a case that fails every time
    # fails the check. Cases only native failed fail it at once.
    status=0
    if [ -n "$(comm -23 "$work/fail-native" "$work/fail-chaosfs")" ]; then
        status=1
    fi
    for case in $(comm -13 "$work/fail-native" "$work/fail-chaosfs"); do
        passed=no
        for try in 1 2; do
            if "$iochaos" run --path "$work/chaosfs" --spec "$work/spec.json" -- \
                sh -c "cd '$work/chaosfs' && pjdfstest -c '$here/scripts/pjdfstest.toml' -p '$work/chaosfs' '$case'" \
                >"$work/rerun.txt" 2>&1 && grep -qE '^Summary: 0 failed, [0-9]+ skipped, [1-9][0-9]* passed' "$work/rerun.txt"; then
                passed=yes
                break
            fi
        done
        if [ $passed = yes ]; then
            echo "FLAKY: $case failed once under ChaosFS and passed when run again (rerun $try)"
        else
            echo "pjdfstest: $case fails under ChaosFS every time"
            status=1
        fi
    done
fi

for where in native chaosfs; do
    echo "== fsx, $where ($fsx_ops operations, seed 42)"
    cmd=(fsx -q -f "$here/scripts/fsx.toml" -N "$fsx_ops" -S 42 -P "$work" "$work/$where/fsx.data")
    if [ $where = chaosfs ]; then
        cmd=("$iochaos" run --path "$work/chaosfs" --spec "$work/spec.json" -- "${cmd[@]}")
    fi
    if "${cmd[@]}" >"$work/fsx-$where.txt" 2>&1; then
        tail -1 "$work/fsx-$where.txt"
    else
        tail -20 "$work/fsx-$where.txt"
        echo "fsx failed on $where"
        status=1
    fi
done

if [ $status = 0 ]; then
    echo "conformance: 1 passed, 0 failed"
else
    echo "conformance: 0 passed, 1 failed"
fi
exit $status
