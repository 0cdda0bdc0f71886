#!/bin/sh
# The CPU tier: every cmocka unit test, then the integration cases against
# the simulated driver. One line per case (with its time when 10 s or more);
# a failing case is followed by its output. Ends with one line
# "N passed, N failed[, N skipped]".
# Usage: tests/run-all.sh BUILD_DIR
set -u
B=$(cd "${1:-build}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIB=$B/libnvipcfix.so
SIM=$B/sim
T=$B/tests
OUT=$(mktemp -d "${TMPDIR:-/tmp}/nvipcfix-tests.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
trap 'exit 130' INT HUP TERM # (the EXIT trap still cleans up)
passed=0
failed=0
skipped=0
# Every case starts from the same environment: nothing of ours inherited
# from the caller, and no case's settings left for the next (each runs in a
# subshell of its own). What differs by build is set here, once.
for v in $(env | sed -n 's/^\(\(NVIPCFIX\|SIMCUDA\|LEGACY_IPC\|VMM_IPC\|GPU_SHARE\|QUOTA_PROBE\)_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$v"
done
unset LD_PRELOAD
# Sanitizer builds (make test-asan, test-tsan): the runtime must come first
# in LD_PRELOAD, and valgrind cannot run them.
SAN_PRE=${SANITIZER_PRELOAD:-}
if [ -n "$SAN_PRE" ]; then
    export SIMCUDA_VA_GIB=1 # leave room for the shadow memory
    export ASAN_OPTIONS=${ASAN_OPTIONS:-verify_asan_link_order=0:detect_leaks=1}
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:report_signal_unsafe=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
# make test-aarch64: every aarch64 program starts through an emulator
# (qemu-user), which gets LD_PRELOAD and LD_LIBRARY_PATH with -E, never in
# its own environment; test programs do the same for their children. A small
# simulated device keeps the emulated address space cheap.
# Deadlines (`check ... -- timeout N`, and test_alarm() in the programs)
# detect hangs, never speed: they stretch by TEST_TIME_SCALE where programs
# run slower.
RUNNER=${TEST_RUNNER:-}
export TEST_TIME_SCALE=1
[ -n "$SAN_PRE" ] && TEST_TIME_SCALE=3
if [ -n "$RUNNER" ]; then
    export TEST_PROGRAM_RUNNER="$RUNNER" SIMCUDA_VA_GIB=1
    TEST_TIME_SCALE=10
fi
skip() { # NAME WHY
    skipped=$((skipped + 1))
    printf '[ SKIPPED ] integration: %s: %s\n' "$1" "$2" | tee -a "$OUT/skipped"
}

# ---- unit tests (cmocka) ------------------------------------------------
# One line per test function, in every group of the program. A test that
# skips prints "skipped: WHY" first (tests/common/unit_skip.h); a failing
# one is followed by its output.
unit_lines() { # PROGRAM-NAME < cmocka output
    awk -v prog="$1" '
        /^\[==========\] .* run\.$/ { done = 1 } # the group summary follows
        /^\[==========\] .*Running / { done = 0; next } # the next group
        done { next }
        /^\[ RUN      \] / { name = $4; buf = ""; why = "no reason printed"; next }
        /^\[       OK \] / { print "P [ PASSED ] unit: " prog ": " name; name = ""; next }
        /^\[  SKIPPED \] / { print "S [ SKIPPED ] unit: " prog ": " name ": " why; name = ""; next }
        /^\[  FAILED  \] / { print "F [ FAILED ] unit: " prog ": " name; printf "%s", buf; name = ""; next }
        name != "" {
            line = $0; sub(/^[ \t]+/, "", line)
            if (line ~ /^skipped: /) { why = substr(line, 10) }
            buf = buf "    | " $0 "\n"
        }'
}
for t in "$T"/test_*; do
    if [ -n "$RUNNER" ]; then
        $RUNNER -E LD_LIBRARY_PATH="$SIM" "$t" >"$OUT/unit.log" 2>&1
    else
        LD_LIBRARY_PATH=$SIM "$t" >"$OUT/unit.log" 2>&1
    fi
    rc=$?
    unit_lines "$(basename "$t")" <"$OUT/unit.log" >"$OUT/unit.lines"
    p=$(grep -c '^P ' "$OUT/unit.lines")
    f=$(grep -c '^F ' "$OUT/unit.lines")
    s=$(grep -c '^S ' "$OUT/unit.lines")
    sed 's/^[PFS] //' "$OUT/unit.lines"
    sed -n 's/^S //p' "$OUT/unit.lines" >>"$OUT/skipped" # listed again at the end
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "[ FAILED ] unit: $(basename "$t"): exited $rc"
        sed 's/^/    | /' "$OUT/unit.log" | tail -n 30
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
done

# ---- integration --------------------------------------------------------
# check NAME EXPECTED_STATUS [VAR=VALUE ...] -- [timeout SECONDS] COMMAND...
# Runs COMMAND in a subshell with the variables set (LIBPATH: the library
# path, default the simulated driver's; PRE, given before check: the
# libraries to preload); stdout and stderr land in $OUT/out and $OUT/err for
# the extra assertions that follow.
current=""
check() {
    current=$1
    case_start=$(date +%s)
    expect=$2
    shift 2
    (
        while [ "$1" != "--" ]; do
            export "$1"
            shift
        done
        shift
        limit=""
        if [ "$1" = timeout ]; then
            limit="timeout $(($2 * TEST_TIME_SCALE))"
            shift 2
        fi
        lp=${LIBPATH:-$SIM}
        case $RUNNER:$1 in
        :*|*:) set -- env LD_LIBRARY_PATH="$lp" ${PRE:+LD_PRELOAD="$SAN_PRE${SAN_PRE:+ }$PRE"} "$@" ;;
        *:"$B"/*) set -- $RUNNER -E LD_LIBRARY_PATH="$lp" ${PRE:+-E LD_PRELOAD="$PRE"} "$@" ;;
        *) set -- env LD_LIBRARY_PATH="$lp" "$@" ;; # a host program: nothing of ours to preload
        esac
        exec $limit "$@" >"$OUT/out" 2>"$OUT/err"
    )
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
    took=""
    [ -n "${case_start:-}" ] && [ $(($(date +%s) - case_start)) -ge 10 ] &&
        took=" ($(($(date +%s) - case_start)) s)"
    case_start=""
    if [ "$ok" -eq 1 ]; then
        passed=$((passed + 1))
        printf '[ PASSED ] integration: %s%s\n' "$current" "$took"
    else
        failed=$((failed + 1))
        printf '[ FAILED ] integration: %s: %s%s\n' "$current" "$why" "$took"
        sed 's/^/    | /' "$OUT/out" "$OUT/err" | head -40
    fi
}

for road in direct dlsym procaddr procaddr-v1; do
    PRE="" check "$road, baseline: the bug shows without the preload" 1 -- "$T/legacy_ipc" --road $road
    expect_in out "right 1, wrong 9, failed 0;"; expect_in out "WRONG"; done_case
    PRE=$LIB check "$road: right with the preload, silent" 0 -- "$T/legacy_ipc" --road $road
    expect_in out "right 10, wrong 0, failed 0;"
    expect_in out "read 10/10 right, written 10/10 right, 0 stray bytes"
    expect_in out "base handles untagged 2/2, mappings left 0 -> CORRECT"; expect_empty err; done_case
done
PRE=$LIB check "open twice, close twice" 0 -- "$T/legacy_ipc" --reopen
expect_in out "right 10, wrong 0, failed 0;"; expect_in out "mappings left 0 -> CORRECT"; done_case
# Loaded with dlopen, used, unloaded with dlclose: the exit report that the
# first IPC call registered runs at dlclose (from .fini_array: the library
# has no DT_FINI), once, and the process exits cleanly after.
if [ -n "$SAN_PRE" ]; then # with DT_FINI as well (checked with LIB_FINI=)
    skip "dlopen, an export, dlclose: the exit report at dlclose, once, a clean exit" \
        "ThreadSanitizer runs an unloaded library's exit handler at exit; LeakSanitizer reports the tables an unloaded library leaves"
else
    PRE="" check "dlopen, an export, dlclose: the exit report at dlclose, once, a clean exit" 0 \
        NVIPCFIX_STATS=1 -- "$T/dlopen_close" "$LIB"
    awk '/export through the library: ok/ { a = NR } /stats: exports=1 \(with offset 1\)/ { b = NR; n++ }
         /^unloaded$/ { c = NR } END { exit !(a && b > a && c > b && n == 1) }' "$OUT/err" ||
        { ok=0; why="not the export, the report once, then unloaded: $(head -c 400 "$OUT/err")"; }
    done_case
fi
if command -v readelf >/dev/null 2>&1; then
    PRE="" check "the library: no DT_FINI, its destructors in .fini_array" 0 -- readelf -d "$LIB"
    ! grep -q '(FINI) ' "$OUT/out" || { ok=0; why="DT_FINI written"; }
    expect_in out '(FINI_ARRAY) '
    done_case
else
    skip "the library: no DT_FINI, its destructors in .fini_array" "no readelf"
fi
# cuGetProcAddress hands out the driver's own functions (as measured on the
# H200), so only nvipcfix's own cuGetProcAddress hooks put its wrappers there.
PRE="" check "cuGetProcAddress, baseline: the driver's own functions beside a preloaded definition" 0 \
    -- "$T/entry_owner"
expect_in out "cuIpcOpenMemHandle@11000: libcuda.so.1"; expect_in out "cuIpcGetMemHandle@4010: libcuda.so.1"
expect_in out "8 look-ups, 0 failed"; done_case
PRE="$T/libother_preload.so" check "cuGetProcAddress: a preloaded cuIpc* definition never replaces the driver's own" 0 \
    -- "$T/entry_owner"
[ "$(grep -c ': libcuda.so.1$' "$OUT/out")" -eq 9 ] || { ok=0; why="not every entry the driver's own"; }
expect_in out "8 look-ups, 0 failed"; done_case
PRE=$LIB check "cuGetProcAddress: nvipcfix's hooks hand out its wrappers, the rest untouched" 0 \
    -- "$T/entry_owner"
for e in "cuGetProcAddress@12000" "cuGetProcAddress@11030" "cuIpcGetMemHandle@4010" \
    "cuIpcOpenMemHandle@11000" "cuIpcOpenMemHandle@4010" "cuIpcCloseMemHandle@4010"; do
    expect_in out "^$e: libnvipcfix.so$"
done
expect_in out "^cuMemAlloc@3020: libcuda.so.1$"; expect_in out "8 look-ups, 0 failed"; done_case
# A driver that accepts flags nvipcfix does not know: the re-open with them
# goes to the driver (which counts a reference), and nvipcfix gives that
# reference back at once, so the last close still unmaps.
PRE=$LIB check "driver accepting other flags: a re-open with them leaves no extra mapping" 0 \
    SIMCUDA_IPC_ANY_FLAGS=1 LEGACY_IPC_REOPEN_FLAGS=2 -- "$T/legacy_ipc" --reopen
expect_in out "right 10, wrong 0, failed 0;"; expect_in out "mappings left 0 -> CORRECT"; done_case
PRE=$LIB check "flags the driver refuses: its error, even for an open block" 2 \
    LEGACY_IPC_REOPEN_FLAGS=2 -- "$T/legacy_ipc" --reopen
expect_in out "right 0, wrong 0, failed 10;"; expect_in err "reopen failed: error 1\$"
expect_in out "mappings left 0"; done_case

# ---- VMM memory (cuMemCreate chunks side by side, as PyTorch's expandable
# segments): the export fails natively; NVIPCFIX_VMM=1 shares it.
PRE="" check "VMM, baseline: the export fails without the preload" 2 -- "$T/vmm_ipc"
expect_in out "right 0/6, export failed"; expect_in err "cuIpcGetMemHandle of tensor 0: error 1"; done_case
PRE=$LIB check "VMM: without NVIPCFIX_VMM=1 the export still fails, with one hint" 2 -- "$T/vmm_ipc"
expect_in out "right 0/6, export failed"; expect_in err "NVIPCFIX_VMM=1 makes nvipcfix share it"
[ "$(grep -c 'NVIPCFIX_VMM=1 makes' "$OUT/err")" -eq 1 ] || { ok=0; why="not one hint"; }
done_case
PRE=$LIB check "VMM: every byte right in another process, silent" 0 NVIPCFIX_VMM=1 -- "$T/vmm_ipc"
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; expect_empty err; done_case
PRE=$LIB check "VMM: open twice (one mapping), close twice, nothing left mapped" 0 \
    NVIPCFIX_VMM=1 NVIPCFIX_STATS=1 -- "$T/vmm_ipc" --reopen
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"
expect_in err "opens=12 (real 6, table hits 6) closes=12 (real 6) errors=0 vmm exports=0 vmm maps=6 open at exit=0"
done_case
PRE=$LIB check "VMM at debug level: each open says how long its phases took" 0 \
    NVIPCFIX_VMM=1 NVIPCFIX_LOG=debug -- "$T/vmm_ipc"
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"
us='[0-9]{1,9} us' # a phase's time: never a wrapped difference of unset clocks
opened=$(grep -cE "chunks? \([0-9]+ bytes\) received over its socket \(SCM_RIGHTS\) and mapped at 0x[0-9a-f]+ in $us: its offer after $us, the descriptors $us later; import $us, map $us, access $us\$" "$OUT/err")
[ "$opened" -eq 6 ] || { ok=0; why="$opened opens timed, not 6"; }
done_case
PRE=$LIB check "VMM: export of the range's start, offsets added by the receiver, past a gap" 0 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --base
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; done_case
# A range's start exported again (PyTorch's first tensor of a segment, a
# program that sends offsets itself): a look-up while nothing was mapped,
# unmapped or granted since, whichever road the mapping calls took; every
# ticket mapped by another process at once and checked place by place.
for road in direct dlsym-default dlsym procaddr; do
    PRE=$LIB check "VMM: a range's start exported again, mappings changed through $road: a look-up until a change, never stale" 0 \
        NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --start-again $road
    [ "$(grep -c ': right$' "$OUT/out")" -eq 6 ] || { ok=0; why="not every ticket right"; }
    [ "$(grep -c 'exported again: looked up' "$OUT/out")" -eq 6 ] || { ok=0; why="not every repeated export a look-up"; }
    [ "$road" = direct ] || expect_in out "^cuMemMap from libnvipcfix.so$"
    expect_in out "^$road: 0 wrong, 0 failed$"; expect_empty err; done_case
done
# On a driver that finds a mapping's range before access is granted, a
# chunk mapped is exported at once: cuMemMap alone must count.
PRE=$LIB check "VMM: a range's start exported again, a driver that finds a mapping before access: never stale" 0 \
    NVIPCFIX_VMM=1 SIMCUDA_RANGE_BEFORE_ACCESS=1 -- "$T/vmm_ipc" --start-again direct
[ "$(grep -c ': right$' "$OUT/out")" -eq 6 ] || { ok=0; why="not every ticket right"; }
expect_in out "^direct: 0 wrong, 0 failed$"; expect_empty err; done_case
# A dlsym ahead of nvipcfix (the order nvipcfix warns of) hands out the
# driver's own cuMemMap: nvipcfix cannot count those calls, so it walks.
PRE="$T/libgpu_share.so $LIB" check "VMM: a range's start exported again, cuMemMap from a dlsym ahead of nvipcfix: walked each time, never stale" 0 \
    NVIPCFIX_VMM=1 VMM_IPC_IMPORTER_PRELOAD="$SAN_PRE${SAN_PRE:+ }$LIB" -- "$T/vmm_ipc" --start-again dlsym
[ "$(grep -c ': right$' "$OUT/out")" -eq 6 ] || { ok=0; why="not every ticket right"; }
[ "$(grep -c 'exported again: walked' "$OUT/out")" -eq 6 ] || { ok=0; why="a repeated export was a look-up"; }
expect_in out "^cuMemMap from libcuda.so.1$"; expect_in out "^dlsym: 0 wrong, 0 failed$"; done_case
# A layer after nvipcfix hands out its own cuMemMap through its
# cuGetProcAddress: it keeps seeing the calls (nvipcfix's wrapper does not
# take its place), and nvipcfix, which cannot count them, walks each time.
PRE="$LIB $T/libmap_hook.so" check "VMM: a range's start exported again, cuMemMap hooked by a later layer's cuGetProcAddress: the layer sees its calls, walked each time, never stale" 0 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --start-again procaddr
[ "$(grep -c ': right$' "$OUT/out")" -eq 6 ] || { ok=0; why="not every ticket right"; }
[ "$(grep -c 'exported again: walked' "$OUT/out")" -eq 6 ] || { ok=0; why="a repeated export was a look-up"; }
expect_in out "^cuMemMap from libmap_hook.so$"; expect_in err "^map_hook: [1-9][0-9]* cuMemMap calls$"
expect_in out "^procaddr: 0 wrong, 0 failed$"; done_case
PRE=$LIB check "VMM: a range's start exported on 3 threads while chunks are mapped and unmapped" 0 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --start-race
expect_in out "beside 200 mapping changes, 0 failed$"; expect_in out "^the chunks left: right$"
expect_in out "^start-race: 0 wrong, 0 failed$"; expect_empty err; done_case
PRE=$LIB check "VMM: the exporter opens its own tickets" 0 NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --self
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; done_case
PRE=$LIB check "VMM: an open with flags the driver refuses is refused" 2 NVIPCFIX_VMM=1 \
    VMM_IPC_OPEN_FLAGS=2 -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"
expect_in err "open of tensor 0 failed: error 1\$"; done_case
PRE=$LIB check "VMM: chunk freed since the export is never mapped" 2 NVIPCFIX_VMM=1 -- \
    "$T/vmm_ipc" --freed
expect_in out "right 3/6, failed 3, wrong 0, stray 0, left 0"
expect_in err "freed or remapped since the export"; done_case
PRE=$LIB check "VMM: exporter gone, a clear error" 2 NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --exporter-exits
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "the exporter has exited"; done_case
PRE=$LIB check "VMM: importer on another device, a clear error" 2 NVIPCFIX_VMM=1 SIMCUDA_DEVICES=2 \
    VMM_IPC_IMPORTER_DEVICE=1 -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "lives on device 0 (as this process numbers it)"
done_case
PRE=$LIB check "VMM: ticket with another PID namespace's number finds nobody" 2 NVIPCFIX_VMM=1 \
    VMM_IPC_TICKET_EDIT=ns -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "nothing answers for it"; done_case
PRE=$LIB check "VMM: ticket from another machine refused" 2 NVIPCFIX_VMM=1 \
    VMM_IPC_TICKET_EDIT=boot -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "from another machine"; done_case
PRE=$LIB check "VMM: importer without nvipcfix gets an error, not bytes" 2 NVIPCFIX_VMM=1 \
    VMM_IPC_IMPORTER_NO_PRELOAD=1 -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; done_case
PRE=$LIB check "VMM: chunks without POSIX descriptors: the native error, one warning" 2 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --no-fd
expect_in out "right 0/6, export failed"
expect_in err "allocated without POSIX file descriptor handles"; done_case
if [ "$(id -u)" = 0 ]; then
    PRE=$LIB check "VMM: a process of another user is refused the descriptors" 2 NVIPCFIX_VMM=1 \
        VMM_IPC_IMPORTER_UID=65534 -- "$T/vmm_ipc"
    expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "runs as another user"; done_case
else
    skip "VMM: another user is refused" "needs root to start the importer as another user"
fi
# ---- VMM: only the ticket's secret grants memory; no peer stalls an open;
# all of an export or nothing (an open that succeeds is read to its export's
# last byte: a partial mapping shows as wrong); containers (docs/design.md,
# threat model).
PRE=$LIB check "VMM: a process of this user with what /proc/net/unix shows maps nothing" 2 \
    NVIPCFIX_VMM=1 VMM_IPC_TICKET_EDIT=guess -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "could not prove it made the ticket"
done_case
PRE=$LIB check "VMM: a ticket with a wrong secret maps nothing" 2 NVIPCFIX_VMM=1 \
    VMM_IPC_TICKET_EDIT=secret -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "could not prove it made the ticket"
done_case
PRE=$LIB check "VMM: a squatter of this user on an exited exporter's name gets and gives nothing" 2 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc" --squatter
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "could not prove it made the ticket"
! grep -q "squatter got" "$OUT/err" || { ok=0; why="the squatter got a proof"; }; done_case
PRE=$LIB check "VMM: exporter stopped: the open fails at its deadline, legacy IPC on another thread goes on" \
    2 NVIPCFIX_VMM=1 NVIPCFIX_VMM_TIMEOUT_MS=$((1000 * TEST_TIME_SCALE)) -- "$T/vmm_ipc" --stopped
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"
expect_in err "did not hand over VMM memory within"; expect_in err "slowest .* ms: OK"
done_case
PRE=$LIB check "VMM: importer at its open-file limit: an error naming it, nothing mapped" 2 \
    NVIPCFIX_VMM=1 VMM_IPC_IMPORTER_ROOM=2 -- "$T/vmm_ipc"
expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"
expect_in err "this process is at its open-file limit"; done_case
PRE=$LIB check "VMM: exporter at its open-file limit: an error naming it, never a partial mapping" 2 \
    NVIPCFIX_VMM=1 VMM_IPC_EXPORTER_ROOM=2 -- "$T/vmm_ipc"
# (how many single-chunk tensors still fit is not the property: none
# partly mapped, nothing left, some refused)
expect_in out "failed [1-9], wrong 0, stray 0, left 0"
expect_in err "exporting process is at its open-file limit"
done_case
mkdir -m 755 "$OUT/vmm-open-dir"
PRE=$LIB check "VMM: a socket directory open to others is refused, one warning" 2 NVIPCFIX_VMM=1 \
    NVIPCFIX_VMM_SOCKET_DIR="$OUT/vmm-open-dir" -- "$T/vmm_ipc"
expect_in out "right 0/6, export failed"; expect_in err "closed to others (mode 0700)"; done_case
if [ "$(id -u)" = 0 ]; then
    PRE=$LIB check "VMM: a squatter of another user on an exited exporter's name is refused" 2 \
        NVIPCFIX_VMM=1 VMM_IPC_SQUATTER_UID=65534 -- "$T/vmm_ipc" --squatter
    expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"
    expect_in err "a process of another user listens in its name"; done_case
    PRE=$LIB check "VMM: 70 idle connections of another user and a dripping one delay no open, nor legacy IPC" 0 \
        NVIPCFIX_VMM=1 VMM_IPC_LEGACY_THREAD=1 -- "$T/vmm_ipc" --hostile
    expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; expect_in err "slowest .* ms: OK"; done_case
else
    skip "VMM: squatter and idle connections of another user" "needs root to act as another user"
fi
if [ -n "$RUNNER" ]; then
    skip "VMM: importer in other namespaces" "the importer cannot start through unshare under qemu-user"
elif ! unshare -p -f --mount-proc true 2>/dev/null || ! unshare -n true 2>/dev/null; then
    skip "VMM: importer in other namespaces" "unshare -p/-n is not permitted here"
else
    # (LeakSanitizer cannot stop the world in a process that is pid 1 of its
    # namespace: leaks are left to the other VMM cases there.)
    NS_SAN=""
    [ -n "$SAN_PRE" ] && NS_SAN="ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0"
    PRE=$LIB check "VMM: importer in another PID namespace (unshare -p -f --mount-proc)" 0 \
        ${NS_SAN:+"$NS_SAN"} NVIPCFIX_VMM=1 "VMM_IPC_IMPORTER_WRAP=unshare -p -f --mount-proc" -- "$T/vmm_ipc"
    expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; done_case
    PRE=$LIB check "VMM: importer in another network namespace, no socket directory: a clear error" 2 \
        ${NS_SAN:+"$NS_SAN"} NVIPCFIX_VMM=1 "VMM_IPC_IMPORTER_WRAP=unshare -n -p -f --mount-proc" -- "$T/vmm_ipc"
    expect_in out "right 0/6, failed 6, wrong 0, stray 0, left 0"; expect_in err "set NVIPCFIX_VMM_SOCKET_DIR"; done_case
    mkdir -m 700 "$OUT/vmm-sockets"
    PRE=$LIB check "VMM: importer in other network and PID namespaces, through NVIPCFIX_VMM_SOCKET_DIR" 0 \
        ${NS_SAN:+"$NS_SAN"} NVIPCFIX_VMM=1 NVIPCFIX_VMM_SOCKET_DIR="$OUT/vmm-sockets" \
        "VMM_IPC_IMPORTER_WRAP=unshare -n -p -f --mount-proc" -- "$T/vmm_ipc"
    expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"
    [ -z "$(ls -A "$OUT/vmm-sockets")" ] || { ok=0; why="a socket left in the directory"; }
    done_case
fi
PRE="" check "two devices, baseline: exporter on 1, importer on 0, bug without" 1 SIMCUDA_DEVICES=2 \
    LEGACY_IPC_DEVICE=1 LEGACY_IPC_IMPORTER_DEVICE=0 -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"; done_case
PRE=$LIB check "two devices: exporter on 1, importer on 0, right with" 0 SIMCUDA_DEVICES=2 \
    LEGACY_IPC_DEVICE=1 LEGACY_IPC_IMPORTER_DEVICE=0 -- "$T/legacy_ipc" --reopen
expect_in out "right 10, wrong 0, failed 0;"; expect_in out "mappings left 0 -> CORRECT"; done_case
PRE="" check "old driver, baseline: ALREADY_MAPPED and the bug without the preload" 3 SIMCUDA_OLD_DRIVER=1 -- \
    "$T/legacy_ipc" --reopen
expect_in out "right 0, wrong 0, failed 10;"; expect_in err "reopen failed: error 208"; done_case
PRE=$LIB check "old driver works with the preload" 0 SIMCUDA_OLD_DRIVER=1 -- \
    "$T/legacy_ipc" --reopen --road procaddr
expect_in out "right 10, wrong 0, failed 0;"; expect_in out "mappings left 0 -> CORRECT"; done_case
PRE="" check "open in the exporting process, baseline: fails natively" 2 -- "$T/legacy_ipc" --self
expect_in out "right 0, wrong 0, failed 10;"; expect_in err "open failed: error 201"; done_case
PRE=$LIB check "open in the exporting process gives its own pointer" 0 -- \
    "$T/legacy_ipc" --self --reopen
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; done_case
PRE=$LIB check "NVIPCFIX_SELF_OPEN=0 restores the native error" 2 NVIPCFIX_SELF_OPEN=0 -- \
    "$T/legacy_ipc" --self
expect_in out "right 0, wrong 0, failed 10;"; expect_in err "open failed: error 201"; done_case
PRE=$LIB check "driver writing bytes 56-63: native behaviour, one warning" 1 \
    SIMCUDA_HANDLE_TAIL=1 -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"
expect_in err "nvipcfix\[[0-9]*\]: warning: this driver writes bytes 56-63"
[ "$(grep -c 'writes bytes 56-63' "$OUT/err")" -eq 1 ] || { ok=0; why="not one warning in the exporter"; }
[ "$(grep -c 'did not write; it is passed to the driver unchanged' "$OUT/err")" -eq 1 ] ||
    { ok=0; why="not one warning in the importer"; }
done_case
# Only the exporter has nvipcfix (the likeliest mistake in a prefill/decode
# deployment): the importer's driver refuses the guarded tag, a clean error
# on every road and in every order of opens (the handle alone; the block's
# base handle opened first, as a receiver of a caching allocator's tensors
# does; the handle refused once, then the base, then the handle again),
# packed small allocations included, never the block's bytes.
for road in direct dlsym procaddr procaddr-v1; do
    for order in fresh base-first refused-first; do
        PRE=$LIB check "$road, $order: exporter with nvipcfix, importer without: a clean error" 2 \
            LEGACY_IPC_IMPORTER_NO_PRELOAD=1 -- "$T/legacy_ipc" --road $road --order $order
        # the 8 interior pointers (of the block and of a packed small
        # allocation) fail to open with the driver's invalid-handle error;
        # the 2 bases (untagged) are right; nothing is written anywhere else
        expect_in err "open failed: error 400\$"
        case $road:$order in
        *:fresh) expect_in out "right 2, wrong 0, failed 8; read 2/10 right, written 2/10 right, 0 stray bytes, 8 failed calls" ;;
        # the legacy open (dlsym of cuIpcOpenMemHandle) also refuses the
        # second open of each base: ALREADY_MAPPED, as measured on the H200
        dlsym:*|procaddr-v1:*)
            expect_in out "right 0, wrong 0, failed 10; read 0/10 right, written 0/10 right, 0 stray bytes, 10 failed calls"
            expect_in out "order=$order: 0 opened, 10 refused, 0 read wrong" ;;
        *)  expect_in out "right 2, wrong 0, failed 8; read 2/10 right, written 2/10 right, 0 stray bytes, 8 failed calls"
            expect_in out "order=$order: 2 opened, 8 refused, 0 read wrong" ;;
        esac
        done_case
    done
done
PRE=$LIB check "NVIPCFIX_TAG=plain: the same deployment reads the block base (what guarded tags stop)" 1 \
    NVIPCFIX_TAG=plain LEGACY_IPC_IMPORTER_NO_PRELOAD=1 -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"; expect_in out "WRONG"; done_case
for order in fresh base-first refused-first; do
    PRE=$LIB check "packed small allocations, $order: exporter with nvipcfix, importer without: a clean error" 2 \
        LEGACY_IPC_IMPORTER_NO_PRELOAD=1 -- "$T/legacy_ipc" --small --order $order --road procaddr
    expect_in out "right 2, wrong 0, failed 4; read 2/6 right, written 2/6 right, 0 stray bytes, 4 failed calls"
    [ "$order" = fresh ] || expect_in out "order=$order: 2 opened, 4 refused, 0 read wrong"
    done_case
done
PRE="" check "packed small allocations, baseline: the bug shows without the preload" 1 -- "$T/legacy_ipc" --small
expect_in out "right 0, wrong 6, failed 0; read 2/6 right"; done_case
PRE=$LIB check "packed small allocations, base first: right with the preload" 0 -- \
    "$T/legacy_ipc" --small --order base-first --reopen
expect_in out "order=base-first: 6 opened, 0 refused, 0 read wrong"; expect_in out "right 6, wrong 0, failed 0; .*-> CORRECT"; done_case
PRE=$LIB check "NVIPCFIX_TAG=plain, base first: the block base, silently (what guarded tags stop)" 1 \
    NVIPCFIX_TAG=plain LEGACY_IPC_IMPORTER_NO_PRELOAD=1 -- "$T/legacy_ipc" --order base-first
expect_in out "order=base-first: 10 opened, 0 refused, 8 read wrong"; expect_in out "right 1, wrong 9, failed 0;"
done_case
for order in base-first refused-first; do
    PRE=$LIB check "both with nvipcfix, $order: right" 0 -- "$T/legacy_ipc" --order $order --reopen
    expect_in out "order=$order: 10 opened, 0 refused, 0 read wrong"; expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"
    done_case
done
PRE=$LIB check "NVIPCFIX_TAG=plain: both sides with nvipcfix, right" 0 NVIPCFIX_TAG=plain -- \
    "$T/legacy_ipc" --reopen
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; done_case
PRE=$LIB check "mode off: pure pass-through" 1 NVIPCFIX_MODE=off -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"; expect_empty err; done_case
PRE=$LIB check "mode audit: changes nothing, logs interior exports" 1 NVIPCFIX_MODE=audit \
    NVIPCFIX_LOG=info -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"
expect_in err "audit: export of 0x[0-9a-f]* is 512 bytes into block"
expect_in err "audit: open of a native handle"; done_case
PRE=$LIB check "audit mode: the call site of the interior exports and one verdict per process" 1 \
    NVIPCFIX_MODE=audit NVIPCFIX_STATS=1 -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"
expect_in err "audit: this process exported 8 interior pointers from 1 call site: affected"
expect_in err "audit:   8 from legacy_ipc+0x[0-9a-f]*$"
expect_in err "audit: this process exported no interior pointer: not affected"
expect_in err "stats: exports=10 (with offset 8)"
[ "$(grep -c 'audit: this process' "$OUT/err")" -eq 2 ] || { ok=0; why="not one verdict per process"; }
done_case
if [ -n "$SAN_PRE" ]; then
    skip "out of memory at set-up: every call native, one warning" \
        "the sanitizer's calloc comes first in the preload order"
else
    PRE="$T/libfailing_calloc.so $LIB" check "out of memory at set-up: every call native, one warning" 1 \
        -- "$T/legacy_ipc"
    expect_in out "right 1, wrong 9, failed 0;"
    [ "$(grep -c 'warning: out of memory when setting up; IPC calls go to the driver unchanged' "$OUT/err")" -eq 2 ] ||
        { ok=0; why="not one warning per process"; }
    done_case
fi
PRE=$LIB check "mappings still open at exit: counted in the stats line, reported at info" 0 \
    NVIPCFIX_STATS=1 NVIPCFIX_LOG=info -- "$T/ipc_faults" --leave-open
expect_in out "2 blocks held at exit"
expect_in err "info: at exit: 2 blocks (2.0 MiB) opened through nvipcfix still mapped"
expect_in err "stats: exports=0 .* open at exit=2 (2097152 bytes)"; done_case
PRE=$LIB check "bad setting: one warning, default kept" 0 NVIPCFIX_MODE=fixed -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0;"
expect_in err "NVIPCFIX_MODE='fixed' is not one of the accepted values; using 'fix'"
[ "$(grep -c "NVIPCFIX_MODE='fixed'" "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning per process"; }
done_case
PRE=$LIB check "statistics line at exit" 0 NVIPCFIX_STATS=1 -- "$T/legacy_ipc" --reopen
expect_in out "right 10, wrong 0, failed 0;"
expect_in err "stats: exports=10 (with offset 8) opens=0"
expect_in err "stats: exports=0 (with offset 0) opens=20 (real 10, table hits 10) closes=20 (real 10) errors=0"
done_case
PRE="" check "dlsym(RTLD_NEXT) without the preload" 0 -- "$T/rtld_next"
cp "$OUT/out" "$OUT/native"; expect_in out "next=2"; done_case
PRE=$LIB check "dlsym(RTLD_NEXT) resolves relative to the real caller" 0 -- "$T/rtld_next"
cmp -s "$OUT/out" "$OUT/native" || { ok=0; why="output differs from native"; }
expect_empty err; done_case
# Host programs and scripts that start the test programs themselves cannot
# run an aarch64 build without binfmt: under the emulator they are left to
# make test.
if [ -n "$RUNNER" ]; then
    skip "a process without CUDA; scripts/regress" "host programs cannot load the aarch64 library"
else
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
PRE="" check "scripts/regress without --audit: a verdict line last" 0 -- \
    "$ROOT/scripts/regress" --lib "$LIB" -- "$T/legacy_ipc"
[ "$(tail -n 1 "$OUT/out")" = "  => this program exports pointers inside larger allocations: without nvipcfix its receivers get the wrong bytes" ] ||
    { ok=0; why="last line: $(tail -n 1 "$OUT/out")"; }
done_case
PRE="" check "scripts/regress without --audit: a program without IPC is not affected" 0 -- \
    "$ROOT/scripts/regress" --lib "$LIB" -- true
[ "$(tail -n 1 "$OUT/out")" = "  => no interior-pointer export seen: this run is not affected" ] ||
    { ok=0; why="last line: $(tail -n 1 "$OUT/out")"; }
done_case
fi

PRE="" check "scripts/regress: a program that cannot start is a failure, with its stderr" 127 -- \
    "$ROOT/scripts/regress" --lib "$LIB" --audit -- "$T/nonexistent-program"
expect_in out "the program could not start (exit 127)"; expect_in out "nonexistent-program"
expect_in out "=> FAILED: the program did not start"
grep -q "not affected" "$OUT/out" && { ok=0; why="reported as not affected"; }
grep -q "line [0-9]" "$OUT/out" "$OUT/err" && { ok=0; why="a script line number is shown"; }
done_case
PRE="" check "scripts/regress: a file that is not executable, exit 126, one clean line" 126 -- \
    "$ROOT/scripts/regress" --lib "$LIB" -- "$ROOT/README.md"
expect_in out "README.md: not executable"; expect_in out "=> FAILED: the program did not start"
grep -q "line [0-9]" "$OUT/out" "$OUT/err" && { ok=0; why="a script line number is shown"; }
done_case
current="the scripts and the launcher are executable (git mode 755)"
ok=1; echo >"$OUT/out"; echo >"$OUT/err"
for f in "$ROOT"/scripts/* "$ROOT/tools/nvipcfix"; do
    [ -x "$f" ] || { ok=0; why="$(basename "$f") is not executable"; }
done
done_case
PRE="" check "scripts/bench.sh: a missing build folder fails loudly" 2 -- \
    sh "$ROOT/scripts/bench.sh" "$OUT/no-build"
expect_in err "bench: no build folder"; done_case
# The goals' verdicts (scripts/bench-goals.sh) on the raw files of an H200
# run (tests/bench/goals-h200: make bench at 23e2a03, rebuilt from its
# printed output), then on the same files changed so that one rule fails.
goals() { # a fresh copy of the H200 run's files in $OUT/goals
    rm -rf "$OUT/goals" && cp -r "$ROOT/tests/bench/goals-h200" "$OUT/goals"
}
goals
PRE="" check "bench-goals: an H200 run judged" 0 -- sh "$ROOT/scripts/bench-goals.sh" "$OUT/goals"
expect_in out "## goals (GPU: NVIDIA H200"
expect_in out "^| start-up of /bin/true | .* +1.2 points .* | NOT held |$"
expect_in out "^| export of a block base .* | 1.268x .* | held |$"
expect_in out "^| export of an interior pointer, 1 thread .* | 1.174x .* | held |$"
expect_in out "^| ... 32 threads .* | 1.006x .* | NOT held |$"
expect_in out "^| VMM export of an exported chunk again, a single call .* | 0.51 us (in a row 0.31 us) | | <= 1 us | held |$"
expect_in out "^| VMM first open of 2 MiB .* right after 1.20x | <= 1.2x (each) | held |$"
expect_in out "^| fork with 8 busy threads | .* interval 0.986-1.019; .* | held |$"
[ "$(grep -c '^| ' "$OUT/out")" -eq 14 ] || { ok=0; why="not 14 table lines"; }
done_case
goals
sed -i 's/-> CORRECT/-> WRONG/' "$OUT/goals/torch_gap5"
: >"$OUT/goals/fork"
awk '$1 == "pass" && $3 == "export_base" { $4 = $4 * 1.3 } { print }' "$ROOT/tests/bench/goals-h200/exports" >"$OUT/goals/exports"
PRE="" check "bench-goals: a wrong PyTorch run, no fork round, the sides at two speeds: not measured" 0 -- \
    sh "$ROOT/scripts/bench-goals.sh" "$OUT/goals"
[ "$(grep -c '^| VMM first open of .* | not measured (vmm_vs_torch.py did not end CORRECT' "$OUT/out")" -eq 3 ] ||
    { ok=0; why="the 3 VMM first-open rows are not 'not measured'"; }
expect_in out "^| fork with 8 busy threads | .* | not measured (no round gave both medians"
expect_in out "^| export of a block base .* | not measured (native and the pass-through interposer differ"
done_case
# Start-up: the constructors touch only pages the loader has mapped anyway,
# and the library has no DT_FINI (docs/performance.md): a process faults in
# no more pages with nvipcfix than with a preload that does nothing, linked
# with the same two segments. The mean of 600 runs each: a run's count
# moves by one page with where the loader put the libraries, so nvipcfix,
# a larger file, measured 0.35-0.45 more than the empty preload on the CPU
# machine; memcmp back in the load-order check 0.78-0.91, DT_FINI back
# 1.34-1.43, the library before these changes 2.8-2.9; a string constant
# read by the load-order check's walk 1.0 more than without it. Held at
# 0.65.
if [ -n "$RUNNER$SAN_PRE" ]; then
    skip "start-up: no more page faults than an empty preload" "the faults counted would be the emulator's or the sanitizer's"
else
    PRE="" check "start-up: no more page faults than an empty preload" 0 -- \
        "$B/tests/ipc_bench" startup "$B/tests/libempty_two_segments.so" "$LIB" --quick
    awk '$1 == "STARTUP" { f[++n] = $8 } END { exit !(n == 2 && f[1] > 0 && f[2] <= f[1] + 0.65) }' \
        "$OUT/out" || { ok=0; why="page faults: $(awk '$1 == "STARTUP" { printf "%s %s; ", $2, $8 }' "$OUT/out")"; }
    done_case
fi
# Start-up: the library binds none of the names it defines at load, nor
# environ or getpid (a symbol look-up each, in every process; the load-order
# check reads the loader's list and the GNU hash tables of the libraries
# ahead instead), whether it comes first or after a library that defines
# none of the names (one of them loaded below its link address: the check
# read its table at the wrong place and crashed every process before the
# fix); only after one that defines a watched name does it look them up.
# LD_DEBUG=bindings names the file each binding is for. (Skipped with a
# sanitizer: its runtime comes first and may define one.)
own_binds() { grep -c "binding file [^ ]*libnvipcfix.so .*normal symbol \`\(cu[A-Za-z0-9_]*\|dlsym\|environ\|getpid\)'" "$OUT/err"; }
if [ -n "$SAN_PRE" ]; then
    skip "start-up: nvipcfix binds none of its own names at load" "the sanitizer's runtime comes first in the preload order"
else
    for ahead in "" "$T/libempty_two_segments.so" "$T/liblinked_high.so"; do
        PRE="$ahead${ahead:+ }$LIB" check "start-up: nvipcfix binds none of its own names at load${ahead:+, ${ahead##*/} ahead defining none}" 2 \
            LD_DEBUG=bindings -- "$T/legacy_ipc" --usage
        [ "$(own_binds)" -eq 0 ] || { ok=0; why="$(own_binds) bindings of its own names"; }
        expect_in err "binding file [^ ]*libnvipcfix.so .*normal symbol \`_r_debug'"
        [ "$(grep -c 'is loaded before nvipcfix' "$OUT/err")" -eq 0 ] || { ok=0; why="a warning"; }
        done_case
    done
    PRE="$T/libcuda_proxy.so $LIB" check "... after a library defining cuIpcGetMemHandle it looks the names up, and warns" 2 \
        LD_DEBUG=bindings -- "$T/legacy_ipc" --usage
    expect_in err "binding file [^ ]*libnvipcfix.so .*normal symbol \`cuIpcGetMemHandle'"
    expect_in err "libcuda_proxy.so is loaded before nvipcfix and defines cuIpcGetMemHandle:"
    done_case
fi
# nvipcfix opened with dlopen, the driver with RTLD_GLOBAL after it: the
# wrappers handed out are nvipcfix's own, bound as at its load, not the
# driver's that a later look-up through the global scope would find.
# (Skipped with a sanitizer: its runtime must be loaded first, not by dlopen.)
if [ -n "$SAN_PRE" ]; then
    skip "nvipcfix opened with dlopen, then the driver with RTLD_GLOBAL: its wrappers handed out" \
        "a sanitized library cannot be opened with dlopen by a program without the sanitizer"
else
    PRE="" check "nvipcfix opened with dlopen, then the driver with RTLD_GLOBAL: its wrappers handed out" 0 -- \
        "$T/late_driver" "$LIB"
    [ "$(grep -c ': .*libnvipcfix.so$' "$OUT/out")" -eq 3 ] ||
        { ok=0; why="not 3 wrappers of nvipcfix: $(tr '\n' ' ' <"$OUT/out")"; }
    done_case
fi
# The vDSO is passed over by its whole name: a library preloaded from a
# folder whose name starts like it is checked as any other.
if [ -n "$RUNNER" ]; then
    skip "a library ahead in a folder named like the vDSO: warned of" "a relative preload path under the emulator"
else
    rm -rf "$OUT/vd" && mkdir -p "$OUT/vd/linux-vdso.so.1.d" && cp "$T/libcuda_proxy.so" "$OUT/vd/linux-vdso.so.1.d/"
    PRE="" check "a library ahead in a folder named like the vDSO: warned of" 2 -- \
        sh -c 'cd "$1" && LD_LIBRARY_PATH="$2" LD_PRELOAD="$3 linux-vdso.so.1.d/libcuda_proxy.so $4" exec "$5" --usage' \
        sh "$OUT/vd" "$SIM" "$SAN_PRE" "$LIB" "$T/legacy_ipc"
    expect_in err "libcuda_proxy.so is loaded before nvipcfix and defines cuIpcGetMemHandle:"
    done_case
fi
rm -rf "$OUT/goals" && mkdir "$OUT/goals"
PRE="" check "bench-goals: an empty folder: every goal not measured, nothing on stderr" 0 -- \
    sh "$ROOT/scripts/bench-goals.sh" "$OUT/goals"
[ "$(grep -c '^| .* | not measured' "$OUT/out")" -eq 12 ] || { ok=0; why="not 12 rows 'not measured'"; }
expect_empty err
done_case
goals
awk '{ printf "%s %s %.3f\n", $1, $2 * 1.05, $3 * 1.05 }' "$ROOT/tests/bench/goals-h200/fork" >"$OUT/goals/fork"
sed -i 's/^BENCH vmm_over_torch_after_other_16MiB [0-9.]*/BENCH vmm_over_torch_after_other_16MiB 1.25/' "$OUT/goals/torch"
PRE="" check "bench-goals: fork's interval over 1.05, one first open 1.25x PyTorch's: NOT held" 0 -- \
    sh "$ROOT/scripts/bench-goals.sh" "$OUT/goals"
expect_in out "^| fork with 8 busy threads | .* | NOT held |$"
expect_in out "^| VMM first open of 16 MiB .* right after 1.25x; .* | NOT held |$"
expect_in out "^| VMM first open of 2 MiB .* | held |$"
done_case
if command -v nvidia-smi >/dev/null 2>&1; then
    skip "scripts/gpu-check without a GPU" "nvidia-smi is installed here"
else
    ls -d /tmp/nvipcfix-gpu.* 2>/dev/null | sort >"$OUT/tmp.before"
    PRE="" check "scripts/gpu-check without a GPU: exit 3, no folder left behind" 3 -- \
        bash "$ROOT/scripts/gpu-check"
    expect_in err "no NVIDIA GPU or driver here"
    ls -d /tmp/nvipcfix-gpu.* 2>/dev/null | sort | cmp -s - "$OUT/tmp.before" ||
        { ok=0; why="a /tmp/nvipcfix-gpu.* folder was left"; }
    done_case
fi

# ---- the launcher, the doctor, make install -------------------------------
# The launcher is a shell script: ThreadSanitizer's runtime cannot be
# preloaded into an uninstrumented shell (it crashes), so under make
# test-tsan these cases are left to make test and make test-asan.
case $SAN_PRE:$RUNNER in
*tsan*:*) skip "the launcher, the doctor, make install" "a shell cannot run under ThreadSanitizer" ;;
*:?*) skip "the launcher, the doctor, make install" "the launcher execs the program: binfmt under qemu" ;;
*)
NV=$ROOT/tools/nvipcfix
L="NVIPCFIX_LIBRARY=$LIB"
P="LD_PRELOAD=$SAN_PRE"
PRE="" check "launcher: nvipcfix -- COMMAND fixes it" 0 "$L" "$P" -- "$NV" -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_empty err; done_case
PRE="" check "launcher: an existing LD_PRELOAD is kept" 0 "$L" \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$T/libother_preload.so" -- "$NV" -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in err "other_preload: [1-9][0-9]* calls seen"; done_case
PRE="" check "launcher: the command's exit status" 7 "$L" "$P" -- "$NV" -- sh -c 'exit 7'
done_case
PRE="" check "launcher: --mode audit --log info --stats" 1 "$L" "$P" -- \
    "$NV" --mode audit --log info --stats -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"
expect_in err "audit: export of"; expect_in err "stats: exports=10"; done_case
PRE="" check "launcher: a bad option is refused" 2 "$L" "$P" -- "$NV" --mode fixx -- true
expect_in err "nvipcfix: --mode must be fix, audit or off, not 'fixx'"; done_case
PRE="" check "launcher: a command that does not exist: 127, no script line number" 127 "$L" "$P" -- \
    "$NV" -- /nonexistent/program
expect_in err "^nvipcfix: /nonexistent/program: command not found$"
[ "$(wc -l <"$OUT/err")" -eq 1 ] || { ok=0; why="more than one line: $(cat "$OUT/err")"; }
done_case
PRE="" check "launcher: --help and --version" 0 -- sh -c "'$NV' --help && '$NV' --version"
expect_in out "usage: nvipcfix"; expect_in out "^nvipcfix $(cat "$ROOT/VERSION")\$"; done_case
PRE="" check "doctor: a working driver, self-test passed" 0 "$L" "$P" -- "$NV" doctor
expect_in out "GPU 0: .*handle bytes 56-63 free; self-test .*: passed"; expect_in out "All good"
expect_in out "preload order: ok"; expect_in out "^nvipcfix: .*libnvipcfix.so (version $(cat "$ROOT/VERSION"))"
expect_in out "a receiver without nvipcfix, same handle: refused by the driver"
expect_in out "same handle, after the block's base handle: refused by the driver"; done_case
PRE="" check "doctor: a driver whose re-open ignores the guard: exit 9, with what to do" 9 "$L" "$P" \
    SIMCUDA_REOPEN_UNCHECKED=1 -- "$NV" doctor
expect_in out "same handle: refused by the driver"
expect_in out "after the block's base handle: OPENS THE BLOCK BASE"
expect_in out "Run every receiver with nvipcfix"; done_case
PRE="" check "doctor: NVIPCFIX_TAG=plain says a receiver without nvipcfix reads the base" 0 "$L" \
    "$P" NVIPCFIX_TAG=plain -- "$NV" doctor
expect_in out "same handle: OPENS THE BLOCK BASE"; expect_in out "NVIPCFIX_TAG=plain: a receiver"
done_case
# (the doctor's program itself: the launcher would correct the order)
PRE="" check "doctor: a dlsym-defining library before nvipcfix in LD_PRELOAD (exit 8)" 8 \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$T/libgpu_share.so:$LIB" -- "$B/nvipcfix-doctor"
expect_in out "preload order: WRONG"; expect_in out "libgpu_share.so"
expect_in out "Put libnvipcfix.so first"; done_case
PRE="" check "launcher: LD_PRELOAD naming nvipcfix behind a dlsym-defining library: moved first" 0 \
    "$L" "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$T/libgpu_share.so:$LIB" -- "$NV" doctor
expect_in out "preload order: ok"; expect_in out "All good"; done_case
PRE="" check "launcher: nvipcfix first, once, the others in their order" 0 "$L" \
    "LD_PRELOAD=$T/libother_preload.so $T/libgpu_share.so:$LIB:$B/../$(basename "$B")/libnvipcfix.so" -- \
    "$NV" -- sh -c 'echo "$LD_PRELOAD"'
[ "$(cat "$OUT/out")" = "$LIB:$T/libother_preload.so:$T/libgpu_share.so" ] ||
    { ok=0; why="LD_PRELOAD=$(cat "$OUT/out")"; }
done_case
PRE="" check "launcher: nvipcfix moved before a dlsym-defining library fixes the dlsym road" 0 "$L" \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$T/libgpu_share.so:$LIB" GPU_SHARE_LIMIT_MIB=64 -- \
    "$NV" -- "$T/legacy_ipc" --road dlsym
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; done_case
PRE="" check "launcher: nvipcfix goes before a dlsym-defining library already preloaded" 0 "$L" \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$T/libgpu_share.so" -- "$NV" doctor
expect_in out "preload order: ok"; expect_in out "All good"; done_case
PRE="" check "doctor: the same library after nvipcfix is fine" 0 "$L" \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$LIB:$T/libgpu_share.so" -- "$NV" doctor
expect_in out "preload order: ok"; expect_in out "All good"; done_case
PRE="" check "doctor: two devices, both tested" 0 "$L" "$P" SIMCUDA_DEVICES=2 -- "$NV" doctor
expect_in out "GPU 1: .*passed"; done_case
PRE="" check "doctor: no driver (exit 3)" 3 "$L" "$P" -- env LD_LIBRARY_PATH=/nonexistent "$NV" doctor
expect_in out "driver:       not found"; done_case
PRE="" check "doctor: a driver using bytes 56-63 (exit 6)" 6 "$L" "$P" SIMCUDA_HANDLE_TAIL=1 -- \
    "$NV" doctor
expect_in out "handle bytes 56-63 USED by the driver"; done_case
PRE="" check "doctor: the library not loaded (exit 7)" 7 -- "$B/nvipcfix-doctor"
done_case
# A second copy (from /etc/ld.so.preload, say) is listed with its release;
# one older than 0.3.7 fixes the calls again: exit 10. (The older copy is
# this one with its release text changed: the doctor reads the file.)
mkdir -p "$OUT/doctor-copy" "$OUT/doctor-old" && cp "$LIB" "$OUT/doctor-copy/libnvipcfix.so" &&
    LC_ALL=C sed "s/nvipcfix version $(cat "$ROOT/VERSION")/nvipcfix version 0.3.6/" "$LIB" \
        >"$OUT/doctor-old/libnvipcfix.so"
PRE="" check "doctor: a second copy behind the first: listed, all good" 0 \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$LIB:$OUT/doctor-copy/libnvipcfix.so" -- "$B/nvipcfix-doctor"
expect_in out "^other copies: 1, behind the one above"
expect_in out "doctor-copy/libnvipcfix.so (version $(cat "$ROOT/VERSION"))$"; expect_in out "All good"; done_case
PRE="" check "doctor: a copy older than 0.3.7 behind the first (exit 10)" 10 \
    "LD_PRELOAD=$SAN_PRE${SAN_PRE:+ }$LIB:$OUT/doctor-old/libnvipcfix.so" -- "$B/nvipcfix-doctor"
expect_in out "doctor-old/libnvipcfix.so (version 0.3.6): OLDER THAN 0.3.7"
expect_in out "Update that copy, or load one copy only"; done_case
# make itself runs without the preload (and without a sanitizer runtime).
inst() { make -s -C "$ROOT" "$@" BUILD="$B" PREFIX="$OUT/prefix" >/dev/null 2>&1; }
files() { find "$OUT/prefix" -mindepth 1 2>/dev/null; } # files or folders
if inst install && inst uninstall && [ -z "$(files)" ] && inst install; then
    PRE="" check "make install into a prefix: the installed launcher works" 0 "$P" -- sh -c "
        '$OUT/prefix/bin/nvipcfix' -- '$T/legacy_ipc' && '$OUT/prefix/bin/nvipcfix' doctor >/dev/null &&
        '$OUT/prefix/bin/nvipcfix' --version && head -n 1 '$OUT/prefix/share/man/man1/nvipcfix.1'"
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in out "^nvipcfix $(cat "$ROOT/VERSION")\$"
    expect_in out "^\.TH NVIPCFIX 1 .*\"nvipcfix $(cat "$ROOT/VERSION")\""
    inst uninstall
    [ ! -e "$OUT/prefix" ] || { ok=0; why="make uninstall left: $(find "$OUT/prefix" | head -3)"; }
else
    current="make install into a prefix"; ok=0; why="make install/uninstall failed or left files"
    echo >"$OUT/out"; echo >"$OUT/err"
fi
done_case
# make uninstall leaves the prefix as install found it: folders that were
# there (empty ones too) stay; with DESTDIR nothing of ours is left, nor the
# DESTDIR/usr that install created.
tree() { (cd "$OUT/$1" && find . | sort); }
current="make uninstall: a prefix with empty bin/, lib/, share/man/man1 is left as it was"
ok=1; echo >"$OUT/out"; echo >"$OUT/err"
mkdir -p "$OUT/prefix/bin" "$OUT/prefix/lib" "$OUT/prefix/share/man/man1"
tree prefix >"$OUT/tree.before"
inst install && inst install || { ok=0; why="make install failed"; }
[ -f "$OUT/prefix/share/doc/nvipcfix/LICENSE" ] || { ok=0; why="LICENSE not installed"; }
inst uninstall || { ok=0; why="make uninstall failed"; }
tree prefix | cmp -s - "$OUT/tree.before" ||
    { ok=0; why="prefix changed: $(tree prefix | diff "$OUT/tree.before" - | head -5 | tr '\n' ' ')"; }
done_case
current="make install DESTDIR=... PREFIX=/usr, make uninstall: DESTDIR as it was"
ok=1; echo >"$OUT/out"; echo >"$OUT/err"
mkdir -p "$OUT/stage/etc"
dinst() { make -s -C "$ROOT" "$@" BUILD="$B" DESTDIR="$OUT/stage" PREFIX=/usr >/dev/null 2>&1; }
dinst install && [ -x "$OUT/stage/usr/bin/nvipcfix" ] || { ok=0; why="make install failed"; }
dinst uninstall || { ok=0; why="make uninstall failed"; }
[ "$(tree stage | tr '\n' ' ')" = ". ./etc " ] || { ok=0; why="left: $(tree stage | head -4 | tr '\n' ' ')"; }
done_case
;;
esac

# ---- reliability ---------------------------------------------------------
PRE=$LIB check "stress: ${STRESS_THREADS:=32} threads x ${STRESS_OPS:=5000} mixed operations" 0 -- \
    "$T/ipc_stress" --threads "$STRESS_THREADS" --ops "$STRESS_OPS"
expect_in out "0 errors, 0 wrong bytes"; expect_in out "0 mappings left -> OK"; done_case
PRE=$LIB check "faults: exporter killed, forged tags, fork while busy, double close" 0 -- \
    "$T/ipc_faults"
expect_in out "exporter-dies: ok"; expect_in out "forged-tags: ok"; expect_in out "fork: ok"
expect_in out "double-close: ok"
expect_in err "the exporting process (pid [0-9]* in the handle) does not exist in this process's PID namespace"
done_case
current="faults: a close of the block base releases one reference, never unmaps under nvipcfix"
ok=1; expect_in out "close-inside: ok"; done_case
current="faults: the exporter's own live block still opens after 70,000 other exports"
ok=1; expect_in out "cache-full: ok"; done_case
# (Under the emulator each fork stops every emulated thread first: fewer.)
FORKS=300
[ -n "$RUNNER" ] && FORKS=8
for order in ipc-first driver-first; do
    PRE=$LIB check "fork while threads open and close, first IPC call $order: no deadlock, every open through nvipcfix closed" 0 \
        NVIPCFIX_STATS=1 -- "$T/fork_safety" --deadlock $order $FORKS
    expect_in out "$FORKS forks, children ok, 0 errors"
    # the workers' process: nvipcfix answered opens from its table, and
    # closed every open it made (none left at exit)
    expect_in err "opens=\([1-9][0-9]*\) (real \([1-9][0-9]*\), table hits [1-9][0-9]*) closes=\1 (real \2) .*open at exit=0"
    done_case
done
PRE=$LIB check "NVIPCFIX_STATS=1: a forked child does not print its parent's counts" 0 \
    NVIPCFIX_STATS=1 -- "$T/fork_safety" --stats-child
[ "$(grep -c 'stats: exports=1 (with offset 1)' "$OUT/err")" -eq 1 ] ||
    { ok=0; why="not exactly one stats line: $(cat "$OUT/err")"; }
[ "$(grep -c 'stats:' "$OUT/err")" -eq 1 ] || { ok=0; why="more than one stats line"; }
done_case
rm -f "$OUT/fifo" && mkfifo "$OUT/fifo"
PRE=$LIB check "NVIPCFIX_LOG_FILE naming a FIFO: no hang, one warning, stderr" 0 \
    NVIPCFIX_LOG_FILE="$OUT/fifo" -- timeout 60 "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in err "cannot use log file .*not a regular file"
[ "$(grep -c 'cannot use log file' "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning per process"; }
done_case
PRE=$LIB check "NVIPCFIX_LOG_FILE=/dev/stderr: the process's stderr, a pipe here" 0 \
    NVIPCFIX_LOG_FILE=/dev/stderr NVIPCFIX_LOG=info -- "$T/legacy_ipc"
expect_in err "nvipcfix\[[0-9]*\]: info: active"; done_case
# The log file is never reached through a symbolic link in any folder of
# its path, never another user's file, and a new one is 0600.
mkdir -p "$OUT/logreal" && ln -sfn "$OUT/logreal" "$OUT/loglink"
PRE=$LIB check "NVIPCFIX_LOG_FILE through a symlinked folder: not followed, one warning per process" 0 \
    NVIPCFIX_LOG_FILE="$OUT/loglink/nv.log" -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in err "cannot use log file .*a symbolic link in the path"
[ "$(grep -c 'cannot use log file' "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning per process"; }
[ ! -e "$OUT/logreal/nv.log" ] || { ok=0; why="the log was written through the link"; }
done_case
if [ "$(id -u)" = 0 ]; then
    printf 'theirs\n' >"$OUT/foreign.log" && chmod 666 "$OUT/foreign.log" &&
        chown 65534:65534 "$OUT/foreign.log"
    PRE=$LIB check "NVIPCFIX_LOG_FILE owned by another user (mode 666): never appended to" 0 \
        NVIPCFIX_LOG_FILE="$OUT/foreign.log" NVIPCFIX_LOG=info -- "$T/legacy_ipc"
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in err "cannot use log file .*owned by another user"
    expect_in err "info: active"
    [ "$(cat "$OUT/foreign.log")" = theirs ] || { ok=0; why="the foreign file was written"; }
    done_case
else
    skip "NVIPCFIX_LOG_FILE owned by another user" "needs root to give a file to another user"
fi
saved_umask=$(umask)
umask 0
PRE=$LIB check "NVIPCFIX_LOG_FILE: new files are created 0600, even under umask 0" 0 \
    NVIPCFIX_LOG_FILE="$OUT/new.%p.log" NVIPCFIX_LOG=info -- "$T/legacy_ipc"
umask "$saved_umask"
modes=$(stat -c %a "$OUT"/new.*.log | sort -u | tr '\n' ' ')
[ "$modes" = "600 " ] || { ok=0; why="log file modes: $modes"; }
[ "$(cat "$OUT"/new.*.log | grep -c 'info: active')" -eq 2 ] || { ok=0; why="not one log per process"; }
done_case
# A program that closed fd 2 and opened a data file (which got fd 2): the
# library's warning must not land in it.
for where in dropped "NVIPCFIX_LOG_FILE"; do
    logfile=""
    [ "$where" = dropped ] || logfile="$OUT/fd2.log"
    PRE=$LIB check "fd 2 closed and reused for a data file: it holds only its own records ($where)" 0 \
        LIBPATH=/nonexistent ${logfile:+NVIPCFIX_LOG_FILE=$logfile} -- \
        "$T/no_driver" --data-file "$OUT/data"
    expect_in out "cuIpcGetMemHandle -> 3"
    [ "$(cat "$OUT/data")" = "$(printf 'RECORD-1\nRECORD-2')" ] ||
        { ok=0; why="data file holds: $(head -c 300 "$OUT/data")"; }
    [ -z "$logfile" ] || grep -q "warning: cannot load the CUDA driver" "$logfile" ||
        { ok=0; why="the warning is not in the log file"; }
    done_case
done
# The same for the log file's own descriptor: closed by the program (every
# descriptor above 2, as a daemon does) and reused for a data file that is
# still open when the statistics line is written at exit.
PRE=$LIB check "log file's descriptor closed and reused for a data file: it holds only its own records" 0 \
    LIBPATH=/nonexistent NVIPCFIX_STATS=1 NVIPCFIX_LOG_FILE="$OUT/reused.log" -- \
    "$T/no_driver" --reuse-log-fd "$OUT/data"
expect_in out "again -> 3"
[ "$(cat "$OUT/data")" = "$(printf 'RECORD-1\nRECORD-2')" ] ||
    { ok=0; why="data file holds: $(head -c 300 "$OUT/data")"; }
grep -q "warning: cannot load the CUDA driver" "$OUT/reused.log" ||
    { ok=0; why="the warning before the close is not in the log file"; }
done_case
PRE=$LIB check "a newline in a setting's value stays inside one log line" 0 \
    "NVIPCFIX_MODE=fix
nvipcfix[1]: error: forged" -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0;"
grep -qF "NVIPCFIX_MODE='fix\x0anvipcfix[1]: error: forged' is not one" "$OUT/err" ||
    { ok=0; why="the value is not escaped: $(head -c 300 "$OUT/err")"; }
grep -q '^nvipcfix\[1\]' "$OUT/err" && { ok=0; why="a forged line reached the log"; }
done_case

# Other interposers: a GPU-sharing layer modelled on HAMi-core (its own
# dlsym, a quota on cuMemAlloc_v2, cu* names answered itself).
GS=$T/libgpu_share.so
for order in "nvipcfix first" "gpu_share first"; do
    if [ "$order" = "nvipcfix first" ]; then both="$LIB $GS"; else both="$GS $LIB"; fi
    PRE=$both check "GPU-sharing layer, $order: its 8 MiB quota holds on every road" 0 \
        GPU_SHARE_LIMIT_MIB=8 -- "$T/quota_probe" 16
    expect_in out "dlsym road: cuMemAlloc_v2(16 MiB) -> 2"
    expect_in out "cuGetProcAddress road: cuMemAlloc(16 MiB) -> 2"; done_case
done
for road in direct dlsym procaddr procaddr-v1; do
    PRE="$LIB $GS" check "GPU-sharing layer after nvipcfix, $road: fixed" 0 \
        GPU_SHARE_LIMIT_MIB=64 -- "$T/legacy_ipc" --road $road
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"
    case $road in direct|procaddr) expect_in err "gpu_share: 0 allocations refused, 10 IPC opens seen" ;; esac
    done_case
done
# In the other order the layer answers the look-ups itself: nvipcfix cannot
# fix what it never sees, and says why once in each process it does see;
# the bypassed opens of guarded tags fail cleanly (exit 2), never wrong bytes.
# The warning comes at load, so it is there on every road, also where no
# call ever reaches nvipcfix: on the runtime's road (cuGetProcAddress, whose
# first look-up the layer answers) the driver hands out its own functions,
# nvipcfix never sees an IPC call, and the bug shows as natively; on the
# direct road nvipcfix still tags, and the importer's bypassed opens fail.
for road in direct procaddr; do
    case $road in direct) want=2 counts="right 2, wrong 0, failed 8;" ;; *) want=1 counts="right 1, wrong 9, failed 0;" ;; esac
    PRE="$GS $LIB" check "GPU-sharing layer before nvipcfix, $road: a warning at load names it and the order" $want \
        -- "$T/legacy_ipc" --road $road
    expect_in out "$counts"
    expect_in err "libgpu_share.so is loaded before nvipcfix and defines dlsym"
    expect_in err "load libnvipcfix.so first in LD_PRELOAD"
    [ "$(grep -c 'is loaded before nvipcfix' "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning per process"; }
    done_case
done
# (legacy_ipc --usage: a process that makes no CUDA call at all, exit 2)
PRE="$T/libcuda_proxy.so $LIB" check "a library defining cuIpc* before nvipcfix: a warning at load names it" 2 \
    -- "$T/legacy_ipc" --usage
expect_in err "libcuda_proxy.so is loaded before nvipcfix and defines cuIpcGetMemHandle:"
[ "$(grep -c 'is loaded before nvipcfix' "$OUT/err")" -eq 1 ] || { ok=0; why="not one warning"; }
done_case
PRE="$T/libcuda_proxy.so $LIB" check "... NVIPCFIX_LOG=error silences it" 2 NVIPCFIX_LOG=error \
    -- "$T/legacy_ipc" --usage
[ "$(grep -c 'nvipcfix' "$OUT/err")" -eq 0 ] || { ok=0; why="a line from nvipcfix"; }; done_case
PRE="$LIB $T/libcuda_proxy.so" check "... and after nvipcfix there is nothing to say" 2 \
    -- "$T/legacy_ipc" --usage
[ "$(grep -c 'nvipcfix\[' "$OUT/err")" -eq 0 ] || { ok=0; why="a line from nvipcfix"; }; done_case
# (A sanitizer runtime cannot share the process with a second libc.)
PRE=$LIB check "dlsym on other handles: a proxy's own function, a dlmopen namespace's own" 0 \
    ${SAN_PRE:+QUOTA_PROBE_NO_DLMOPEN=1} -- "$T/quota_probe" 0 "$T/libcuda_proxy.so"
expect_in out "driver handle: cuIpcGetMemHandle from .*libnvipcfix.so$"
expect_in out "proxy library: .* -> its own"
[ -n "$SAN_PRE" ] || expect_in out "dlmopen namespace: .* own"
done_case
# With a library ahead that defines cuIpcGetMemHandle, a look-up through the
# driver's handle gets that library's function, what a program linking the
# name gets: the layer ahead still sees the calls it wraps.
PRE="$T/libcuda_proxy.so $LIB" check "dlsym on the driver's handle, a library ahead defining the name: its function" 0 \
    ${SAN_PRE:+QUOTA_PROBE_NO_DLMOPEN=1} -- "$T/quota_probe" 0 "$T/libcuda_proxy.so"
expect_in out "driver handle: cuIpcGetMemHandle from .*libcuda_proxy.so$"
expect_in out "proxy library: .* -> its own"
done_case
for order in "other first" "nvipcfix first"; do
    for road in direct procaddr; do
        if [ "$order" = "other first" ]; then both="$T/libother_preload.so $LIB"; else both="$LIB $T/libother_preload.so"; fi
        PRE=$both check "another interposer, $order, $road: both work" 0 -- "$T/legacy_ipc" --road $road
        expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_in err "other_preload: [1-9][0-9]* calls seen"; done_case
    done
done
# Two copies of nvipcfix (the system's in /etc/ld.so.preload, a wheel's
# through the launcher): the first in the search order fixes the calls and
# passes them on to the second (its next definitions), directly or through
# interposers between them, and the second sends what comes from there to
# the driver unchanged, fixes any other call, and says so at info level
# only. Before 0.3.7 the second warned in every process that the first
# bypassed it, and fixed the calls again: VMM memory read wrong bytes. A
# copy is known by what it defines and the release it carries as a string
# of its own, not by its file name: a library named libnvipcfix.so that is
# not nvipcfix, or one that defines the same names and mentions the text,
# is warned of; a copy opened with dlopen fixes the calls made through it.
mkdir -p "$OUT/copy" "$OUT/copy3" "$OUT/fake" && cp "$LIB" "$OUT/copy/libnvipcfix.so" &&
    cp "$LIB" "$OUT/copy3/libnvipcfix.so" && cp "$T/libcuda_proxy.so" "$OUT/fake/libnvipcfix.so"
for road in direct dlsym procaddr; do
    PRE="$LIB $OUT/copy/libnvipcfix.so" check "two copies of nvipcfix preloaded, $road: right, silent" 0 \
        -- "$T/legacy_ipc" --road $road
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; expect_empty err; done_case
done
PRE="$OUT/copy/libnvipcfix.so $LIB" check "... statistics: one line a process, the first copy's" 0 \
    NVIPCFIX_STATS=1 -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"
expect_in err "stats: exports=10 (with offset 8) "; expect_in err "stats: exports=0 (with offset 0) opens=10 (real 10"
[ "$(grep -c 'stats:' "$OUT/err")" -eq 2 ] || { ok=0; why="$(grep -c 'stats:' "$OUT/err") statistics lines, not 2"; }
done_case
PRE="$OUT/copy/libnvipcfix.so $LIB" check "... at info level the second names the first and its release" 0 \
    NVIPCFIX_LOG=info -- "$T/legacy_ipc"
expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"
expect_in err "info: $OUT/copy/libnvipcfix.so (nvipcfix version $(cat "$ROOT/VERSION")) is another copy of nvipcfix, loaded before this one ($LIB)"
[ "$(grep -c 'is another copy of nvipcfix' "$OUT/err")" -eq 2 ] || { ok=0; why="not one line a process"; }
[ "$(grep -c 'is loaded before nvipcfix' "$OUT/err")" -eq 0 ] || { ok=0; why="a warning"; }
done_case
PRE="$LIB $OUT/copy/libnvipcfix.so" check "... VMM memory through two copies: right, silent" 0 \
    NVIPCFIX_VMM=1 -- "$T/vmm_ipc"
expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"; expect_empty err; done_case
for between in "$T/libother_preload.so" "$OUT/copy3/libnvipcfix.so"; do
    case $between in "$OUT"/*) what="a third copy" ;; *) what="an interposer" ;; esac
    PRE="$LIB $between $OUT/copy/libnvipcfix.so" check "... with $what between them: VMM memory right, silent" 0 \
        NVIPCFIX_VMM=1 -- "$T/vmm_ipc"
    expect_in out "right 6/6, failed 0, wrong 0, stray 0, left 0"
    [ "$(grep -c 'nvipcfix\[' "$OUT/err")" -eq 0 ] || { ok=0; why="a line from nvipcfix: $(head -c 300 "$OUT/err")"; }
    done_case
    PRE="$LIB $between $OUT/copy/libnvipcfix.so" check "... with $what between them: legacy handles fixed once" 0 \
        NVIPCFIX_STATS=1 -- "$T/legacy_ipc"
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"
    [ "$(grep -c 'stats:' "$OUT/err")" -eq 2 ] || { ok=0; why="$(grep -c 'stats:' "$OUT/err") statistics lines, not 2"; }
    done_case
done
PRE="$T/libgpu_share.so $LIB $OUT/copy/libnvipcfix.so" check "... behind a GPU-sharing layer: as behind it alone, one warning a process" 2 \
    -- "$T/legacy_ipc" --road direct
expect_in out "right 2, wrong 0, failed 8;"
[ "$(grep -c 'libgpu_share.so is loaded before nvipcfix' "$OUT/err")" -eq 2 ] || { ok=0; why="not one warning a process"; }
[ "$(grep -c 'another copy' "$OUT/err")" -eq 0 ] || { ok=0; why="an info line at the default level"; }
done_case
PRE="$T/liblookalike.so $LIB" check "a library defining the same names and mentioning nvipcfix's release, ahead: warned of" 2 \
    -- "$T/legacy_ipc" --usage
expect_in err "liblookalike.so is loaded before nvipcfix and defines dlsym, cuIpcGetMemHandle,"; done_case
PRE="$LIB $OUT/copy/libnvipcfix.so" check "... a process without IPC calls opens no log file" 2 \
    NVIPCFIX_LOG_FILE="$OUT/copy/log.%p" -- "$T/legacy_ipc" --usage
[ -z "$(ls "$OUT/copy" | grep '^log\.')" ] || { ok=0; why="a log file: $(ls "$OUT/copy")"; }
done_case
PRE="$OUT/fake/libnvipcfix.so $LIB" check "a library named libnvipcfix.so that is not nvipcfix, ahead: warned of" 2 \
    -- "$T/legacy_ipc" --usage
expect_in err "fake/libnvipcfix.so is loaded before nvipcfix and defines cuIpcGetMemHandle:"; done_case
if [ -n "$SAN_PRE" ]; then
    skip "a copy opened with dlopen beside a preloaded one: the calls through it fixed" \
        "LeakSanitizer reports the tables an unloaded library leaves"
else
    PRE=$LIB check "a copy opened with dlopen beside a preloaded one: the calls through it fixed" 0 \
        NVIPCFIX_STATS=1 -- "$T/dlopen_close" "$OUT/copy/libnvipcfix.so"
    expect_in err "stats: exports=1 (with offset 1)"; done_case
fi
PRE="" check "no libcuda.so.1: the entry point is not there natively" 0 LIBPATH=/nonexistent -- \
    "$T/no_driver"
expect_in out "no cuIpcGetMemHandle"; done_case
mkdir -p "$OUT/broken" && : >"$OUT/broken/libcuda.so.1"
for dir in /nonexistent "$OUT/broken"; do
    what="none"; [ "$dir" = /nonexistent ] || what="an empty file"
    PRE=$LIB check "no usable libcuda.so.1 ($what): an error, one warning" 0 LIBPATH="$dir" -- \
        "$T/no_driver"
    expect_in out "cuIpcGetMemHandle -> 3"; expect_in out "again -> 3"
    [ "$(grep -c nvipcfix "$OUT/err")" -eq 1 ] || { ok=0; why="not exactly one warning"; }
    done_case
done
PRE="" check "driver failing every call, baseline: its error without the preload" 2 SIMCUDA_FAIL=all -- "$T/legacy_ipc"
expect_in err "context failed: error 999"; done_case
# The export's first call is the driver's own cuIpcGetMemHandle: its error
# is the native answer, and nothing of nvipcfix failed, so nothing is said.
PRE=$LIB check "driver failing every call the export makes: the same error through nvipcfix, silent" 2 \
    SIMCUDA_FAIL=cuIpcGetMemHandle,cuPointerGetAttributes -- "$T/legacy_ipc"
expect_in err "^legacy_ipc: export failed: error 999$"
[ "$(grep -c "nvipcfix" "$OUT/err")" -eq 0 ] || { ok=0; why="nvipcfix said something"; }
done_case
PRE=$LIB check "driver failing cuPointerGetAttributes: native export, one warning" 1 \
    SIMCUDA_FAIL=cuPointerGetAttributes -- "$T/legacy_ipc"
expect_in out "right 1, wrong 9, failed 0;"
[ "$(grep -c "cannot tell which allocation" "$OUT/err")" -eq 1 ] || { ok=0; why="not one warning"; }
done_case
PRE=$LIB check "driver failing cuIpcOpenMemHandle: the driver's error, counted by nvipcfix" 2 \
    SIMCUDA_FAIL=cuIpcOpenMemHandle_v2 NVIPCFIX_STATS=1 -- "$T/legacy_ipc"
expect_in out "right 0, wrong 0, failed 10;"
[ "$(grep -c "^legacy_ipc: open failed: error 999$" "$OUT/err")" -eq 10 ] || { ok=0; why="not 10 opens failing with 999"; }
expect_in err "stats: exports=0 (with offset 0) opens=10 (real 10, table hits 0) closes=0 (real 0) errors=10"
done_case

# Harmlessness: ordinary programs, with and without the preload. (Under a
# sanitizer build, the leaks of those programs themselves are not ours.)
if [ -n "$RUNNER" ]; then
    skip "harmless programs" "host programs cannot load the aarch64 library"
else
saved_asan=${ASAN_OPTIONS:-}
[ -n "$SAN_PRE" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
i=0
while IFS= read -r cmd; do
    i=$((i + 1))
    PRE="" check "harmless $i, reference" 0 -- sh -c "$cmd; echo status=\$?"
    cp "$OUT/out" "$OUT/ref.out"; cp "$OUT/err" "$OUT/ref.err"; done_case
    PRE=$LIB check "harmless $i: $cmd" 0 -- sh -c "$cmd; echo status=\$?"
    cmp -s "$OUT/out" "$OUT/ref.out" || { ok=0; why="output differs"; }
    cmp -s "$OUT/err" "$OUT/ref.err" || { ok=0; why="stderr differs"; }
    done_case
done <<'CMDS'
echo hello; false
ls -l /usr/include | sort -k9 | head -n 40; printf 'a\nb\n' | wc -l
seq 1 200000 | sort -r --parallel=4 -S 8M | sha256sum
python3 -c 'import threading, hashlib; r=[]; t=[threading.Thread(target=lambda i=i: r.append(hashlib.sha256(bytes([i])*99999).hexdigest())) for i in range(16)]; [x.start() for x in t]; [x.join() for x in t]; print(sorted(r)[0])'
python3 -c 'import ctypes, ctypes.util, json, sqlite3, zlib, ssl, decimal, math, _struct; print(ctypes.CDLL(ctypes.util.find_library("m")).cos is not None, zlib.crc32(b"x"))'
CMDS
[ -n "$SAN_PRE" ] && export ASAN_OPTIONS="$saved_asan"
fi

# Security: fix mode creates no files, sockets or shared memory of its own.
if [ -n "$RUNNER" ]; then
    skip "fix mode creates no files" "strace would trace the emulator"
elif [ -n "$SAN_PRE" ]; then
    skip "fix mode creates no files" "a sanitizer runtime creates files of its own"
elif command -v strace >/dev/null 2>&1; then
    created() { # the system calls that could create something, by kind
        strace -f -qq -e trace=open,openat,creat,mkdir,mknod,mknodat,socket,shmget,mq_open \
            -o "$OUT/trace" env LD_LIBRARY_PATH="$SIM" ${1:+LD_PRELOAD="$SAN_PRE${SAN_PRE:+ }$1"} \
            "$T/legacy_ipc" >/dev/null 2>&1
        grep -E 'O_CREAT|socket\(|mkdir|mknod|shmget|mq_open' "$OUT/trace" | sed 's/^[0-9]* //' |
            sed 's/0x[0-9a-f]*/ADDR/g' | sort
    }
    current="fix mode creates no files, sockets or shared memory"
    ok=1
    created "" >"$OUT/c0"
    created "$LIB" >"$OUT/c1"
    cmp -s "$OUT/c0" "$OUT/c1" || { ok=0; why="differs: $(diff "$OUT/c0" "$OUT/c1" | head -5)"; }
    echo >"$OUT/out"; echo >"$OUT/err"
    done_case
else
    current="fix mode creates no files (strace)"; ok=0; why="strace is not installed"; done_case
fi

# valgrind memcheck on the two-process program, both processes.
if [ -n "$RUNNER" ]; then
    skip "valgrind memcheck" "valgrind cannot run an aarch64 program here"
elif [ -n "$SAN_PRE" ]; then
    skip "valgrind memcheck" "not with a sanitizer build"
elif command -v valgrind >/dev/null 2>&1; then
    PRE=$LIB check "valgrind memcheck: no errors, no definite leaks" 0 SIMCUDA_VA_GIB=1 -- \
        valgrind -q --trace-children=yes --error-exitcode=9 --leak-check=full \
        --errors-for-leak-kinds=definite "$T/legacy_ipc" --reopen
    expect_in out "right 10, wrong 0, failed 0; .*-> CORRECT"; done_case
else
    current="valgrind memcheck"; ok=0; why="valgrind is not installed"; done_case
fi

# The docs' claims a machine can check (scripts/check-docs), and the check
# itself failing on a copy of the docs with a setting and a figure wrong.
PRE="" check "docs: every setting documented, the README's figures from the newest run" 0 -- \
    python3 "$ROOT/scripts/check-docs"
expect_in out "check-docs: ok"; done_case
mkdir -p "$OUT/docs-copy/shim" "$OUT/docs-copy/docs" "$OUT/docs-copy/tools"
cp "$ROOT/README.md" "$ROOT/VERSION" "$ROOT/CHANGELOG.md" "$OUT/docs-copy/" && cp "$ROOT"/docs/*.md "$ROOT/docs/nvipcfix.1" "$OUT/docs-copy/docs/" &&
    cp "$ROOT/tools/nvipcfix" "$OUT/docs-copy/tools/" &&
    sed 's/"NVIPCFIX_MODE", /"NVIPCFIX_MODE", "NVIPCFIX_NEW_SETTING", /' "$ROOT/shim/config.c" \
        >"$OUT/docs-copy/shim/config.c" &&
    sed -i 's/^\(## What it costs\)$/\1\n\nAn export costs 0.01234 us./' "$OUT/docs-copy/README.md"
PRE="" check "docs: check-docs fails on an undocumented setting and a figure from nowhere" 1 -- \
    python3 "$ROOT/scripts/check-docs" "$OUT/docs-copy"
expect_in out "README.md settings table: NVIPCFIX_NEW_SETTING (read in shim/config.c) is missing"
expect_in out "docs/nvipcfix.1 ENVIRONMENT: NVIPCFIX_NEW_SETTING"
expect_in out "'What it costs': 0.01234 is not in docs/performance.md"; done_case

# The built library: only libc needed, only the entry points exported, no
# named version node (it would fail to interpose versioned references).
current="library links no CUDA library and exports only the entry points"
ok=1
if readelf -d "$LIB" | grep NEEDED | grep -q -e libcuda -e libcudart; then
    ok=0; why="DT_NEEDED on a CUDA library"
fi
exports=$(readelf --dyn-syms -W "$LIB" | awk '$7 != "UND" && $5 == "GLOBAL" {print $8}' | sort | tr '\n' ' ')
want="cuGetProcAddress cuGetProcAddress_v2 cuIpcCloseMemHandle cuIpcGetMemHandle cuIpcOpenMemHandle cuIpcOpenMemHandle_v2 cuMemAddressFree cuMemMap cuMemSetAccess cuMemUnmap dlsym "
[ "$exports" = "$want" ] || { ok=0; why="exports are: $exports"; }
readelf -V "$LIB" | grep -q "Version definition" && { ok=0; why="has a version definition"; }
echo >"$OUT/out"; echo >"$OUT/err"
done_case

if [ "$skipped" -gt 0 ]; then
    echo "skipped, with the reasons:"
    sed 's/^\[ SKIPPED \] /  /' "$OUT/skipped"
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
