#!/bin/sh
# make bench: what nvipcfix costs against native, per call, median and p99,
# at 1, 8 and 32 threads; start-up of a process without CUDA; the tables'
# memory; and (on the simulated driver, under valgrind) the library's own
# instructions per call. On a machine with a GPU the timings use the GPU.
# Usage: scripts/bench.sh BUILD_DIR [--quick]
set -u
B=$(cd "${1:-build}" 2>/dev/null && pwd) || { echo "bench: no build folder '${1:-build}' (run make)" >&2; exit 2; }
shift
LIB=$B/libnvipcfix.so
# Without the library every preloaded run would be native against native.
[ -f "$LIB" ] || { echo "bench: no library at $LIB (run make)" >&2; exit 2; }
if LD_PRELOAD=$LIB /bin/true 2>&1 | grep -q "cannot be preloaded"; then
    echo "bench: $LIB cannot be preloaded:" >&2
    LD_PRELOAD=$LIB /bin/true
    exit 2
fi
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$B/bench"
cc -shared -fPIC -O2 -o "$B/bench/empty_preload.so" tests/bench/empty_preload.c

if nvidia-smi -L >/dev/null 2>&1; then
    where="GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
    cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I"$CUDA_HOME/include" tests/bench/ipc_bench.c \
        -o "$B/bench/ipc_bench" -L"$CUDA_HOME/lib64/stubs" -lcuda -ldl || exit 2
    BENCH=$B/bench/ipc_bench
    cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I"$CUDA_HOME/include" tests/integration/vmm_ipc.c \
        shim/vmm_ticket.c shim/fd_channel.c shim/keyed_hash.c -o "$B/bench/vmm_ipc" \
        -L"$CUDA_HOME/lib64/stubs" -lcuda -ldl || exit 2
    VMM=$B/bench/vmm_ipc
    gpu=1
else
    where="no GPU: the simulated driver (tests/simdrv), so native times are the simulator's"
    export LD_LIBRARY_PATH="$B/sim${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    BENCH=$B/tests/ipc_bench
    VMM=$B/tests/vmm_ipc
    gpu=0
fi

echo "## per call: native against nvipcfix ($where; $(nproc) CPUs)"
echo
"$BENCH" compare "$LIB" "$@" || exit 2
echo
echo "## start-up of /bin/true: no preload, a preload that does nothing, nvipcfix"
echo
"$BENCH" startup "$B/bench/empty_preload.so" "$LIB" "$@"
echo
cc -O2 -o "$B/bench/load_order_cost" tests/bench/load_order_cost.c -ldl &&
    LD_PRELOAD=$LIB "$B/bench/load_order_cost"
echo
echo "## fork() in the parent while 8 threads are busy in IPC calls (median of 300, us)"
echo
echo "| run | native | nvipcfix | ratio |"
echo "| --- | --- | --- | --- |"
for run in 1 2 3; do
    med() { sed -n 's/.*median \([0-9.]*\) us.*/\1/p'; }
    a=$(LD_PRELOAD= "$B/tests/fork_safety" --bench 8 300 | med)
    b=$(LD_PRELOAD=$LIB "$B/tests/fork_safety" --bench 8 300 | med)
    echo "| $run | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a }') |"
done
echo
echo "## VMM memory (NVIPCFIX_VMM=1) against legacy IPC, both through nvipcfix (median of 30)"
echo
NVIPCFIX_VMM=1 LD_PRELOAD=$LIB "$VMM" --bench | sed 's/^BENCH /    /'
echo
echo "## memory of the tables (heap bytes, glibc malloc)"
echo
"$B/tests/table_memory" | sed 's/^RESULT \([a-z_0-9]*\) \([0-9.]*\) 0/| \1 | \2 |/'

if [ $gpu = 0 ] && command -v valgrind >/dev/null 2>&1; then
    echo
    echo "## instructions per call in libnvipcfix.so itself (callgrind, simulated driver)"
    echo
    echo "| operation | instructions per call |"
    echo "| --- | --- |"
    for op in export_interior reopen_close open_close_last dlsym; do
        total() { # N: the library's instructions for N operations
            f=$B/bench/cg.$op.$1
            SIMCUDA_VA_GIB=1 LD_PRELOAD=$LIB valgrind --tool=callgrind --callgrind-out-file="$f" \
                "$BENCH" count $op "$1" >/dev/null 2>&1
            callgrind_annotate --inclusive=no --threshold=100 "$f" 2>/dev/null |
                awk '/libnvipcfix\.so/ { gsub(",", "", $1); s += $1 } END { print s + 0 }'
        }
        a=$(total 2000)
        b=$(total 4000)
        echo "| $op | $(( (b - a) / 2000 )) |"
    done
fi
