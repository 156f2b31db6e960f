"""NumPy reference for the lit tests of `sae eval` and `sae synth`.

Computes every metric of `sae eval` for a TopK model from the checkpoint
(read here with its own safetensors reader), reimplements the documented
generator of `sae synth`, and writes the float16 / bfloat16 / safetensors
inputs that the format tests feed to the tool. Nothing here calls the
runtime.

Usage (each check exits non-zero with a message on any mismatch):
  evalref.py make-data X.npy B D SEED          random rows, row 1 all zeros
  make-ckpt SRC DST SEED                        random biases; latents 0-2
                                                dead, latent 3 often on
  make-dict OUT.npy F D SEED                    random float32 [F, D]
  round X.npy PREFIX                            PREFIX-f16.npy, PREFIX-f16-as-f32.npy,
                                                PREFIX-bf16.safetensors (tensor
                                                'acts', BF16), PREFIX-bf16-as-f32.npy
  check-eval CKPT X.npy METRICS.json K [TRUE.npy] [THRESHOLD]
  check-synth X.npy DICT.npy D F A N NOISE SEED
"""
import itertools
import json
import math
import os
import shutil
import struct
import sys

import numpy as np


def fail(msg):
    print("evalref: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


# --- safetensors ------------------------------------------------------------

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        a = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32).reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    """tensors: name -> (dtype name, raw little-endian bytes, shape)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, raw, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def to_bfloat16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


# --- the TopK model and the metrics ---------------------------------------

def topk_model(p, x, k):
    """Codes z and reconstructions xhat in float64 (ties: lower index)."""
    x = x.astype(np.float64)
    w_enc, b_enc = p["W_enc"].astype(np.float64), p["b_enc"].astype(np.float64)
    w_dec, b_dec = p["W_dec"].astype(np.float64), p["b_dec"].astype(np.float64)
    pre = (x - b_dec) @ w_enc + b_enc
    f = np.maximum(pre, 0.0)
    order = np.argsort(-f, axis=1, kind="stable")
    keep = order[:, :k]
    z = np.zeros_like(f)
    rows = np.arange(f.shape[0])[:, None]
    z[rows, keep] = f[rows, keep]
    # The selection must not hinge on float32 rounding: the k-th and
    # (k+1)-th values of f and every kept pre-activation must be clearly
    # apart (otherwise the test data are unlucky, not the tool wrong).
    fs = np.take_along_axis(f, order, axis=1)
    if k < f.shape[1]:
        gap = fs[:, k - 1] - fs[:, k]
        tight = (gap < 1e-4) & (fs[:, k - 1] > 0)
        if tight.any():
            fail("test data too close to a TopK tie in rows %s" % np.nonzero(tight)[0][:5])
    kept = pre[rows, keep]
    if ((np.abs(kept) < 1e-4) & (kept != 0)).any():
        fail("test data too close to the ReLU kink")
    return z, z @ w_dec + b_dec


def metrics(x, xhat, z, threshold):
    x = x.astype(np.float64)
    err = ((xhat - x) ** 2).sum(axis=1)
    var = ((x - x.mean(axis=0)) ** 2).sum()
    nx = np.linalg.norm(x, axis=1)
    nh = np.linalg.norm(xhat, axis=1)
    both = (nx > 0) & (nh > 0)
    cos = np.zeros(len(x))
    cos[both] = (x * xhat).sum(axis=1)[both] / (nx[both] * nh[both])
    fires = (z != 0).sum(axis=0)
    n = z.shape[1]
    fvu = err.sum() / var
    return {
        "rows": len(x), "latents": n,
        "mse": err.mean(), "fvu": fvu, "explained_variance": 1 - fvu,
        "l0": (z != 0).sum() / len(x),
        "dead_latents": int((fires == 0).sum()),
        "dead_fraction": (fires == 0).sum() / n,
        "dense_latents": int((fires / len(x) > threshold).sum()),
        "dense_threshold": threshold,
        "cosine": cos.mean(),
        "norm_ratio": (nh[nx > 0] / nx[nx > 0]).mean(),
    }


def feature_recovery(truth, w_dec):
    """mean max |cos| and the best one-to-one matching, by brute force."""
    t = truth.astype(np.float64)
    w = w_dec.astype(np.float64)
    c = np.abs(t @ w.T) / np.outer(np.linalg.norm(t, axis=1), np.linalg.norm(w, axis=1))
    f, n = c.shape
    if f <= n:
        best = max(sum(c[i, perm[i]] for i in range(f))
                   for perm in itertools.permutations(range(n), f))
    else:
        best = max(sum(c[perm[j], j] for j in range(n))
                   for perm in itertools.permutations(range(f), n))
    return {"mean_max_cos": c.max(axis=1).mean(), "mcc": best / min(f, n), "features": f}


def close(got, want, what, rtol=1e-4, atol=1e-6):
    if got is None or not math.isclose(got, want, rel_tol=rtol, abs_tol=atol):
        fail("%s: sae says %r, the reference %r" % (what, got, want))


def check_eval(ckpt, x_path, metrics_path, k, true_path=None, threshold=0.1):
    p = read_safetensors(os.path.join(ckpt, "sae_weights.safetensors"))
    x = np.load(x_path).astype(np.float32)
    got = json.load(open(metrics_path))
    z, xhat = topk_model(p, x, k)
    want = metrics(x, xhat, z, threshold)
    for key in ("rows", "latents", "l0", "dead_latents", "dead_fraction",
                "dense_latents", "dense_threshold"):
        if got[key] != want[key]:
            fail("%s: sae says %r, the reference %r" % (key, got[key], want[key]))
    for key in ("mse", "fvu", "explained_variance", "cosine", "norm_ratio"):
        close(got[key], want[key], key)
    if true_path is None:
        if got["feature_recovery"] is not None:
            fail("feature_recovery without --true-dict: %r" % got["feature_recovery"])
    else:
        rec = feature_recovery(np.load(true_path), p["W_dec"])
        g = got["feature_recovery"]
        if g is None or g["features"] != rec["features"]:
            fail("feature_recovery: %r, expected %r" % (g, rec))
        close(g["mean_max_cos"], rec["mean_max_cos"], "mean_max_cos", 1e-9, 1e-12)
        close(g["mcc"], rec["mcc"], "mcc", 1e-9, 1e-12)
        print("mcc %.6f mean_max_cos %.6f" % (rec["mcc"], rec["mean_max_cos"]))
    print("dead %d dense %d l0 %g" % (want["dead_latents"], want["dense_latents"], want["l0"]))


# --- sae synth's documented generator -------------------------------------

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z):
    z = (z + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Stream:
    """splitmix64 stream `sid` of `seed`, as 'sae synth --help' describes."""

    def __init__(self, seed, sid):
        self.state = mix64(seed ^ mix64(sid))
        self.spare = None

    def next(self):
        out = mix64(self.state)  # advance by the Weyl step, then finalise
        self.state = (self.state + GOLDEN) & M64
        return out

    def uniform(self):
        return (self.next() >> 11) * 2.0 ** -53

    def below(self, bound):
        threshold = (2 ** 64 - bound) % bound
        while True:
            v = self.next()
            if v >= threshold:
                return v % bound

    def normal(self):
        if self.spare is not None:
            s, self.spare = self.spare, None
            return s
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        r = math.sqrt(-2.0 * math.log(u1))
        a = 2.0 * math.pi * u2
        self.spare = r * math.sin(a)
        return r * math.cos(a)


def synth_reference(d, f, a, n, noise, seed):
    rng = Stream(seed, 0)
    dictionary = np.zeros((f, d), np.float32)
    for i in range(f):
        row = [rng.normal() for _ in range(d)]
        norm = math.sqrt(sum(v * v for v in row))
        dictionary[i] = [v / norm for v in row]
    x = np.zeros((n, d), np.float32)
    supports, coefficients = [], []
    for r in range(n):
        rng = Stream(seed, 1 + r)
        picked = []
        for j in range(f - a, f):
            t = rng.below(j + 1)
            picked.append(j if t in picked else t)
        picked.sort()
        coef = [0.5 + rng.uniform() for _ in picked]
        total = np.zeros(d, np.float64)
        for c, i in zip(coef, picked):
            total += c * dictionary[i].astype(np.float64)
        x[r] = [total[j] + noise * rng.normal() for j in range(d)]
        supports.append(picked)
        coefficients.append(coef)
    return x, dictionary, supports, coefficients


def best_subsets(x, dictionary, a):
    """For each row, the A dictionary rows whose span fits it best (by
    brute force over all subsets), with the least-squares coefficients and
    the residual norm."""
    x = x.astype(np.float64)
    D = dictionary.astype(np.float64)
    subsets = np.array(list(itertools.combinations(range(len(D)), a)))
    b = D @ x.T                                   # [F, N]
    gram = D @ D.T
    best_q = np.full(len(x), -np.inf)
    best_s = np.zeros(len(x), int)
    for start in range(0, len(subsets), 4096):
        s = subsets[start:start + 4096]           # [S, A]
        g_inv = np.linalg.inv(gram[s[:, :, None], s[:, None, :]])  # [S, A, A]
        bs = b[s]                                 # [S, A, N]
        q = np.einsum("san,sab,sbn->sn", bs, g_inv, bs)  # projected energy
        i = q.argmax(axis=0)
        better = q[i, np.arange(len(x))] > best_q
        best_q[better] = q[i, np.arange(len(x))][better]
        best_s[better] = start + i[better]
    chosen = subsets[best_s]
    coef = np.zeros((len(x), a))
    resid = np.zeros(len(x))
    for r in range(len(x)):
        s = chosen[r]
        c, *_ = np.linalg.lstsq(D[s].T, x[r], rcond=None)
        coef[r] = c
        resid[r] = np.linalg.norm(D[s].T @ c - x[r])
    return chosen, coef, resid


def check_synth(x_path, dict_path, d, f, a, n, noise, seed):
    x, dictionary = np.load(x_path), np.load(dict_path)
    if x.dtype != np.float32 or dictionary.dtype != np.float32:
        fail("dtypes %s %s, expected float32" % (x.dtype, dictionary.dtype))
    if x.shape != (n, d) or dictionary.shape != (f, d):
        fail("shapes %s %s, expected %s %s" % (x.shape, dictionary.shape, (n, d), (f, d)))
    norms = np.linalg.norm(dictionary.astype(np.float64), axis=1)
    if np.abs(norms - 1).max() > 1e-6:
        fail("dictionary rows are not unit norm: %s" % norms)
    # Without knowing the supports: every row is within noise of the best
    # sum of A dictionary rows, with coefficients in [0.5, 1.5).
    chosen, coef, resid = best_subsets(x, dictionary, a)
    bound = 4 * noise * math.sqrt(d) + 1e-5
    if resid.max() > bound:
        fail("row %d is %g from the best sum of %d dictionary rows (noise bound %g)"
             % (resid.argmax(), resid.max(), a, bound))
    if coef.min() < 0.4 or coef.max() > 1.6:
        fail("least-squares coefficients outside [0.4, 1.6]: %g .. %g" % (coef.min(), coef.max()))
    # The documented generator reproduces the files.
    want_x, want_dict, supports, coefficients = synth_reference(d, f, a, n, noise, seed)
    if np.abs(want_dict - dictionary).max() > 1e-6:
        fail("the dictionary differs from the documented generator")
    if np.abs(want_x - x).max() > 1e-5:
        fail("X differs from the documented generator by %g" % np.abs(want_x - x).max())
    found = sum(list(c) == s for c, s in zip(chosen, supports))
    c = np.array(coefficients)
    if c.min() < 0.5 or c.max() >= 1.5:
        fail("generator coefficients outside [0.5, 1.5)")
    # The fitted supports are the generated ones (noise is small).
    if found < n:
        fail("the best fit finds the true support in only %d of %d rows" % (found, n))
    counts = np.bincount(np.array(supports).ravel(), minlength=f)
    print("supports recovered: %d/%d; features used: %d/%d; max residual %.4f"
          % (found, n, (counts > 0).sum(), f, resid.max()))


def main(argv):
    cmd = argv[1]
    if cmd == "make-data":
        path, b, d, seed = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(b, d)).astype(np.float32)
        x[1] = 0
        np.save(path, x)
    elif cmd == "make-ckpt":
        src, dst, seed = argv[2], argv[3], int(argv[4])
        rng = np.random.default_rng(seed)
        p = read_safetensors(os.path.join(src, "sae_weights.safetensors"))
        p["b_enc"] = rng.normal(scale=0.1, size=p["b_enc"].shape).astype(np.float32)
        p["b_dec"] = rng.normal(scale=0.1, size=p["b_dec"].shape).astype(np.float32)
        p["b_enc"][:3] = -100.0  # never fire: dead
        p["b_enc"][3] = 2.0      # fires on most rows: dense
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(src, "cfg.json"), os.path.join(dst, "cfg.json"))
        write_safetensors(os.path.join(dst, "sae_weights.safetensors"),
                          {k: ("F32", np.ascontiguousarray(v, "<f4").tobytes(), v.shape)
                           for k, v in p.items()})
    elif cmd == "make-dict":
        path, f, d, seed = argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        np.save(path, np.random.default_rng(seed).normal(size=(f, d)).astype(np.float32))
    elif cmd == "round":
        x, prefix = np.load(argv[2]), argv[3]
        half = x.astype(np.float16)
        np.save(prefix + "-f16.npy", half)
        np.save(prefix + "-f16-as-f32.npy", half.astype(np.float32))
        bits = to_bfloat16_bits(x)
        np.save(prefix + "-bf16-as-f32.npy", (bits.astype(np.uint32) << 16).view(np.float32))
        write_safetensors(prefix + "-bf16.safetensors", {
            "other": ("F32", np.ones(3, "<f4").tobytes(), (3,)),
            "acts": ("BF16", bits.astype("<u2").tobytes(), x.shape)})
        if np.array_equal(half.astype(np.float32), x):
            fail("float16 rounding changed nothing; the test would be vacuous")
    elif cmd == "check-eval":
        ckpt, x_path, m_path, k = argv[2], argv[3], argv[4], int(argv[5])
        true_path = argv[6] if len(argv) > 6 and argv[6] != "-" else None
        threshold = float(argv[7]) if len(argv) > 7 else 0.1
        check_eval(ckpt, x_path, m_path, k, true_path, threshold)
    elif cmd == "check-synth":
        x_path, dict_path = argv[2], argv[3]
        d, f, a, n = (int(v) for v in argv[4:8])
        check_synth(x_path, dict_path, d, f, a, n, float(argv[8]), int(argv[9]))
    else:
        fail("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
