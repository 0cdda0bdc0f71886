#!/bin/sh
# The table of issue 20's goals from the raw files of a `make bench` run
# (scripts/bench.sh writes them to BUILD/bench/out and calls this last):
# each goal with the figure measured, and whether it holds. Run alone, it
# judges an earlier run's files again, by the rules as they are now.
# Usage: scripts/bench-goals.sh OUT_DIR
# (sourced with BENCH_GOALS_FUNCTIONS=1: defines the helpers, prints nothing)

# a side's runs, sorted; its best run and its median run: SIDE OP
runs_of() { awk -v s="$1" -v o="$2" '$1 == s && $3 == o { print $4 }' "$OUT/exports" 2>/dev/null | sort -n; }
best_of() { runs_of "$1" "$2" | head -n 1; }
median_of() { runs_of "$1" "$2" | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# the median of a side's runs at the driver's fast speed: those within 25%
# of its best run (in the H200 runs the fast ones came within 1.24x of the
# best, the slow ones from 1.33x on), if at least 3
fast_of() { runs_of "$1" "$2" | awk 'NR == 1 { lim = $1 * 1.25 } $1 <= lim { v[++n] = $1 }
    END { if (n >= 3) print (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) }'; }
fast_count() { runs_of "$1" "$2" | awk 'NR == 1 { lim = $1 * 1.25 } $1 <= lim { n++ } END { print n + 0 }'; }
# column $1 of a file of numbers: median, the ends of its 95% confidence
# interval (distribution-free: the values of ranks (n - 1.96 sqrt(n)) / 2
# rounded down and (n + 1.96 sqrt(n)) / 2 rounded up, plus 1: the 40th and
# 62nd of 101, the 10th and 22nd of 31), the lowest and the highest
stat_of() { sort -n -k"$1","$1" "$2" 2>/dev/null | awk -v c="$1" '{ v[NR] = $c } END {
    if (NR == 0) exit; m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    lo = int((NR - 1.96 * sqrt(NR)) / 2); hi = (NR + 1.96 * sqrt(NR)) / 2
    hi = (hi == int(hi) ? hi : int(hi) + 1) + 1
    if (lo < 1) lo = 1; if (hi > NR) hi = NR
    printf "%s %s %s %s %s\n", m, v[lo], v[hi], v[1], v[NR] }'; }
verdict() { awk -v v="$1" -v g="$2" 'BEGIN { print (v != "" && v + 0 <= g + 0) ? "held" : "NOT held" }'; }
# row for a COMPARE line: NAME LABEL UNIT GOAL_RATIO
compare_row() {
    set -- "$1" "$2" "$3" "$4" "$(awk -v n="$1" '$1 == "COMPARE" && $2 == n { print $3, $4 }' "$OUT/compare" 2>/dev/null)"
    if [ -z "$5" ]; then
        echo "| $2 | | | | <= ${4}x | not measured |"
        return
    fi
    awk -v l="$2" -v u="$3" -v g="$4" -v v="$5" 'BEGIN { split(v, x, " "); r = x[1] > 0 ? x[2] / x[1] : 0
        printf "| %s | %.3f %s | %.3f %s | %.2fx | <= %sx | %s |\n", l, x[1], u, x[2], u, r, g,
               (x[1] > 0 && r <= g) ? "held" : "NOT held" }'
}
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
# a VMM export-again row: LABEL NATIVE_CELL SINGLE_US ROW_US (no SINGLE_US:
# not measured)
again_row() {
    if [ -n "$3" ]; then
        echo "| $1, a single call after other work (10 in a row) | $2 | $3 us (in a row $4 us) | | <= 1 us | $(verdict "$3" 1) |"
    else
        echo "| $1 | | | | <= 1 us | not measured (vmm_ipc --bench failed: $OUT/vmm) |"
    fi
}
goals_table() {
    echo
    if [ $gpu = 1 ]; then
        echo "## goals ($where)"
    else
        echo "## goals (NOT on a GPU: the simulated driver, so native times and the verdicts are the simulator's)"
    fi
    echo
    echo "| measure | native | nvipcfix | ratio | goal | |"
    echo "| --- | --- | --- | --- | --- | --- |"
    # start-up: points over the empty preload
    set -- $(awk '$1 == "STARTUP" { printf "%s ", $3 }' "$OUT/startup" 2>/dev/null) \
           $(awk '$1 == "STARTUP" && NR > 0 { last = $0 } END { split(last, x, " "); print x[5], x[6], x[7] }' "$OUT/startup" 2>/dev/null)
    if [ $# -eq 5 ]; then
        echo "| start-up of /bin/true | empty preload $1 us | $2 us | $(printf '%+.1f' "$3") points over the empty preload (rounds $(printf '%+.1f' "$4") to $(printf '%+.1f' "$5")) | within 1 point of the empty preload | $(verdict "$3" 1) |"
    else
        echo "| start-up of /bin/true | | | | within 1 point of the empty preload | not measured |"
    fi
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
    set -- $(sed -n 's/.*again: legacy \([0-9.]*\) us, VMM \([0-9.]*\) us; again, [0-9]* in a row: legacy \([0-9.]*\) us, VMM \([0-9.]*\) us.*/\1 \2 \3 \4/p' "$OUT/vmm" 2>/dev/null)
    again_row "VMM export of an exported chunk again" "(legacy ${1:-} us; in a row ${3:-} us)" "${2:-}" "${4:-}"
    set -- $(sed -n "s/.*reservation's start.*: first \([0-9.]*\) us, again \([0-9.]*\) us, [0-9]* in a row \([0-9.]*\) us.*/\1 \2 \3/p" "$OUT/vmm" 2>/dev/null)
    again_row "VMM export of a reservation's start again, nothing mapped since" "(its walk ${1:-} us)" "${2:-}" "${3:-}"
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
        # by 10% and more, native's alone as much; on the H200 neither pinning
        # the threads nor turning address randomization off, which gave every
        # run of a side the same page tables, narrowed them). Rounds in a row
        # are not quite independent (the machine drifts), so the interval is
        # if anything too narrow: the goal row shows every round's range
        # beside it.
        done_rounds=$(grep -c . "$OUT/fork")
        echo "| fork with 8 busy threads | $6 us (rounds $9-${10}) | ${11} us (rounds ${14}-${15}) | $1 (median of $done_rounds of $rounds rounds; its 95% confidence interval $2-$3; all $4-$5) | <= 1.05 and stable: the interval's top <= 1.05 | $(verdict "$3" 1.05) |"
    else
        echo "| fork with 8 busy threads | | | | <= 1.05 | not measured (no round gave both medians: $B/tests/fork_safety --bench) |"
    fi
}

[ "${BENCH_GOALS_FUNCTIONS:-0}" = 1 ] && return 0
set -u
OUT=${1:?usage: scripts/bench-goals.sh OUT_DIR}
[ -d "$OUT" ] || { echo "bench-goals: no folder $OUT" >&2; exit 2; }
B=$(cd "$OUT/../.." 2>/dev/null && pwd)
# how the run was made (scripts/bench.sh writes it); else a full GPU run's
where="judged again from $OUT" gpu=1 quick=0 runs=20 srounds=9 rounds=101 tn=6
[ -f "$OUT/meta" ] && . "$OUT/meta"
[ -f "$OUT/where" ] && where=$(cat "$OUT/where")
torch=""
[ -f "$OUT/torch" ] && torch=$OUT/torch
goals_table
