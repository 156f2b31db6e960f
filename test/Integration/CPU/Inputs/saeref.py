"""Independent NumPy reference for saec's integration tests.

Re-implements, from the formulas in docs/ and the SAE catalog, everything a
compiled library computes: the seeded initialisers, TopK and ReLU encoders,
sparse and dense decoding, MSE and FVU. It also reads and writes safetensors
checkpoints itself, so that no test trusts the runtime to check the runtime.

Usage (each sub-command exits non-zero with a message on any mismatch):
  saeref.py check-init CKPT SEED             the init values match the formula
  saeref.py randomize CKPT OUT_CKPT X.npy B SEED   random biases and inputs
  saeref.py check-encode ARCH CKPT X.npy Z      Z = codes .npz (sparse) or .npy (dense)
  saeref.py check-decode CKPT CODES XHAT.npy    decoding of CODES (.npz or .npy)
  saeref.py check-forward ARCH CKPT X.npy XHAT.npy METRICS.json
ARCH names the formula of the catalog to check against (see MODELS).
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
    """docs/language.md: low + (high - low) * u at elements 0..count-1."""
    u = splitmix_at(seed, stream, np.arange(count, dtype=np.uint64))
    return (low + u * (high - low)).astype(np.float32)


def splitmix_normal(seed, stream, counters):
    """docs/language.md: Box-Muller over the uniforms at counters 2i, 2i+1."""
    c = np.asarray(counters, dtype=np.uint64)
    u1 = splitmix_at(seed, stream, c * np.uint64(2))
    u2 = splitmix_at(seed, stream, c * np.uint64(2) + np.uint64(1))
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)


def splitmix_at(seed, stream, i):
    """u in [0, 1): the top 24 bits of splitmix64(seed + s*phi + i*gamma)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & M64) + np.uint64((stream * 0x9E3779B97F4A7C15) & M64) \
            + i * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 16777216.0


def geometric_median(x, iterations=100):
    y = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.linalg.norm(x - y, axis=1), 1e-8)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


def row_norms(w):
    return np.linalg.norm(w.astype(np.float64), axis=1)


def mse(a, b):
    return ((a - b) ** 2).sum(1).mean()


def fvu(a, b):
    return ((a - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()


def relu(v):
    return np.maximum(v, 0)


# Each model maps (params, x, hyperparameters) to a dict with
#   codes: dense [B, n] codes of the encoder (inference form),
#   xhat:  the reconstruction of the forward (training) pass,
#   loss:  the total loss, terms: {name: value} (empty for an unnamed loss),
#   scores: for sparse top-k models, the [B, n] values the selection ranks.
def select_topk(values, rank, k):
    """Keep values at the k highest ranks per row (stable: lower index first)."""
    idx = np.argsort(-rank, axis=1, kind="stable")[:, :k]
    z = np.zeros_like(values)
    np.put_along_axis(z, idx, np.take_along_axis(values, idx, 1), 1)
    return z


def sparse_model(p, x, values, rank, k, order="rank"):
    z = select_topk(values, rank, k) if order == "rank" else group_max_dense(values, k)
    xhat = z @ p["W_dec"] + p["b_dec"]
    return dict(codes=z, select=dict(values=values, rank=rank, k=k, order=order),
                xhat=xhat, loss=fvu(xhat, x), terms={})


def group_max_dense(f, k):
    B, n = f.shape
    g = f.reshape(B, k, n // k)
    arg = g.argmax(axis=2)  # first maximum: the lower index
    z = np.zeros_like(f)
    cols = arg + np.arange(k) * (n // k)
    np.put_along_axis(z, cols, np.take_along_axis(f, cols, 1), 1)
    return z


def model_topk(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    return sparse_model(p, x, f, f, h["k"])


def model_abs_topk(p, x, h):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    return sparse_model(p, x, pre, np.abs(pre), h["k"])


def model_group_max(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    return sparse_model(p, x, f, f, h["k"], order="group")


def model_grad_topk(p, x, h, g):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    s = pre + 1.0 * pre * np.abs(g @ p["W_dec"].T)
    return sparse_model(p, x, pre, s, h["k"])


def model_relu(p, x, h):
    z = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    xhat = z @ p["W_dec"] + p["b_dec"]
    return dict(codes=z, xhat=xhat, loss=mse(xhat, x), terms={})


def model_relu_l1(p, x, h):
    z = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    xhat = z @ p["W_dec"] + p["b_dec"]
    terms = {"recon": mse(xhat, x),
             "sparsity": 5 * (np.abs(z) * row_norms(p["W_dec"])).sum(1).mean()}
    return dict(codes=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def model_jump_relu(p, x, h):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    theta = p["threshold"].astype(np.float64)
    z = pre * (pre > theta)
    xhat = z @ p["W_dec"] + p["b_dec"]
    terms = {"recon": mse(xhat, x), "sparsity": 0.001 * (pre > theta).sum(1).mean()}
    return dict(codes=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def model_gated(p, x, h):
    xc = x - p["b_dec"]
    pi_gate = xc @ p["W_enc"] + p["b_gate"]
    pi_mag = xc @ (p["W_enc"] * np.exp(p["r_mag"].astype(np.float64))) + p["b_mag"]
    z = (pi_gate > 0) * relu(pi_mag)
    xhat = z @ p["W_dec"] + p["b_dec"]
    g = relu(pi_gate)
    terms = {"recon": mse(xhat, x),
             "sparsity": 0.5 * (g * row_norms(p["W_dec"])).sum(1).mean(),
             "aux": mse(g @ p["W_dec"] + p["b_dec"], x)}
    return dict(codes=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def model_matching_pursuit(p, x, h):
    W = p["W_dec"]
    r = x - p["b_dec"]
    z = np.zeros((len(x), W.shape[0]))
    for b in range(len(x)):
        res = r[b].copy()
        for _ in range(h["k"]):
            c = W @ res
            i = int(np.argmax(c))  # the first maximum
            v = max(c[i], 0.0)     # nonneg = true
            z[b, i] += v
            res = res - v * W[i]
    xhat = z @ W + p["b_dec"]
    return dict(codes=z, xhat=xhat, loss=mse(xhat, x), terms={})


def model_top_afa(p, x, h):
    xc = x - p["b_dec"]
    a = relu(xc @ p["W_enc"])
    s = (a * row_norms(p["W_dec"])) ** 2
    target = np.linalg.norm(xc, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    c = np.sqrt(np.cumsum(np.take_along_axis(s, order, 1), axis=1))
    kstar = np.argmin(np.abs(c - target[:, None]), axis=1) + 1
    z = np.zeros_like(a)
    for b in range(len(x)):
        keep = order[b, :kstar[b]]
        z[b, keep] = a[b, keep]
    xhat = z @ p["W_dec"] + p["b_dec"]
    terms = {"recon": mse(xhat, x),
             "afa": 0.03125 * ((np.linalg.norm(z, axis=1) - np.linalg.norm(x, axis=1)) ** 2).mean()}
    return dict(codes=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def model_vsae(p, x, h, seed=0):
    mu = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    codes = select_topk(relu(mu), relu(mu), h["k"])  # encoding uses mu
    B, n = mu.shape
    eps = splitmix_normal(seed, 0, np.arange(B * n)).reshape(B, n)
    # The sample is rounded to float32 before it is added, as in the library.
    f = relu(mu + eps.astype(np.float32))
    z = select_topk(f, f, h["k"])
    xhat = z @ p["W_dec"] + p["b_dec"]
    terms = {"recon": mse(xhat, x), "kl": 0.0001 * 0.5 * (mu ** 2).sum(1).mean()}
    return dict(codes=codes, xhat=xhat, loss=sum(terms.values()), terms=terms)


def select_batch(f, k):
    """The k*B largest entries of the batch; ties in row-major order."""
    B, n = f.shape
    flat = np.argsort(-f.reshape(-1), kind="stable")[: k * B]
    z = np.zeros_like(f).reshape(-1)
    z[flat] = f.reshape(-1)[flat]
    return z.reshape(B, n)


def model_batch_topk(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    z = select_batch(f, h["k"])
    xhat = z @ p["W_dec"] + p["b_dec"]
    codes = f * (f > p["threshold"])  # inference: the per-latent threshold
    return dict(codes=codes, xhat=xhat, loss=fvu(xhat, x), terms={})


def model_mutual_choice(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    z = select_batch(f, h["k"])
    xhat = z @ p["W_dec"] + p["b_dec"]
    terms = {"recon": mse(xhat, x),
             "sparsity": 0.001 * (np.abs(z) * row_norms(p["W_dec"])).sum(1).mean()}
    return dict(codes=z, batch=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def model_matryoshka(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    ref = sparse_model(p, x, f, f, h["k"])
    z, n = ref["codes"], f.shape[1]
    ref["loss"] = sum(mse(z[:, :w] @ p["W_dec"][:w] + p["b_dec"], x)
                      for w in (n // 16, n // 4, n))
    return ref


def model_topk_auxk(p, x, h):
    pre = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    ref = sparse_model(p, x, pre, pre, h["k"])
    aux = aux_loss(pre, x - ref["xhat"], p["W_dec"], p["since_fired"] >= 10000000, 512)
    ref["terms"] = {"recon": ref["loss"], "auxk": 0.03125 * aux}
    ref["loss"] = sum(ref["terms"].values())
    return ref


def feature_choice_budgets(B, n, k, zipf):
    """m_j = floor(Bk C_j / C) - floor(Bk C_{j-1} / C), capped at B."""
    total = B * k
    if zipf == 0:
        cum = (total * np.arange(1, n + 1)) // n
    else:
        w = np.arange(1, n + 1, dtype=np.float64) ** -zipf
        c_total = 0.0
        for v in w:  # the compiler sums sequentially in double
            c_total += v
        cum = np.minimum(np.floor((np.cumsum(w) / c_total) * total), total).astype(np.int64)
        cum[-1] = total
    m = np.diff(np.concatenate([[0], cum]))
    return np.minimum(m, B)


def model_feature_choice(p, x, h):
    f = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    B, n = f.shape
    m = feature_choice_budgets(B, n, h["k"], 0.5)
    z = np.zeros_like(f)
    for j in range(n):
        rows = np.argsort(-f[:, j], kind="stable")[: m[j]]
        z[rows, j] = f[rows, j]
    xhat = z @ p["W_dec"] + p["b_dec"]
    print("budgets: max %d, min %d, sum %d" % (m.max(), m.min(), m.sum()))
    # aux_zipf: latents firing below their Zipf target frequency.
    w = np.arange(1, n + 1, dtype=np.float64) ** -0.5
    target = h["k"] * w / w.sum()
    under = p["frequency"] < target
    terms = {"recon": mse(xhat, x),
             "aux": 0.03125 * aux_loss(pre=f, e=x - xhat, W=p["W_dec"], dead=under, k_aux=512)}
    return dict(codes=z, batch=z, xhat=xhat, loss=sum(terms.values()), terms=terms)


def aux_loss(pre, e, W, dead, k_aux):
    """AuxK over the latents marked dead (or under-used)."""
    n_dead = int(dead.sum())
    masked = np.where(dead, pre, -np.inf)
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :min(k_aux, n_dead)]
    a = np.zeros_like(pre)
    np.put_along_axis(a, idx, np.take_along_axis(pre, idx, 1), 1)
    err = ((a @ W - e) ** 2).sum()
    print("dead or under-used latents: %d of %d" % (n_dead, pre.shape[1]))
    return min(n_dead / k_aux, 1.0) * err / ((e - e.mean(0)) ** 2).sum()


def model_options(p, x, h):
    pre = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    ref = sparse_model(p, x, pre, pre, h["k"])
    z, xhat = ref["codes"], ref["xhat"]
    norms = row_norms(p["W_dec"])
    # aux_k with b_dec added to the decoded dead latents, normalised by the
    # variance of the input.
    dead = p["since_fired"] >= 1000
    n_dead = int(dead.sum())
    masked = np.where(dead, pre, -np.inf)
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :min(64, n_dead)]
    a = np.zeros_like(pre)
    np.put_along_axis(a, idx, np.take_along_axis(pre, idx, 1), 1)
    e = x - xhat
    err = ((a @ p["W_dec"] + p["b_dec"] - e) ** 2).sum()
    aux = min(n_dead / 64, 1.0) * err / ((x - x.mean(0)) ** 2).sum()
    ref["terms"] = {
        "recon": ((xhat - x) ** 2).mean(),
        "tanh": 0.1 * np.tanh(4 * z * norms).sum(1).mean(),
        "l1": 0.01 * np.abs(z).sum(1).mean(),
        "auxk": aux}
    ref["loss"] = sum(ref["terms"].values())
    return ref


MODELS = {"topk": model_topk, "relu": model_relu, "relu_l1": model_relu_l1,
          "jump_relu": model_jump_relu, "gated": model_gated,
          "abs_topk": model_abs_topk, "group_max": model_group_max,
          "grad_topk": model_grad_topk, "matching_pursuit": model_matching_pursuit,
          "top_afa": model_top_afa, "vsae": model_vsae,
          "batch_topk": model_batch_topk, "mutual_choice": model_mutual_choice,
          "matryoshka": model_matryoshka, "topk_auxk": model_topk_auxk,
          "feature_choice": model_feature_choice, "options": model_options}


def run_model(arch, p, cfg, x, grad=None):
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    extra = () if grad is None else (np.load(grad).astype(np.float64),)
    return MODELS[arch](p64, x.astype(np.float64), cfg, *extra)


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
    if "W_enc" not in p:
        # Tied dictionary (matching pursuit): normalize_rows(kaiming_uniform).
        n, d = p["W_dec"].shape
        bound = np.sqrt(6.0 / n)
        raw = splitmix_uniform(int(seed), 0, n * d, -bound, bound).reshape(n, d).astype(np.float64)
        close(p["W_dec"], raw / np.linalg.norm(raw, axis=1, keepdims=True), "W_dec = normalize_rows(kaiming_uniform)")
        return
    W_enc = p["W_enc"]
    d, n = W_enc.shape
    bound = np.sqrt(6.0 / d)
    ref = splitmix_uniform(int(seed), 0, d * n, -bound, bound).reshape(d, n)
    if not np.array_equal(W_enc, ref):
        fail("W_enc differs from kaiming_uniform(seed=%s): max diff %g" % (seed, np.abs(W_enc - ref).max()))
    t = ref.T.astype(np.float64)
    close(p["W_dec"], t / np.linalg.norm(t, axis=1, keepdims=True), "W_dec = normalize_rows(W_enc^T)")
    for b in ("b_enc", "b_dec", "b_gate", "b_mag", "r_mag", "since_fired", "frequency"):
        if b in p and np.any(p[b] != 0):
            fail("%s is not zeros" % b)
    if cfg.get("d_in") != d or cfg.get("d_sae") != n:
        fail("cfg.json d_in/d_sae %s/%s, expected %d/%d" % (cfg.get("d_in"), cfg.get("d_sae"), d, n))
    print("init matches the reference: W_enc %dx%d" % (d, n))


def check_init_options(ckpt, seed, xpath, rows):
    """normal(0, 0.05) by Box-Muller at stream 0; data_mean of the sample."""
    p, cfg = load_ckpt(ckpt)
    d, n = p["W_enc"].shape
    ref = (0.0 + splitmix_normal(int(seed), 0, np.arange(d * n)) * 0.05).astype(np.float32)
    close(p["W_enc"], ref.reshape(d, n), "W_enc = normal(0, 0.05)")
    x = np.load(xpath)[: int(rows)].astype(np.float64)
    close(p["b_dec"], x.mean(0), "b_dec = data_mean(x)")


def check_init_data(ckpt, xpath, rows):
    p, cfg = load_ckpt(ckpt)
    x = np.load(xpath)[: int(rows)].astype(np.float64)
    close(p["b_dec"], geometric_median(x), "b_dec = geometric_median(data)", rtol=1e-5)


def randomize(ckpt, out, xpath, batch, seed, gpath=None):
    p, cfg = load_ckpt(ckpt)
    rng = np.random.default_rng(int(seed))
    # Every vector parameter (biases, thresholds, gate scales) gets random
    # values of a realistic size, so that none of them is tested at zero.
    for name in sorted(p):
        if name == "since_fired":
            # Training state: 10% of the latents dead (not fired for 20M
            # tokens), so AuxK works with fewer dead latents than k_aux
            # (of 512; options.sae asks for 64, more than are dead).
            p[name] = np.where(rng.random(p[name].shape) < 0.1, 2e7,
                               rng.integers(0, 1000, p[name].shape)).astype(np.float32)
            continue
        if name == "frequency":
            # Firing frequencies spread around the per-latent targets.
            p[name] = (rng.random(p[name].shape) * 0.01).astype(np.float32)
            continue
        if p[name].ndim == 1:
            scale = 0.02 if name in ("threshold", "r_mag") else 0.05
            v = rng.standard_normal(p[name].shape) * scale
            if name == "threshold":
                v = np.abs(v)
            p[name] = v.astype(np.float32)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "sae_weights.safetensors"), p)
    json.dump(cfg, open(os.path.join(out, "cfg.json"), "w"))
    d = p["W_dec"].shape[1]
    x = rng.standard_normal((int(batch), d)).astype(np.float32)
    np.save(xpath, x)
    if gpath:
        np.save(gpath, rng.standard_normal((int(batch), d)).astype(np.float32))


def check_encode(arch, ckpt, xpath, zpath, grad=None):
    p, cfg = load_ckpt(ckpt)
    x = np.load(xpath)
    ref = run_model(arch, p, cfg, x, grad)
    if not zpath.endswith(".npz"):
        close(np.load(zpath), ref["codes"], "dense codes")
        return
    z = np.load(zpath)
    if "rows" in z:
        check_batch_codes(z, ref["batch"], cfg["k"])
        return
    sel = ref["select"]
    values, rank, k = sel["values"], sel["rank"], sel["k"]
    vals, idx = z["values"], z["indices"]
    if vals.shape != (x.shape[0], k) or idx.shape != (x.shape[0], k):
        fail("sparse codes have shapes %s/%s, expected %s" % (vals.shape, idx.shape, (x.shape[0], k)))
    if vals.dtype != np.float32 or idx.dtype != np.int32:
        fail("sparse codes have dtypes %s/%s" % (vals.dtype, idx.dtype))
    if np.any(idx < 0) or np.any(idx >= values.shape[1]):
        fail("an index is out of range")
    for row in range(idx.shape[0]):
        if len(set(idx[row].tolist())) != k:
            fail("row %d repeats a latent" % row)
    i64 = idx.astype(np.int64)
    # Each reported value is the value of its latent...
    close(vals, np.take_along_axis(values, i64, 1), "values at their indices")
    if sel["order"] == "group":
        n = values.shape[1]
        want = np.argmax(values.reshape(len(values), k, n // k), axis=2) + np.arange(k) * (n // k)
        if not np.array_equal(i64, want):
            fail("group maxima differ from the reference")
        print("group maxima match the reference")
        return
    # ... ranked as the k highest (ties aside), in decreasing order.
    got_rank = np.take_along_axis(rank, i64, 1)
    close(got_rank, -np.sort(-rank, axis=1)[:, :k], "ranks of the kept entries")
    if np.any(np.diff(got_rank, axis=1) > 1e-9 * np.abs(got_rank).max()):
        fail("entries are not in decreasing rank order")
    ref_idx = np.argsort(-rank, axis=1, kind="stable")[:, :k]
    same = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx.tolist(), ref_idx.tolist())])
    print("index agreement with the reference: %.4f" % same)
    if same < 0.999:
        fail("top-k indices differ from the reference beyond ties (%.4f)" % same)


def check_batch_codes(z, ref, k):
    """Batch layout: B*k entries sorted by row, then by decreasing value."""
    vals, idx, rows = z["values"], z["indices"], z["rows"]
    B = ref.shape[0]
    if not (len(vals) == len(idx) == len(rows) == B * k):
        fail("batch codes hold %d/%d/%d entries, expected %d" % (len(vals), len(idx), len(rows), B * k))
    if np.any(np.diff(rows) < 0):
        fail("entries are not sorted by row")
    for r in range(B):
        seg = vals[rows == r]
        if np.any(np.diff(seg) > 0):
            fail("row %d is not in decreasing order" % r)
    got = {(int(r), int(i)) for r, i in zip(rows, idx)}
    want = {(int(r), int(i)) for r, i in zip(*np.nonzero(ref))}
    agree = len(got & want) / (B * k)
    print("batch selection agreement with the reference: %.4f" % agree)
    if agree < 0.999:
        fail("batch selection differs from the reference beyond ties")
    close(vals, ref[rows.astype(np.int64), idx.astype(np.int64)], "values at their (row, index)")
    counts = np.bincount(rows, minlength=B)
    print("entries per row: min %d, max %d (k = %d)" % (counts.min(), counts.max(), k))


def load_codes(path, n):
    if path.endswith(".npz"):
        z = np.load(path)
        vals, idx = z["values"].astype(np.float64), z["indices"].astype(np.int64)
        if "rows" in z:  # batch layout: one entry per (row, latent)
            rows = z["rows"].astype(np.int64)
            dense = np.zeros((int(rows.max()) + 1 if len(rows) else 0, n))
            np.add.at(dense, (rows, idx), vals)
            return dense
        dense = np.zeros((vals.shape[0], n))
        # Entries add up (matching pursuit may leave unused slots of value 0).
        np.add.at(dense, (np.arange(vals.shape[0])[:, None], idx), vals)
        return dense
    return np.load(path).astype(np.float64)


def check_decode(ckpt, codes, xhat):
    p, cfg = load_ckpt(ckpt)
    z = load_codes(codes, p["W_dec"].shape[0])
    close(np.load(xhat), z @ p["W_dec"].astype(np.float64) + p["b_dec"], "decoded xhat")


def check_forward(arch, ckpt, xpath, xhat, metrics, grad=None):
    p, cfg = load_ckpt(ckpt)
    x = np.load(xpath).astype(np.float64)
    ref = run_model(arch, p, cfg, x, grad)
    close(np.load(xhat), ref["xhat"], "forward xhat")
    m = json.load(open(metrics))
    err = ((ref["xhat"] - x) ** 2).sum()
    close(m["mse"], err / x.shape[0], "mse")
    close(m["fvu"], err / ((x - x.mean(0)) ** 2).sum(), "fvu")
    close(m["l0"], (ref["codes"] != 0).sum(1).mean(), "l0", rtol=1e-3)
    close(m["loss"], ref["loss"], "loss")
    terms = m.get("terms", {})
    if sorted(terms) != sorted(ref["terms"]):
        fail("loss terms %s, expected %s" % (sorted(terms), sorted(ref["terms"])))
    for name, value in ref["terms"].items():
        close(terms[name], value, "loss term '%s'" % name)


if __name__ == "__main__":
    cmds = {"check-init": check_init, "check-init-data": check_init_data,
            "check-init-options": check_init_options, "randomize": randomize, "check-encode": check_encode,
            "check-decode": check_decode, "check-forward": check_forward}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])
