"""PyTorch tensors shared the legacy way, as Mooncake-style code does it:
cudaIpcGetMemHandle(t.data_ptr()) through torch's own libcudart (ctypes),
opened in a fresh process, checked byte for byte, written back, closed.

Tensors come from PyTorch's caching allocator, so most of them are
sub-allocations of a larger segment: without nvipcfix the receiver reads
the segment's base instead. Prints one line per tensor and a summary.
Exit status: 0 every byte right, 1 wrong bytes, 2 a CUDA call failed."""
import ctypes
import json
import subprocess
import sys

import torch

SIZES = [64, 1000, 16 << 10, 128 << 10, 512 << 10, 4 << 20, 3 << 20, 8 << 20]


class Handle(ctypes.Structure):
    # c_ubyte, not c_char: a c_char array reads back cut at its first zero byte
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]


def cudart():
    torch.cuda.init()
    lib = ctypes.CDLL("libcudart.so." + torch.version.cuda.split(".")[0])
    lib.cudaIpcGetMemHandle.argtypes = [ctypes.POINTER(Handle), ctypes.c_void_p]
    lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), Handle, ctypes.c_uint]
    lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
    lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


def pattern(k, n):
    g = torch.Generator().manual_seed(1000 + k)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def importer():
    lib = cudart()
    records = json.loads(sys.stdin.read())  # [[hex handle, nbytes], ...]
    out = []
    for k, (hexh, n) in enumerate(records):
        h = Handle.from_buffer_copy(bytes.fromhex(hexh))
        p = ctypes.c_void_p()
        r = lib.cudaIpcOpenMemHandle(ctypes.byref(p), h, 1)
        if r != 0:
            out.append("error %d" % r)
            continue
        got = torch.empty(n, dtype=torch.uint8)
        lib.cudaMemcpy(got.data_ptr(), p, n, 2)  # device to host
        ok = bool(torch.equal(got, pattern(k, n)))
        back = (255 - pattern(k, n)).contiguous()
        lib.cudaMemcpy(p, back.data_ptr(), n, 1)  # host to device
        r = lib.cudaIpcCloseMemHandle(p)
        out.append("ok" if ok and r == 0 else ("error %d" % r if r else "wrong"))
    print(json.dumps(out))


def exporter():
    lib = cudart()
    # A big neighbour first, so the tensors below share segments with others.
    keep = [torch.zeros(20 << 20, dtype=torch.uint8, device="cuda")]
    tensors, records = [], []
    for k, n in enumerate(SIZES):
        keep.append(torch.empty(4096 + 512 * k, dtype=torch.uint8, device="cuda"))
        t = pattern(k, n).cuda()
        tensors.append(t)
        h = Handle()
        if lib.cudaIpcGetMemHandle(ctypes.byref(h), t.data_ptr()) != 0:
            print("torch_ipc: export failed")
            return 2
        records.append((bytes(h).hex(), n))
    torch.cuda.synchronize()
    res = subprocess.run([sys.executable, __file__, "--importer"], input=json.dumps(records),
                         capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        print("torch_ipc: importer failed:", res.stderr.strip()[-500:])
        return 2
    results = json.loads(res.stdout.strip().splitlines()[-1])
    wrote = [bool(torch.equal(t.cpu(), 255 - pattern(k, n)))
             for k, (t, n) in enumerate(zip(tensors, SIZES))]
    read, written = results.count("ok"), sum(wrote)
    errors = sum(r.startswith("error") for r in results)
    # each tensor right, wrong (bytes read or written back wrong) or failed
    good = sum(r == "ok" and w for r, w in zip(results, wrote))
    wrong = len(SIZES) - good - errors
    print("torch_ipc: %d tensors (64 B .. 8 MiB): right %d, wrong %d, failed %d; read %d right, "
          "written back %d right, %d errors -> %s" % (len(SIZES), good, wrong, errors, read,
                                                      written, errors,
                                                      "CORRECT" if good == len(SIZES) else "WRONG"))
    return (1 if wrong else 0) | (2 if errors else 0)


if __name__ == "__main__":
    if "--importer" in sys.argv:
        importer()
    else:
        sys.exit(exporter())
