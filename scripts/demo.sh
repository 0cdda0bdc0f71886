#!/bin/sh
# make demo: the legacy two-process program without and with nvipcfix, one
# line each. On a machine with an NVIDIA GPU it runs on the GPU (the program
# built with nvcc, static cudart); otherwise on the simulated driver.
# Exits 0 only when the run without shows the bug and the run with is right.
B=$(cd "${1:-build}" && pwd)
LIB=$B/libnvipcfix.so
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

if nvidia-smi -L >/dev/null 2>&1 && command -v nvcc >/dev/null 2>&1; then
    where="GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
    mkdir -p "$B/gpu"
    gcc -O2 -std=c11 -D_GNU_SOURCE -DLEGACY_RUNTIME -I"$CUDA_HOME/include" \
        -c tests/integration/legacy_ipc.c -o "$B/gpu/legacy_rt.o" &&
        nvcc "$B/gpu/legacy_rt.o" -o "$B/gpu/legacy_rt_static" -ldl || exit 2
    set -- "$B/gpu/legacy_rt_static"
else
    where="no GPU found: running on nvipcfix's simulated driver (tests/simdrv)"
    export LD_LIBRARY_PATH="$B/sim${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    set -- "$B/tests/legacy_ipc"
fi

echo "nvipcfix demo ($where)"
echo "An exporter shares 10 buffers inside cudaMalloc blocks with a second process"
echo "through cudaIpcGetMemHandle on each buffer's own pointer; the importer reads"
echo "and writes them."
without=$("$@" 2>&1 | tail -n 1)
printf '  without nvipcfix: %s\n' "$without"
with=$(LD_PRELOAD="$LIB" "$@" 2>&1 | tail -n 1)
printf '  with nvipcfix:    %s\n' "$with"
case "$without" in *"-> WRONG"*) bug=1 ;; *) bug=0 ;; esac
case "$with" in *"-> CORRECT"*) fixed=1 ;; *) fixed=0 ;; esac
if [ $bug = 1 ] && [ $fixed = 1 ]; then
    echo "the bug shows without nvipcfix and is gone with it"
    exit 0
fi
echo "unexpected: the demo did not show the bug and its fix" >&2
exit 1
