"""Decoding from sparse codes costs O(B·k·d), independent of n.

Compiles examples/topk.sae at several n, then times, in one run and side by
side, the library's sparse decode (sae_decode_sparse: a gather of k decoder
rows per row) and its dense decode (sae_decode_dense: the [B, n] x [n, d]
product) on the same codes. Prints a table; see bench/RESULTS.md.

Usage: python3 bench/decode_scaling.py [build/bin/saec] [--batch 1024]
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("saec", nargs="?", default="build/bin/saec")
parser.add_argument("--batch", type=int, default=1024)
parser.add_argument("--d", type=int, default=768)
parser.add_argument("--k", type=int, default=32)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ptr = ctypes.c_void_p


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


rows = []
with tempfile.TemporaryDirectory() as tmp:
    for n in (4096, 16384, 65536):
        lib_path = os.path.join(tmp, "topk_%d.so" % n)
        subprocess.check_call([args.saec, os.path.join(root, "examples", "topk.sae"),
                               "-D", "d=%d" % args.d, "-D", "n=%d" % n,
                               "-D", "k=%d" % args.k, "-o", lib_path])
        lib = ctypes.CDLL(lib_path)
        lib.sae_model_describe.restype = ctypes.c_char_p
        desc = json.loads(lib.sae_model_describe())
        rng = np.random.default_rng(0)
        params = [rng.standard_normal(p["shape"]).astype(np.float32) for p in desc["params"]]
        parray = (ptr * len(params))(*[p.ctypes.data for p in params])
        B, k = args.batch, args.k
        idx = np.stack([rng.choice(n, k, replace=False) for _ in range(B)]).astype(np.int32)
        vals = rng.random((B, k)).astype(np.float32)
        dense = np.zeros((B, n), np.float32)
        np.put_along_axis(dense, idx.astype(np.int64), vals, 1)
        out_s = np.zeros((B, args.d), np.float32)
        out_d = np.zeros((B, args.d), np.float32)
        sparse_t = best_of(lambda: lib.sae_decode_sparse(
            ctypes.c_int64(B), vals.ctypes.data_as(ptr), idx.ctypes.data_as(ptr),
            parray, out_s.ctypes.data_as(ptr)), args.repeats)
        dense_t = best_of(lambda: lib.sae_decode_dense(
            ctypes.c_int64(B), dense.ctypes.data_as(ptr), parray,
            out_d.ctypes.data_as(ptr)), max(1, args.repeats // 2))
        err = np.abs(out_s - out_d).max() / np.abs(out_d).max()
        rows.append((n, sparse_t, dense_t, err))

print("decode of B=%d rows, d=%d, k=%d (best of %d runs)" % (args.batch, args.d, args.k, args.repeats))
print("%8s %14s %14s %10s %12s" % ("n", "sparse (ms)", "dense (ms)", "dense/sp", "max rel err"))
for n, s, d, e in rows:
    print("%8d %14.2f %14.2f %10.1f %12.1e" % (n, s * 1e3, d * 1e3, d / s, e))
print("sparse time at n=65536 / n=4096: %.2f (1.0 = independent of n)" % (rows[-1][1] / rows[0][1]))
