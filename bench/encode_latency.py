"""Encode time for a few tokens at a time: saec against PyTorch, side by side.

An interpretability tool that watches features while a model generates
encodes one token (or a few) per call. At d = 768, n = 16384 the encoder
weight is 48 MiB, so a call of one row is bound by reading it from memory,
not by arithmetic; with more rows the product's arithmetic takes over.

For each batch size B this times, interleaved call by call in one process
(so a slow spell of a shared machine slows all alike), for each
library given (e.g. before and after a change), its sparse encode entry
point, then, after all of them, PyTorch's:

  saec     sae_encode_sparse, called through ctypes on NumPy buffers;
  torch    relu(x @ W_enc + b_enc).topk(k), as the PyTorch libraries encode
           (Debian's python3-torch with OpenBLAS, the same threads);

and the bound: the larger of reading the weight once at the speed at which
OpenBLAS's sgemv reads a copy of it (torch.mv, all threads, best of 8 calls;
called again and again, as an encoder is, the weight comes from L3 where
the machine's L3 holds it) and the product at OpenBLAS's sgemm speed
on [1024, d] x [d, n] (both measured here, before the calls).

Usage:
  OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 bench/encode_latency.py
      [LIB.so ...] [--batches 1,4,8,16,31,32,64] [--calls 40] [--threads N]
      [--build build]
Without a library, examples/topk.sae (d = 768, n = 16384, k = 32) is
compiled with build/bin/saec. Prints a table of median milliseconds per
call; exits non-zero if a call fails.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("libs", nargs="*", help="libraries compiled from a TopK spec")
    ap.add_argument("--batches", default="1,4,8,16,31,32,64")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(ROOT, "test", "Integration", "CPU", "Inputs"))
    import train_step
    train_step.add_heap_flag(ap)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from saelib import Library, _array
    from torchblas import require_openblas
    torch.set_num_threads(args.threads)
    require_openblas()
    train_step.set_heap(args)

    libs = args.libs
    if not libs:
        out = "/tmp/saec-bench-encode/libtopk.so"
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([os.path.join(args.build, "bin", "saec"),
                        os.path.join(ROOT, "examples", "topk.sae"), "-o", out],
                       check=True)
        libs = [out]
    loaded = [Library(p) for p in libs]
    lib0 = loaded[0]
    params = lib0.init(0)
    w, b = params["W_enc"], params["b_enc"]
    d, n = w.shape
    k = lib0.desc["codes"]["k"]
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)

    # The roofline: sgemm on [1024, d] x [d, n], copy bandwidth.
    a = torch.randn(1024, d)
    prod = torch.empty(1024, n)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        torch.mm(a, tw, out=prod)
        times.append(time.perf_counter() - t)
    gflops = 2 * 1024 * d * n / min(times[1:]) / 1e9
    wt, v = tw.t().contiguous(), torch.ones(d)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        torch.mv(wt, v)
        times.append(time.perf_counter() - t)
    bandwidth = 4 * d * n / min(times[2:]) / 1e9
    del a, prod, wt

    names = [os.path.basename(p) for p in libs]
    print("machine: %s; %d threads; d=%d n=%d k=%d; sgemm %.0f GFLOP/s, sgemv reads %.1f GB/s; "
          "median of %d calls" % (cpu_model(), args.threads, d, n, k, gflops, bandwidth,
                                  args.calls))
    # The ratios are of the last library given.
    head = ["B"] + ["saec %s" % m for m in names] + ["torch", "bound", "bound/saec",
                                                     "torch/saec"]
    print("  ".join("%14s" % h for h in head))
    batches = [int(v) for v in args.batches.split(",")]
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, d)).astype(np.float32)
        calls = []
        for lib in loaded:
            enc = train_step.encoder(lib, batch)
            xin = _array([x])
            parr = _array([params[p["name"]] for p in lib.params])
            calls.append(lambda enc=enc, xin=xin, parr=parr: enc(xin, parr))
        rows.append(timed(calls, args.calls, batch))
    # PyTorch after every saec call: OpenBLAS's threads keep spinning for a
    # while after a product, and would take the cores from the next call.
    for batch, row in zip(batches, rows):
        tx = torch.from_numpy(
            np.random.default_rng(batch).standard_normal((batch, d)).astype(np.float32))

        def peer():
            with torch.no_grad():
                torch.relu(torch.addmm(tb, tx, tw)).topk(k, dim=1)
            return 0

        row += timed([peer], args.calls, batch)
        bound = 1e3 * max(4 * d * n / (bandwidth * 1e9),
                          2 * batch * d * n / (gflops * 1e9))
        cells = ["%d" % batch] + ["%.3f" % m for m in row] + [
            "%.3f" % bound, "%.2f" % (bound / row[-2]), "%.2f" % (row[-1] / row[-2])]
        print("  ".join("%14s" % c for c in cells))


def timed(calls, count, batch):
    """Median milliseconds of each call, the calls interleaved."""
    times = [[] for _ in calls]
    for i in range(count + 3):
        for j, call in enumerate(calls):
            t = time.perf_counter()
            rc = call()
            dt = time.perf_counter() - t
            if rc != 0:
                sys.exit("bench: encode returned %d at B=%d" % (rc, batch))
            if i >= 3:
                times[j].append(dt)
    return [1e3 * float(np.median(t)) for t in times]


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
