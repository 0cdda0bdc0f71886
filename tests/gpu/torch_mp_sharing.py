"""PyTorch's own CUDA sharing (torch.multiprocessing) must stay right under
nvipcfix: it exports segment bases and sends offsets itself, so a
double fix would show here. Shares slices of one tensor and small tensors
with a spawned child, which checks them and writes into them.
Exit status: 0 right, 1 wrong bytes, 2 an error."""
import sys

import torch
import torch.multiprocessing as mp


def child(q_in, q_out):
    items = q_in.get()
    res = []
    for k, t in enumerate(items):
        expect = torch.arange(t.numel(), dtype=torch.int64, device="cuda") * (k + 3) % 251
        res.append(bool(torch.equal(t.to(torch.int64), expect)))
        t.fill_(k + 1)
    torch.cuda.synchronize()
    q_out.put(res)
    q_in.get()  # hold the tensors until the parent has checked


def make(k, n):
    return (torch.arange(n, dtype=torch.int64, device="cuda") * (k + 3) % 251).to(torch.uint8)


def main():
    ctx = mp.get_context("spawn")
    big = torch.empty(1 << 22, dtype=torch.uint8, device="cuda")
    items = []
    spans = [(0, 4096), (4096, 100), (1 << 20, 65536), ((1 << 22) - 3, 3)]
    for k, (off, n) in enumerate(spans):
        big[off:off + n] = make(k, n)
        items.append(big[off:off + n])
    for k in range(len(spans), len(spans) + 4):
        items.append(make(k, 64 * (k + 1)))
    torch.cuda.synchronize()
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child, args=(q_in, q_out))
    p.start()
    q_in.put(items)
    res = q_out.get(timeout=120)
    wrote = [bool((t == k + 1).all()) for k, t in enumerate(items)]
    q_in.put(None)
    p.join(60)
    good = sum(r and w for r, w in zip(res, wrote))
    print("torch_mp_sharing: %d tensors (4 slices of one tensor, 4 small): right %d, wrong %d, "
          "failed 0; read %d right, written %d right -> %s" % (
              len(items), good, len(items) - good, sum(res), sum(wrote),
              "CORRECT" if good == len(items) else "WRONG"))
    return 0 if good == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())
