"""CuPy arrays carved from its memory pool, exported with
cupy.cuda.runtime.ipcGetMemHandle(a.data.ptr), opened in a fresh process,
checked, written back, closed. Exit status: 0 right, 1 wrong, 2 error."""
import json
import subprocess
import sys

import cupy as cp
import numpy as np

SIZES = [64, 4096, 100000, 1 << 20, 3 << 20, 512, 12345]


def pattern(k, n):
    return np.random.default_rng(500 + k).integers(0, 256, n, dtype=np.uint8)


def importer():
    records = json.loads(sys.stdin.read())
    out = []
    for k, (h, n) in enumerate(records):
        try:
            ptr = cp.cuda.runtime.ipcOpenMemHandle(bytes.fromhex(h))
        except cp.cuda.runtime.CUDARuntimeError as e:
            out.append("error " + str(e))
            continue
        mem = cp.cuda.UnownedMemory(ptr, n, None)
        a = cp.ndarray((n,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(mem, 0))
        ok = bool((cp.asnumpy(a) == pattern(k, n)).all())
        a[...] = cp.asarray(255 - pattern(k, n))
        cp.cuda.runtime.deviceSynchronize()
        cp.cuda.runtime.ipcCloseMemHandle(ptr)
        out.append("ok" if ok else "wrong")
    print(json.dumps(out))


def exporter():
    # One large block through the pool and back: the arrays below are then
    # carved from it, as in a long-running CuPy program.
    big = cp.empty(64 << 20, dtype=cp.uint8)
    del big
    arrays, records = [], []
    for k, n in enumerate(SIZES):
        a = cp.asarray(pattern(k, n))
        arrays.append(a)
        records.append((cp.cuda.runtime.ipcGetMemHandle(a.data.ptr).hex(), n))
    cp.cuda.runtime.deviceSynchronize()
    res = subprocess.run([sys.executable, __file__, "--importer"], input=json.dumps(records),
                         capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        print("cupy_ipc: importer failed:", res.stderr.strip()[-500:])
        return 2
    results = json.loads(res.stdout.strip().splitlines()[-1])
    wrote = [bool((cp.asnumpy(a) == 255 - pattern(k, n)).all())
             for k, (a, n) in enumerate(zip(arrays, SIZES))]
    read, written = results.count("ok"), sum(wrote)
    errors = sum(r.startswith("error") for r in results)
    # each array right, wrong (bytes read or written back wrong) or failed
    good = sum(r == "ok" and w for r, w in zip(results, wrote))
    wrong = len(SIZES) - good - errors
    print("cupy_ipc: %d arrays from the memory pool: right %d, wrong %d, failed %d; read %d "
          "right, written back %d right, %d errors -> %s" % (len(SIZES), good, wrong, errors,
                                                             read, written, errors,
                                                             "CORRECT" if good == len(SIZES)
                                                             else "WRONG"))
    return (1 if wrong else 0) | (2 if errors else 0)


if __name__ == "__main__":
    if "--importer" in sys.argv:
        importer()
    else:
        sys.exit(exporter())
