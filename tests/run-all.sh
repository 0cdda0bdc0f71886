#!/bin/sh
# The CPU tier: every cmocka unit test, then the integration cases against
# the simulated driver. Ends with one line "N passed, N failed".
# Usage: tests/run-all.sh BUILD_DIR
set -u
B=$(cd "${1:-build}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIB=$B/libnvipcfix.so
SIM=$B/sim
T=$B/tests
OUT=$(mktemp -d /tmp/nvipcfix-tests.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
passed=0
failed=0

# ---- unit tests (cmocka) ------------------------------------------------
for t in "$T"/test_*; do
    LD_LIBRARY_PATH=$SIM "$t" >"$OUT/unit.log" 2>&1
    rc=$?
    cat "$OUT/unit.log"
    p=$(sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$OUT/unit.log" | tail -n 1)
    f=$(sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$OUT/unit.log" | tail -n 1)
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAILED: $(basename "$t") exited $rc"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done

# ---- integration --------------------------------------------------------
# check NAME EXPECTED_STATUS [VAR=VALUE ...] -- COMMAND...
# Runs COMMAND with the variables set; stdout and stderr land in
# $OUT/out and $OUT/err for the extra assertions that follow.
current=""
check() {
    current=$1
    expect=$2
    shift 2
    while [ "$1" != "--" ]; do
        export "$1"
        shift
    done
    shift
    env LD_LIBRARY_PATH="$SIM" ${PRE:+LD_PRELOAD="$PRE"} "$@" >"$OUT/out" 2>"$OUT/err"
    rc=$?
    if [ "$rc" -eq "$expect" ]; then
        ok=1
    else
        ok=0
        why="exit status $rc, expected $expect"
    fi
}
# extra assertion on the last case's output
expect_in() { # FILE TEXT
    grep -q -- "$2" "$OUT/$1" || { ok=0; why="'$2' not in $1"; }
}
expect_empty() { # FILE
    [ ! -s "$OUT/$1" ] || { ok=0; why="$1 not empty: $(head -c 300 "$OUT/$1")"; }
}
done_case() {
    if [ "$ok" -eq 1 ]; then
        passed=$((passed + 1))
        echo "[ PASSED ] integration: $current"
    else
        failed=$((failed + 1))
        echo "[ FAILED ] integration: $current: $why"
        sed 's/^/    | /' "$OUT/out" "$OUT/err" | head -20
    fi
    unset SIMCUDA_OLD_DRIVER SIMCUDA_HANDLE_TAIL SIMCUDA_FAIL SIMCUDA_DEVICES NVIPCFIX_MODE \
        NVIPCFIX_LOG NVIPCFIX_STATS NVIPCFIX_SELF_OPEN LEGACY_IPC_DEVICE \
        LEGACY_IPC_IMPORTER_DEVICE 2>/dev/null
}

for road in direct dlsym procaddr; do
    PRE="" check "$road: the bug shows without the preload" 1 -- "$T/legacy_ipc" --road $road
    expect_in out "WRONG"; done_case
    PRE=$LIB check "$road: right with the preload, silent" 0 -- "$T/legacy_ipc" --road $road
    expect_in out "read 10/10 right, written 10/10 right, 0 stray bytes"
    expect_in out "base handles untagged 2/2, mappings left 0 -> CORRECT"; expect_empty err; done_case
done
PRE=$LIB check "open twice, close twice" 0 -- "$T/legacy_ipc" --reopen
done_case
PRE="" check "two devices: exporter on 1, importer on 0, bug without" 1 SIMCUDA_DEVICES=2 \
    LEGACY_IPC_DEVICE=1 LEGACY_IPC_IMPORTER_DEVICE=0 -- "$T/legacy_ipc"
done_case
PRE=$LIB check "two devices: exporter on 1, importer on 0, right with" 0 SIMCUDA_DEVICES=2 \
    LEGACY_IPC_DEVICE=1 LEGACY_IPC_IMPORTER_DEVICE=0 -- "$T/legacy_ipc" --reopen
done_case
PRE="" check "old driver (ALREADY_MAPPED) fails without the preload" 2 SIMCUDA_OLD_DRIVER=1 -- \
    "$T/legacy_ipc" --reopen
done_case
PRE=$LIB check "old driver works with the preload" 0 SIMCUDA_OLD_DRIVER=1 -- \
    "$T/legacy_ipc" --reopen --road procaddr
done_case
PRE="" check "open in the exporting process fails natively" 2 -- "$T/legacy_ipc" --self
expect_in err "open failed: error 201"; done_case
PRE=$LIB check "open in the exporting process gives its own pointer" 0 -- \
    "$T/legacy_ipc" --self --reopen
expect_in out "CORRECT"; done_case
PRE=$LIB check "NVIPCFIX_SELF_OPEN=0 restores the native error" 2 NVIPCFIX_SELF_OPEN=0 -- \
    "$T/legacy_ipc" --self
expect_in err "open failed: error 201"; done_case
PRE=$LIB check "driver writing bytes 56-63: native behaviour, one warning" 1 \
    SIMCUDA_HANDLE_TAIL=1 -- "$T/legacy_ipc"
expect_in err "nvipcfix\[[0-9]*\]: warning: this driver writes bytes 56-63"
[ "$(grep -c 'writes bytes 56-63' "$OUT/err")" -eq 1 ] || { ok=0; why="not one warning in the exporter"; }
[ "$(grep -c 'did not write; it is passed to the driver unchanged' "$OUT/err")" -eq 1 ] ||
    { ok=0; why="not one warning in the importer"; }
done_case
PRE=$LIB check "mode off: pure pass-through" 1 NVIPCFIX_MODE=off -- "$T/legacy_ipc"
expect_empty err; done_case
PRE=$LIB check "mode audit: changes nothing, logs interior exports" 1 NVIPCFIX_MODE=audit \
    NVIPCFIX_LOG=info -- "$T/legacy_ipc"
expect_in err "audit: export of 0x[0-9a-f]* is 512 bytes into block"
expect_in err "audit: open of a native handle"; done_case
PRE=$LIB check "bad setting: one warning, default kept" 0 NVIPCFIX_MODE=fixed -- "$T/legacy_ipc"
expect_in err "NVIPCFIX_MODE='fixed' is not one of the accepted values; using 'fix'"
[ "$(grep -c "NVIPCFIX_MODE='fixed'" "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning per process"; }
done_case
PRE=$LIB check "statistics line at exit" 0 NVIPCFIX_STATS=1 -- "$T/legacy_ipc" --reopen
expect_in err "stats: exports=10 (with offset 8) opens=0"
expect_in err "stats: exports=0 (with offset 0) opens=20 (real 10, table hits 10) closes=20 (real 10) errors=0"
done_case
PRE="" check "dlsym(RTLD_NEXT) without the preload" 0 -- "$T/rtld_next"
cp "$OUT/out" "$OUT/native"; expect_in out "next=2"; done_case
PRE=$LIB check "dlsym(RTLD_NEXT) resolves relative to the real caller" 0 -- "$T/rtld_next"
cmp -s "$OUT/out" "$OUT/native" || { ok=0; why="output differs from native"; }
expect_empty err; done_case
PRE="" check "a process without CUDA: reference run" 0 -- sh -c 'ls / | wc -l; echo done'
cp "$OUT/out" "$OUT/native"; done_case
PRE=$LIB check "a process without CUDA: same output, nothing printed" 0 -- \
    sh -c 'ls / | wc -l; echo done'
cmp -s "$OUT/out" "$OUT/native" || { ok=0; why="output differs from native"; }
expect_empty err; done_case

PRE="" check "scripts/regress reports what the library saw" 0 -- \
    "$ROOT/scripts/regress" --lib "$LIB" --audit -- "$T/legacy_ipc"
expect_in out "without nvipcfix: exit 1"
expect_in out "with nvipcfix:    exit 0, output differs from the run without"
expect_in out "2 process(es): exports 10 (8 with an offset), opens 10"
expect_in out "audit mode:       exit 1; 8 exports of interior pointers (offsets: 512 4096 65537"
done_case

# The built library: only libc needed, only the entry points exported, no
# named version node (it would fail to interpose versioned references).
current="library links no CUDA library and exports only the entry points"
ok=1
if readelf -d "$LIB" | grep NEEDED | grep -q -e libcuda -e libcudart; then
    ok=0; why="DT_NEEDED on a CUDA library"
fi
exports=$(readelf --dyn-syms -W "$LIB" | awk '$7 != "UND" && $5 == "GLOBAL" {print $8}' | sort | tr '\n' ' ')
want="cuGetProcAddress cuGetProcAddress_v2 cuIpcCloseMemHandle cuIpcGetMemHandle cuIpcOpenMemHandle cuIpcOpenMemHandle_v2 dlsym "
[ "$exports" = "$want" ] || { ok=0; why="exports are: $exports"; }
readelf -V "$LIB" | grep -q "Version definition" && { ok=0; why="has a version definition"; }
echo >"$OUT/out"; echo >"$OUT/err"
done_case

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
