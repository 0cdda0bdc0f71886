#!/bin/sh
# make bench: what nvipcfix costs against native, per call, median and p99,
# at 1, 8 and 32 threads; start-up of a process without CUDA; fork() beside
# busy threads; VMM exports and first opens; the tables' memory; and (on the
# simulated driver, under valgrind) the library's own instructions per call
# and per start-up. Ends with one table: issue 20's goals, each measured
# here, and whether it holds. On a machine with a GPU the timings use the
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
# a side's runs, sorted; its best run and its median run: SIDE OP
runs_of() { awk -v s="$1" -v o="$2" '$1 == s && $3 == o { print $4 }' "$OUT/exports" | sort -n; }
best_of() { runs_of "$1" "$2" | head -n 1; }
median_of() { runs_of "$1" "$2" | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# the median of a side's runs at the driver's fast speed: those within 25%
# of its best run (in the H200 runs the fast ones came within 1.24x of the
# best, the slow ones from 1.33x on), if at least 3
fast_of() { runs_of "$1" "$2" | awk 'NR == 1 { lim = $1 * 1.25 } $1 <= lim { v[++n] = $1 }
    END { if (n >= 3) print (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) }'; }
fast_count() { runs_of "$1" "$2" | awk 'NR == 1 { lim = $1 * 1.25 } $1 <= lim { n++ } END { print n + 0 }'; }
# A round of a native and an nvipcfix run of CMD (which goes first
# alternating with the round R); FILTER reads the figure from its output.
# Sets a (native) and b (nvipcfix): R FILTER CMD...
pair_round() {
    r_=$1 f_=$2
    shift 2
    if [ $((r_ % 2)) = 1 ]; then
        a=$(LD_PRELOAD= "$@" | $f_)
        b=$(LD_PRELOAD=$LIB "$@" | $f_)
    else
        b=$(LD_PRELOAD=$LIB "$@" | $f_)
        a=$(LD_PRELOAD= "$@" | $f_)
    fi
}
echo
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
: >"$OUT/scale"
r=1
while [ $r -le $srounds ]; do
    pair_round $r scale_ms "$BENCH" scale "$@"
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", b / a }')
    echo "| $r | $a | $b | $ratio |"
    [ -n "$ratio" ] && echo "$a $b $ratio" >>"$OUT/scale"
    r=$((r + 1))
done
echo
echo "## start-up of /bin/true: no preload, a preload that does nothing, nvipcfix"
echo
"$BENCH" startup "$B/bench/empty_preload.so" "$LIB" "$@" >"$OUT/startup" || exit 2
grep -v '^STARTUP ' "$OUT/startup" | sed '${/^$/d}'
if command -v valgrind >/dev/null 2>&1; then
    # Instructions (the loader's and the constructors'), whatever the machine's load.
    instr() {
        LD_PRELOAD=$1 valgrind --tool=callgrind --callgrind-out-file="$B/bench/cg.startup" \
            /bin/true 2>&1 | sed -n 's/.*Collected : *//p'
    }
    echo
    echo "Instructions to start /bin/true (callgrind, user space, loader included): none" \
         "$(instr ''), empty preload $(instr "$B/bench/empty_preload.so"), nvipcfix $(instr "$LIB")."
fi
echo
# fork(): ROUNDS rounds, each a native run and an nvipcfix run of FORKS forks
# (which goes first alternating); a round's ratio is the ratio of the two
# medians; the median of the rounds' ratios and their range.
if [ $quick = 1 ]; then rounds=3 forks=100; else rounds=31 forks=300; fi
echo "## fork() in the parent while 8 threads are busy in IPC calls ($rounds rounds of $forks forks a side, us)"
echo
echo "| round | native median | nvipcfix median | ratio |"
echo "| --- | --- | --- | --- |"
med() { sed -n 's/.*median \([0-9.]*\) us.*/\1/p'; }
: >"$OUT/fork"
r=1
while [ $r -le $rounds ]; do
    pair_round $r med "$B/tests/fork_safety" --bench 8 $forks
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", b / a }')
    echo "| $r | $a | $b | $ratio |"
    [ -n "$ratio" ] && echo "$a $b $ratio" >>"$OUT/fork"
    r=$((r + 1))
done
# column $1 of a file of numbers: median, the ends of its 95% confidence
# interval (distribution-free: the values of ranks (n - 1.96 sqrt(n)) / 2
# rounded down and (n + 1.96 sqrt(n)) / 2 rounded up, plus 1: the 10th and
# 22nd of 31, the 6th and 16th of 21), the lowest and the highest
stat_of() { sort -n -k"$1","$1" "$2" | awk -v c="$1" '{ v[NR] = $c } END {
    if (NR == 0) exit; m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    lo = int((NR - 1.96 * sqrt(NR)) / 2); hi = (NR + 1.96 * sqrt(NR)) / 2
    hi = (hi == int(hi) ? hi : int(hi) + 1) + 1
    if (lo < 1) lo = 1; if (hi > NR) hi = NR
    printf "%s %s %s %s %s\n", m, v[lo], v[hi], v[1], v[NR] }'; }
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
echo
if [ $gpu = 1 ]; then
    echo "## goals ($where)"
else
    echo "## goals (NOT on a GPU: the simulated driver, so native times and the verdicts are the simulator's)"
fi
echo
echo "| measure | native | nvipcfix | ratio | goal | |"
echo "| --- | --- | --- | --- | --- | --- |"
verdict() { awk -v v="$1" -v g="$2" 'BEGIN { print (v != "" && v + 0 <= g + 0) ? "held" : "NOT held" }'; }
# row for a COMPARE line: NAME LABEL UNIT GOAL_RATIO
compare_row() {
    set -- "$1" "$2" "$3" "$4" "$(awk -v n="$1" '$1 == "COMPARE" && $2 == n { print $3, $4 }' "$OUT/compare")"
    if [ -z "$5" ]; then
        echo "| $2 | | | | <= ${4}x | not measured |"
        return
    fi
    awk -v l="$2" -v u="$3" -v g="$4" -v v="$5" 'BEGIN { split(v, x, " "); r = x[1] > 0 ? x[2] / x[1] : 0
        printf "| %s | %.3f %s | %.3f %s | %.2fx | <= %sx | %s |\n", l, x[1], u, x[2], u, r, g,
               (x[1] > 0 && r <= g) ? "held" : "NOT held" }'
}
# start-up: points over the empty preload
set -- $(awk '$1 == "STARTUP" { printf "%s ", $3 }' "$OUT/startup") \
       $(awk '$1 == "STARTUP" && NR > 0 { last = $0 } END { split(last, x, " "); print x[5], x[6], x[7] }' "$OUT/startup")
if [ $# -eq 5 ]; then
    echo "| start-up of /bin/true | empty preload $1 us | $2 us | $(printf '%+.1f' "$3") points over the empty preload (rounds $(printf '%+.1f' "$4") to $(printf '%+.1f' "$5")) | within 1 point of the empty preload | $(verdict "$3" 1) |"
fi
# an export row from the short runs: OP LABEL GOAL_RATIO STATISTIC (fast:
# the median of each side's runs at the driver's fast speed; median: the
# median run; the best runs' and the other's ratios beside it). One
# thread: the fast runs. On the H200 a process's export runs mostly at one
# of two speeds whatever is preloaded (its base and interior exports now
# and then at different ones), so the fast runs of each side compare like
# with like, and their median, unlike the best run, is not decided by one
# lucky run of native (best-of ratios of one build moved 1.27x-1.32x from
# one H200 run to the next); the pass-through interposer's must agree with
# native's within 10%. 32 threads: the median runs (the best run of
# 32 threads on 16 CPUs is one where they happened not to meet: in one
# H200 run the pass-through interposer's best was 0.76x native's).
exports_row() {
    other=$([ "$4" = fast ] && echo median || echo fast)
    awk -v l="$2" -v g="$3" -v s="$4" -v o="$other" \
        -v a="$("$4"_of native "$1")" -v p="$("$4"_of pass "$1")" -v b="$("$4"_of nvipcfix "$1")" \
        -v oa="$("$other"_of native "$1")" -v ob="$("$other"_of nvipcfix "$1")" \
        -v ba="$(best_of native "$1")" -v bb="$(best_of nvipcfix "$1")" \
        'function ratio(x, y) { return (x > 0 && y != "") ? sprintf("%.3fx", y / x) : "-" }
        BEGIN { if (a == "" || b == "" || p == "") { printf "| %s | | | | <= %sx | not measured (too few %s runs) |\n", l, g, s; exit }
        # the pass-through interposer adds ~nothing: if its figure is not
        # native'"'"'s, the sides were not compared at one speed
        if (s == "fast" && (p / a > 1.1 || a / p > 1.1)) {
            printf "| %s | %.4f us (pass-through interposer %.4f) | %.4f us | | <= %sx | not measured (native and the pass-through interposer differ: not one speed) |\n", l, a, p, b, g; exit }
        r = a > 0 ? b / a : 0
        printf "| %s | %.4f us (pass-through interposer %s) | %.4f us | %.3fx (%s runs %s, best runs %s) | <= %sx | %s |\n", l, a,
               (p == "" ? "-" : sprintf("%.4f", p)), b, r, o, ratio(oa, ob), ratio(ba, bb), g,
               ((a > 0 && r <= g) ? "held" : "NOT held") }'
}
exports_row export_base "export of a block base (median of each side's fast runs, of $runs)" 1.3 fast
exports_row export_interior "export of an interior pointer, 1 thread (median of each side's fast runs, of $runs)" 1.3 fast
exports_row export_interior_threads_32 "... 32 threads (median of $runs runs a side)" 1.0 median
set -- $(stat_of 3 "$OUT/scale") $(stat_of 1 "$OUT/scale") $(stat_of 2 "$OUT/scale")
if [ $# -eq 15 ]; then
    echo "| $( [ $quick = 1 ] && echo 10,000 || echo 100,000) new pointers opened in held blocks | $6 ms (rounds $9-${10}) | ${11} ms (rounds ${14}-${15}) | ${1}x (median of $srounds rounds; all $4-$5) | <= 1.2x | $(verdict "$1" 1.2) |"
else
    echo "| new pointers opened in held blocks | | | | <= 1.2x | not measured |"
fi
compare_row scale_heap_while_open_kib "heap while they are open" KiB 2
# A VMM export again: judged on a single call made just after other work
# (what a program exporting now and then pays; in earlier H200 runs 0.42-
# 1.26 us), with the legacy export's in the same place (a memo hit in
# nvipcfix: 0.33-0.59 us, so mostly the machine's cold caches) and the
# calls made in a row (the work itself) beside it.
again=$(sed -n 's/.*again: legacy \([0-9.]*\) us, VMM \([0-9.]*\) us; again, [0-9]* in a row: legacy \([0-9.]*\) us, VMM \([0-9.]*\) us.*/\1 \2 \3 \4/p' "$OUT/vmm")
if [ -n "$again" ]; then
    set -- $again
    echo "| VMM export of an exported chunk again, a single call after other work (10 in a row) | (legacy $1 us; in a row $3 us) | $2 us (in a row $4 us) | | <= 1 us | $(verdict "$2" 1) |"
else
    echo "| VMM export of an exported chunk again | | | | <= 1 us | not measured (vmm_ipc --bench failed: $OUT/vmm) |"
fi
start=$(sed -n "s/.*reservation's start.*: first \([0-9.]*\) us, again \([0-9.]*\) us, [0-9]* in a row \([0-9.]*\) us.*/\1 \2 \3/p" "$OUT/vmm")
if [ -n "$start" ]; then
    set -- $start
    echo "| VMM export of a reservation's start again, nothing mapped since, a single call after other work (10 in a row) | (its walk $1 us) | $2 us (in a row $3 us) | | <= 1 us | $(verdict "$2" 1) |"
else
    echo "| VMM export of a reservation's start again, nothing mapped since | | | | <= 1 us | not measured (vmm_ipc --bench failed: $OUT/vmm) |"
fi
# the figures of vmm_vs_torch.py for a size, if it ended CORRECT: FILE SIZE
# -> PyTorch's median in a row, nvipcfix's, the median of the rounds'
# ratios, their range, the ratio right after the other side's block
torch_figures() {
    grep -q -- "-> CORRECT" "$1" 2>/dev/null || return 0
    awk -v s="$2" '$1 == "BENCH" && tolower($2) == "torch_import_" s { t = $3 }
        $1 == "BENCH" && tolower($2) == "vmm_first_open_" s { v = $3 }
        $1 == "BENCH" && tolower($2) == "vmm_over_torch_after_other_" s { o = $3 }
        $1 == "BENCH" && tolower($2) == "vmm_over_torch_" s { x = $3
            sub(/.*ratios, rounds /, ""); sub(/;.*/, ""); split($0, m, "-") }
        END { if (t != "" && v != "" && x != "" && o != "") print t, v, x, m[1], m[2], o }' "$1"
}
# Judged on the worst of four: in a row and right after the other side's
# block, each without and with 5 ms asleep before every call.
for size in 512kib 2mib 16mib; do
    label="VMM first open of $(echo $size | sed 's/kib/ KiB/; s/mib/ MiB/') against PyTorch's own import (in a row: median of $tn rounds' ratios; right after the other side's; each also after 5 ms asleep)"
    set -- $( [ -n "$torch" ] && torch_figures "$OUT/torch" $size) $( [ -n "$torch" ] && torch_figures "$OUT/torch_gap5" $size)
    if [ $# -eq 12 ]; then
        worst=$(printf '%s\n' "$3" "$6" "$9" "${12}" | sort -n | tail -n 1)
        echo "| $label | PyTorch $1 us; after 5 ms $7 us (medians in a row) | $2 us; after 5 ms $8 us | in a row ${3}x (rounds $4-$5), right after ${6}x; after 5 ms ${9}x (rounds ${10}-${11}), right after ${12}x | <= 1.2x (each) | $(verdict "$worst" 1.2) |"
    elif [ -n "$torch" ]; then
        echo "| $label | | | | <= 1.2x | not measured (vmm_vs_torch.py did not end CORRECT or printed no figure: $OUT/torch, $OUT/torch_gap5) |"
    else
        echo "| $label | | | | <= 1.2x | not measured (needs PyTorch on a GPU) |"
    fi
done
set -- $(stat_of 3 "$OUT/fork") $(stat_of 1 "$OUT/fork") $(stat_of 2 "$OUT/fork")
if [ $# -eq 15 ]; then
    # held when the median's 95% confidence interval lies at or under 1.05:
    # within the goal, and pinned down to it (the rounds themselves spread
    # by 10% and more, native's alone as much; pinning the process to 10
    # CPUs did not narrow them on the H200). Rounds in a row are not quite
    # independent (the machine drifts), so the interval is if anything too
    # narrow: the goal row shows every round's range beside it.
    done_rounds=$(wc -l <"$OUT/fork")
    echo "| fork with 8 busy threads | $6 us (rounds $9-${10}) | ${11} us (rounds ${14}-${15}) | $1 (median of $done_rounds of $rounds rounds; its 95% confidence interval $2-$3; all $4-$5) | <= 1.05 and stable: the interval's top <= 1.05 | $(verdict "$3" 1.05) |"
else
    echo "| fork with 8 busy threads | | | | <= 1.05 | not measured (no round gave both medians: $B/tests/fork_safety --bench) |"
fi
