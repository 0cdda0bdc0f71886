#!/bin/sh
# make bench: what nvipcfix costs against native, per call, median and p99,
# at 1, 8 and 32 threads; start-up of a process without CUDA; fork() beside
# busy threads; VMM exports and first opens; the tables' memory; and (on the
# simulated driver, under valgrind) the library's own instructions per call
# and per start-up. Ends with one table: issue 20's goals, each measured
# here, and whether it holds (scripts/bench-goals.sh, from the raw files
# left in BUILD/bench/out). On a machine with a GPU the timings use the
# GPU; without one, the simulated driver (and the table says so).
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
OUT=$B/bench/out
mkdir -p "$OUT"
rm -f "$OUT"/* # raw files for scripts/bench-goals.sh: none left from an earlier run
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
case " $* " in *" --quick "*) quick=1 ;; *) quick=0 ;; esac

echo "## per call: native against nvipcfix ($where; $(nproc) CPUs)"
echo
"$BENCH" compare "$LIB" "$@" >"$OUT/compare" || exit 2
grep -v '^COMPARE ' "$OUT/compare" | sed '${/^$/d}'
echo
# The export alone, in short runs pinned to one CPU: native, a pass-through
# interposer (tests/bench/passthrough_preload.c: the least any interposer
# adds) and nvipcfix, in turn, RUNS times. On the H200 the driver's export
# runs mostly at one of two speeds for a whole process (0.04 or 0.07 us a
# call), whatever is preloaded: the one-thread goal rows compare each side's
# runs at the fast speed (the goals' table, below), and the table shows all.
cc -shared -fPIC -O2 -I"$CUDA_HOME/include" tests/bench/passthrough_preload.c \
    -o "$B/bench/passthrough_preload.so" -ldl || exit 2
if [ $quick = 1 ]; then runs=4; else runs=20; fi
pin=""
if command -v taskset >/dev/null 2>&1; then pin="taskset -c $(( $(nproc) > 4 ? 3 : 0 ))"; fi
echo "## export alone: native, a pass-through interposer, nvipcfix ($runs short runs each, in turn${pin:+, $pin}; median per call of each run, us)"
echo
echo "| run | native base | pass-through base | nvipcfix base | native interior | pass-through interior | nvipcfix interior | native 32 threads | pass-through 32 threads | nvipcfix 32 threads |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
: >"$OUT/exports"
r=1
while [ $r -le $runs ]; do
    line="| $r"
    for side in native pass nvipcfix; do
        case $side in
            native) pre= ;;
            pass) pre=$B/bench/passthrough_preload.so ;;
            nvipcfix) pre=$LIB ;;
        esac
        LD_PRELOAD=$pre $pin "$BENCH" exports "$@" |
            awk -v s=$side -v r=$r '$1 == "RESULT" && ($2 == "export_base" || $2 == "export_interior") { print s, r, $2, $3 }' >>"$OUT/exports"
        # many threads: not pinned
        LD_PRELOAD=$pre "$BENCH" threads "$@" |
            awk -v s=$side -v r=$r '$1 == "RESULT" && $2 == "export_interior_threads_32" { print s, r, $2, $3 }' >>"$OUT/exports"
    done
    for op in export_base export_interior export_interior_threads_32; do
        for side in native pass nvipcfix; do
            line="$line | $(awk -v s=$side -v r=$r -v o=$op '$1 == s && $2 == r && $3 == o { print $4 }' "$OUT/exports")"
        done
    done
    echo "$line |"
    r=$((r + 1))
done
# N rounds, each a native and an nvipcfix run of CMD (which goes first
# alternating); FILTER reads the figure from its output (its argument: the
# side, native or nvipcfix). Prints a row per round and appends "native
# nvipcfix ratio" to FILE for each round that gave both: N FILE FILTER CMD...
paired_rounds() {
    n_=$1 file_=$2 f_=$3
    shift 3
    : >"$file_"
    r_=1
    while [ $r_ -le $n_ ]; do
        if [ $((r_ % 2)) = 1 ]; then
            a=$(LD_PRELOAD= "$@" | $f_ native)
            b=$(LD_PRELOAD=$LIB "$@" | $f_ nvipcfix)
        else
            b=$(LD_PRELOAD=$LIB "$@" | $f_ nvipcfix)
            a=$(LD_PRELOAD= "$@" | $f_ native)
        fi
        ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", b / a }')
        echo "| $r_ | $a | $b | $ratio |"
        [ -n "$ratio" ] && echo "$a $b $ratio" >>"$file_"
        r_=$((r_ + 1))
    done
}
echo
BENCH_GOALS_FUNCTIONS=1 . scripts/bench-goals.sh
for op in export_base export_interior export_interior_threads_32; do
    echo "$op: best run native $(best_of native $op), pass-through $(best_of pass $op), nvipcfix $(best_of nvipcfix $op); median run $(median_of native $op), $(median_of pass $op), $(median_of nvipcfix $op); median of the fast runs $(fast_of native $op) ($(fast_count native $op) runs), $(fast_of pass $op) ($(fast_count pass $op)), $(fast_of nvipcfix $op) ($(fast_count nvipcfix $op)) us"
done
# The pointers opened in held blocks: SROUNDS rounds, each a native and an
# nvipcfix run of `ipc_bench scale` (which goes first alternating); a
# round's ratio is that of its two times; the goal row takes the median of
# the rounds' ratios (one run of each moved between 0.76x and 1.53x from
# one H200 run to the next).
if [ $quick = 1 ]; then srounds=3; else srounds=9; fi
echo
echo "## pointers opened in held blocks, alone ($srounds rounds of a run a side, ms)"
echo
echo "| round | native | nvipcfix | ratio |"
echo "| --- | --- | --- | --- |"
scale_ms() { awk '$1 == "RESULT" && $2 == "scale_open_total_ms" { print $3 }'; }
paired_rounds $srounds "$OUT/scale" scale_ms "$BENCH" scale "$@"
echo
echo "## start-up of /bin/true: no preload, a preload that does nothing, nvipcfix"
echo
"$BENCH" startup "$B/bench/empty_preload.so" "$LIB" "$@" >"$OUT/startup" || exit 2
grep -v '^STARTUP ' "$OUT/startup" | sed '${/^$/d}'
if command -v valgrind >/dev/null 2>&1; then
    # Instructions (the loader's and the constructors'), whatever the machine's load.
    # valgrind loads every object within 8 GiB of address zero, where the
    # load-order check cannot tell how the loader left an object's table
    # pointers: there it looks the watched names up (docs/design.md), a
    # path a process started without valgrind takes only when a library
    # ahead of nvipcfix may define one.
    instr() {
        LD_PRELOAD=$1 valgrind --tool=callgrind --callgrind-out-file="$B/bench/cg.startup" \
            /bin/true 2>&1 | sed -n 's/.*Collected : *//p'
    }
    echo
    echo "Instructions to start /bin/true (callgrind, user space, loader included; nvipcfix's" \
         "load-order check on its look-up path under valgrind): none" \
         "$(instr ''), empty preload $(instr "$B/bench/empty_preload.so"), nvipcfix $(instr "$LIB")."
fi
echo
# fork(): ROUNDS rounds, each a native run and an nvipcfix run of FORKS forks
# (which goes first alternating); a round's ratio is the ratio of the two
# medians; the median of the rounds' ratios and their range. The rounds'
# ratios spread by 10% and more, run by run, whatever is held alike (on the
# H200: the same page tables and mappings with address randomization off,
# the threads pinned): many short rounds pin the median down better than a
# few long ones (BENCH_FORK_ROUNDS, BENCH_FORK_FORKS to change them).
if [ $quick = 1 ]; then rounds=3 forks=100; else rounds=${BENCH_FORK_ROUNDS:-101} forks=${BENCH_FORK_FORKS:-150}; fi
echo "## fork() in the parent while 8 threads are busy in IPC calls ($rounds rounds of $forks forks a side, us)"
echo
echo "| round | native median | nvipcfix median | ratio |"
echo "| --- | --- | --- | --- |"
med() { tee -a "$OUT/fork_lines.$1" | sed -n 's/.*median \([0-9.]*\) us.*/\1/p'; }
paired_rounds $rounds "$OUT/fork" med "$B/tests/fork_safety" --bench 8 $forks
# what the threads did beside the forks, each side's median run
fork_beside() { sed -n "s/.*rounds \([0-9.]*\) a ms, minor faults \([0-9.]*\) a fork.*/\\$1/p" "$OUT/fork_lines.$2" 2>/dev/null |
    sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
echo
echo "Beside the forks (each side's median run): the 8 threads' rounds of an open, a close and an export a ms, native $(fork_beside 1 native)," \
     "nvipcfix $(fork_beside 1 nvipcfix) (its opens and closes of a held block are answered from its table);" \
     "minor page faults a fork, native $(fork_beside 2 native), nvipcfix $(fork_beside 2 nvipcfix)."
echo
echo "## VMM memory (NVIPCFIX_VMM=1) against legacy IPC, both through nvipcfix (median of 30)"
echo
NVIPCFIX_VMM=1 LD_PRELOAD=$LIB "$VMM" --bench >"$OUT/vmm" 2>&1
sed 's/^BENCH /    /' "$OUT/vmm"
torch=""
tn=6
if [ $gpu = 1 ] && [ -f tests/gpu/vmm_vs_torch.py ] && python3 -c 'import torch' >/dev/null 2>&1; then
    echo
    echo "## VMM first open against PyTorch's own import of the same memory (tests/gpu/vmm_vs_torch.py)"
    echo
    NVIPCFIX_VMM=1 LD_PRELOAD=$LIB timeout 180 python3 tests/gpu/vmm_vs_torch.py $tn >"$OUT/torch" 2>&1
    sed 's/^BENCH /    /' "$OUT/torch"
    echo
    echo "The same, each import and open after 5 ms asleep (VMM_VS_TORCH_GAP_MS=5: the processes' threads idle):"
    echo
    VMM_VS_TORCH_GAP_MS=5 NVIPCFIX_VMM=1 LD_PRELOAD=$LIB timeout 180 python3 tests/gpu/vmm_vs_torch.py $tn \
        >"$OUT/torch_gap5" 2>&1
    sed 's/^BENCH /    /' "$OUT/torch_gap5"
    torch=$OUT/torch
fi
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
        # the library's own source files, code inlined from its headers
        # included (such lines carry no object name)
        total() { # N: the library's instructions for N operations
            f=$B/bench/cg.$op.$1
            SIMCUDA_VA_GIB=1 LD_PRELOAD=$LIB valgrind --tool=callgrind --callgrind-out-file="$f" \
                "$BENCH" count $op "$1" >/dev/null 2>&1
            callgrind_annotate --inclusive=no --threshold=100 "$f" 2>/dev/null |
                awk '/^ *[0-9,]+ +(\( *[0-9.]+%\) +)?(\/[^ ]*\/)?(shim|preload)\// { gsub(",", "", $1); s += $1 } END { print s + 0 }'
        }
        a=$(total 2000)
        b=$(total 4000)
        echo "| $op | $(( (b - a) / 2000 )) |"
    done
fi

# ---- the goals of issue 20, each with what was measured above ----------------
printf '%s\n' "$where" >"$OUT/where"
cat >"$OUT/meta" <<META
gpu=$gpu
quick=$quick
runs=$runs
srounds=$srounds
rounds=$rounds
tn=$tn
META
sh scripts/bench-goals.sh "$OUT"
