"""Independent NumPy reference for saec's integration tests.

Re-implements, from the formulas in docs/ and the SAE catalog, everything a
compiled library computes: the seeded initialisers, TopK and ReLU encoders,
sparse and dense decoding, MSE and FVU. It also reads and writes safetensors
checkpoints itself, so that no test trusts the runtime to check the runtime.

Usage (each sub-command exits non-zero with a message on any mismatch):
  saeref.py check-init CKPT SEED             the init values match the formula
  saeref.py randomize CKPT OUT_CKPT X.npy B SEED   random biases and inputs
  saeref.py check-encode CKPT X.npy Z          Z = codes .npz (sparse) or .npy (dense)
  saeref.py check-decode CKPT CODES XHAT.npy   decoding of CODES (.npz or .npy)
  saeref.py check-forward CKPT X.npy XHAT.npy METRICS.json
"""
import json
import os
import struct
import sys

import numpy as np

RTOL = 1e-5
M64 = (1 << 64) - 1


def fail(msg):
    print("saeref: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


# --- safetensors, written from the format description --------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_ckpt(d):
    cfg = json.load(open(os.path.join(d, "cfg.json")))
    return read_safetensors(os.path.join(d, "sae_weights.safetensors")), cfg


# --- the model ------------------------------------------------------------

def splitmix_uniform(seed, stream, count, low, high):
    """docs/language.md: u = top 24 bits of splitmix64(seed + s*phi + i*gamma)."""
    i = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & M64) + np.uint64((stream * 0x9E3779B97F4A7C15) & M64) \
            + i * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64)
    return (low + u * ((high - low) / 16777216.0)).astype(np.float32)


def encode(p, cfg, x):
    """Dense codes [B, n] per the catalog: pre = (x - b_dec) W_enc + b_enc."""
    pre = (x.astype(np.float64) - p["b_dec"]) @ p["W_enc"].astype(np.float64) + p["b_enc"]
    f = np.maximum(pre, 0)
    k = cfg.get("k")
    if k is None:
        return f, None
    # Stable descending order: ties keep the lower latent index first.
    idx = np.argsort(-f, axis=1, kind="stable")[:, :k]
    z = np.zeros_like(f)
    np.put_along_axis(z, idx, np.take_along_axis(f, idx, 1), 1)
    return z, f


def decode(p, z):
    return z @ p["W_dec"].astype(np.float64) + p["b_dec"]


def close(a, b, what, rtol=RTOL):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        fail("%s: shape %s, reference %s" % (what, a.shape, b.shape))
    # Relative to the magnitude of the reference row: entries near zero are
    # sums that cancel, where a pointwise relative error means nothing.
    scale = np.maximum(np.abs(b).max(axis=-1, keepdims=True), 1e-30) if b.ndim else abs(b)
    err = np.abs(a - b) / scale
    if not np.all(err <= rtol):
        worst = np.unravel_index(np.argmax(err), err.shape)
        fail("%s: relative error %.3g at %s (got %r, reference %r)" % (what, err.max(), worst, a[worst], b[worst]))
    print("%s: max relative error %.2e" % (what, err.max()))


# --- sub-commands -----------------------------------------------------------

def check_init(ckpt, seed):
    p, cfg = load_ckpt(ckpt)
    W_enc = p["W_enc"]
    d, n = W_enc.shape
    bound = np.sqrt(6.0 / d)
    ref = splitmix_uniform(int(seed), 0, d * n, -bound, bound).reshape(d, n)
    if not np.array_equal(W_enc, ref):
        fail("W_enc differs from kaiming_uniform(seed=%s): max diff %g" % (seed, np.abs(W_enc - ref).max()))
    t = ref.T.astype(np.float64)
    close(p["W_dec"], t / np.linalg.norm(t, axis=1, keepdims=True), "W_dec = normalize_rows(W_enc^T)")
    for b in ("b_enc", "b_dec"):
        if np.any(p[b] != 0):
            fail("%s is not zeros" % b)
    if cfg.get("d_in") != d or cfg.get("d_sae") != n:
        fail("cfg.json d_in/d_sae %s/%s, expected %d/%d" % (cfg.get("d_in"), cfg.get("d_sae"), d, n))
    print("init matches the reference: W_enc %dx%d" % (d, n))


def randomize(ckpt, out, xpath, batch, seed):
    p, cfg = load_ckpt(ckpt)
    rng = np.random.default_rng(int(seed))
    p["b_enc"] = (rng.standard_normal(p["b_enc"].shape) * 0.05).astype(np.float32)
    p["b_dec"] = (rng.standard_normal(p["b_dec"].shape) * 0.1).astype(np.float32)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "sae_weights.safetensors"), p)
    json.dump(cfg, open(os.path.join(out, "cfg.json"), "w"))
    d = p["W_enc"].shape[0]
    x = rng.standard_normal((int(batch), d)).astype(np.float32)
    np.save(xpath, x)


def check_encode(ckpt, xpath, zpath):
    p, cfg = load_ckpt(ckpt)
    x = np.load(xpath)
    ref, f = encode(p, cfg, x)
    if zpath.endswith(".npz"):
        z = np.load(zpath)
        vals, idx = z["values"], z["indices"]
        k = cfg["k"]
        if vals.shape != (x.shape[0], k) or idx.shape != (x.shape[0], k):
            fail("sparse codes have shapes %s/%s, expected %s" % (vals.shape, idx.shape, (x.shape[0], k)))
        if vals.dtype != np.float32 or idx.dtype != np.int32:
            fail("sparse codes have dtypes %s/%s" % (vals.dtype, idx.dtype))
        if np.any(idx < 0) or np.any(idx >= f.shape[1]):
            fail("an index is out of range")
        for row in range(idx.shape[0]):
            if len(set(idx[row].tolist())) != k:
                fail("row %d repeats a latent" % row)
        # Each reported value is the value of its latent...
        close(vals, np.take_along_axis(f, idx.astype(np.int64), 1), "values at their indices")
        # ... and the k of them are the k largest (ties aside).
        close(vals, -np.sort(-f, axis=1)[:, :k], "sorted top-k values")
        if np.any(np.diff(vals, axis=1) > 0):
            fail("values are not in decreasing order")
        ref_idx = np.argsort(-f, axis=1, kind="stable")[:, :k]
        same = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx.tolist(), ref_idx.tolist())])
        print("index agreement with the reference: %.4f" % same)
        if same < 0.999:
            fail("top-k indices differ from the reference beyond ties (%.4f)" % same)
    else:
        z = np.load(zpath)
        close(z, ref, "dense codes")


def load_codes(path, n):
    if path.endswith(".npz"):
        z = np.load(path)
        vals, idx = z["values"], z["indices"]
        dense = np.zeros((vals.shape[0], n))
        np.put_along_axis(dense, idx.astype(np.int64), vals, 1)
        return dense
    return np.load(path).astype(np.float64)


def check_decode(ckpt, codes, xhat):
    p, cfg = load_ckpt(ckpt)
    z = load_codes(codes, p["W_enc"].shape[1])
    close(np.load(xhat), decode(p, z), "decoded xhat")


def check_forward(ckpt, xpath, xhat, metrics):
    p, cfg = load_ckpt(ckpt)
    x = np.load(xpath).astype(np.float64)
    z, _ = encode(p, cfg, x)
    ref = decode(p, z)
    close(np.load(xhat), ref, "forward xhat")
    m = json.load(open(metrics))
    err = ((ref - x) ** 2).sum()
    mse = err / x.shape[0]
    fvu = err / ((x - x.mean(0)) ** 2).sum()
    close(m["mse"], mse, "mse")
    close(m["fvu"], fvu, "fvu")
    close(m["l0"], (z != 0).sum(1).mean(), "l0", rtol=1e-3)
    loss_ref = fvu if cfg.get("architecture") == "topk" else mse
    close(m["loss"], loss_ref, "loss")


if __name__ == "__main__":
    cmds = {"check-init": check_init, "randomize": randomize, "check-encode": check_encode,
            "check-decode": check_decode, "check-forward": check_forward}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])
