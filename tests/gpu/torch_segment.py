"""Tensors of one caching-allocator segment, exported the legacy way
(cudaIpcGetMemHandle(t.data_ptr()) through torch's own libcudart, ctypes)
and opened in allocation order by a fresh receiver that keeps every tensor
it opened (so the segment's base, the first tensor, is already mapped when
the interior ones are opened: the order in which a guard on a byte only a
fresh open checks lets wrong bytes through).

TORCH_IMPORTER_NO_PRELOAD=1 starts the receiver without LD_PRELOAD (the
exporter keeps what it loaded): the mixed deployment, where every interior
tensor must be refused and the offset-0 tensor read right.

Prints one summary line. Exit status: 0 every tensor right, 1 wrong bytes
anywhere, 2 no wrong bytes but a CUDA call failed."""
import ctypes
import json
import os
import subprocess
import sys

import torch

from torch_ipc import Handle, cudart, pattern

SIZES = [4096, 512, 1000, 16 << 10, 64 << 10, 100, 128 << 10, 8192]


def importer():
    lib = cudart()
    records = json.loads(sys.stdin.read())  # [[hex handle, nbytes], ...]
    out, opened = [], []
    for k, (hexh, n) in enumerate(records):
        p = ctypes.c_void_p()
        r = lib.cudaIpcOpenMemHandle(ctypes.byref(p), Handle.from_buffer_copy(bytes.fromhex(hexh)), 1)
        if r != 0:
            out.append("refused %d" % r)
            continue
        opened.append(p)
        got = torch.empty(n, dtype=torch.uint8)
        r = lib.cudaMemcpy(got.data_ptr(), p, n, 2)  # device to host
        out.append("error %d" % r if r else "ok" if torch.equal(got, pattern(k, n)) else "wrong")
    for p in opened:  # held until the end, as a receiver holds tensors
        lib.cudaIpcCloseMemHandle(p)
    print(json.dumps(out))


def segment_of(ptr):
    for seg in torch.cuda.memory_snapshot():
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg["address"], seg["total_size"]
    return None, None


def exporter():
    lib = cudart()
    tensors = [pattern(k, n).cuda() for k, n in enumerate(SIZES)]
    torch.cuda.synchronize()
    base, size = segment_of(tensors[0].data_ptr())
    offsets = [t.data_ptr() - base for t in tensors]
    if base is None or offsets[0] != 0 or any(not 0 <= o < size for o in offsets):
        print("torch_segment: the tensors are not in one segment from its start:", offsets)
        return 3
    records = []
    for t, n in zip(tensors, SIZES):
        h = Handle()
        if lib.cudaIpcGetMemHandle(ctypes.byref(h), t.data_ptr()) != 0:
            print("torch_segment: export failed")
            return 2
        records.append((bytes(h).hex(), n))
    env = dict(os.environ)
    if env.get("TORCH_IMPORTER_NO_PRELOAD") == "1":
        env.pop("LD_PRELOAD", None)
    res = subprocess.run([sys.executable, __file__, "--importer"], input=json.dumps(records),
                         capture_output=True, text=True, env=env)
    if res.returncode != 0 or not res.stdout.strip():
        print("torch_segment: importer failed:", res.stderr.strip()[-500:])
        return 2
    results = json.loads(res.stdout.strip().splitlines()[-1])
    inner = results[1:]
    wrong = results.count("wrong")
    print("torch_segment: %d tensors of one %d KiB segment (offsets %s): offset 0 %s; "
          "interior: %d right, %d refused, %d wrong, %d other errors"
          % (len(SIZES), size >> 10, ",".join(str(o) for o in offsets),
             "right" if results[0] == "ok" else results[0], inner.count("ok"),
             sum(r.startswith("refused") for r in inner), inner.count("wrong"),
             sum(r.startswith("error") for r in inner)))
    # a bit mask, as the other programs': 1 wrong bytes, 2 a refusal or error
    return (1 if wrong else 0) | (0 if results.count("ok") + wrong == len(SIZES) else 2)


if __name__ == "__main__":
    if "--importer" in sys.argv:
        importer()
    else:
        sys.exit(exporter())
