"""Exact check of the top-k selection order on data full of ties.

Usage: topk_ties.py LIB.so MODE
A TopK-family library with d = n (compiled from examples/topk.sae or
abs_topk.sae) gets W_enc = identity and zero biases, so its pre-activations
are the input rows. The rows hold small integers: many ties, and rows with
fewer positive entries than k. sae_encode_sparse must return, per row, the
k entries ranked highest (MODE topk: relu(x); MODE abs: |x|, signed values
kept) in decreasing rank, ties by increasing latent index — the order of a
stable sort — exactly.

MODE batch (examples/batch_topk.sae): the training form keeps the B·k
largest relu(x) of the whole batch, ties in row-major order. With W_dec =
identity too, sae_forward's reconstruction is exactly the kept entries in
place, so it must equal that selection.
"""
import ctypes
import sys

import numpy as np
from saelib import Library, _array

lib_path, mode = sys.argv[1], sys.argv[2]
lib = Library(lib_path)
n, k = lib.n, lib.desc["encoder"]["k"]
d = lib.desc["input"]["dim"]
assert d == n, (d, n)
rng = np.random.default_rng(11)
rows = 97
x = rng.integers(-3, 4, size=(rows, d)).astype(np.float32)
x[:5] = rng.integers(-1, 2, size=(5, d))  # mostly zeros and ±1
x[5] = 0
params = {p["name"]: np.zeros(p["shape"], np.float32) for p in lib.params}
params["W_enc"][:] = np.eye(d, dtype=np.float32)
if mode == "batch":
    params["W_dec"][:] = np.eye(d, dtype=np.float32)
    xhat, _ = lib.forward([x], params)
    value = np.maximum(x, 0).ravel()
    order = np.argsort(-value, kind="stable")[: rows * k]
    want = np.zeros(rows * d, np.float32)
    want[order] = value[order]
    want = want.reshape(rows, d)
    bad = np.argwhere(want != xhat)
    if len(bad):
        r, j = bad[0]
        sys.exit("entry (%d, %d): got %g, want %g" % (r, j, xhat[r, j], want[r, j]))
    print("batch: %d rows, k = %d, exact batch selection including ties" % (rows, k))
    sys.exit(0)
vals = np.zeros((rows, k), np.float32)
idxs = np.zeros((rows, k), np.int32)
c = lib.lib
c.sae_encode_sparse.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4
rc = c.sae_encode_sparse(rows, lib._inputs([x]), _array([params[p["name"]] for p in lib.params]),
                         vals.ctypes.data, idxs.ctypes.data)
assert rc == 0, rc

value = np.maximum(x, 0) if mode == "topk" else x
rank = value if mode == "topk" else np.abs(x)
want_idx = np.argsort(-rank, axis=1, kind="stable")[:, :k]
want_val = np.take_along_axis(value, want_idx, axis=1)
bad = np.nonzero((want_idx != idxs).any(1) | (want_val != vals).any(1))[0]
if len(bad):
    r = bad[0]
    sys.exit("row %d: got indices %s values %s, want %s %s"
             % (r, idxs[r], vals[r], want_idx[r], want_val[r]))
print("%s: %d rows, k = %d, exact order including ties" % (mode, rows, k))
