"""Independent PyTorch reference for saec's training: gradients and train steps.

Re-implements, from the SAE catalog, docs/language.md and the NumPy forward
passes of saeref.py (whose checkpoint reader/writer it imports), the training
form of every deterministic example: the forward pass, the loss terms, the
gradient rules that are not plain derivatives (selections pass gradient to
their kept entries only, `stopgrad`, `step`, the JumpReLU and L0
straight-through estimators), the decoder unit-norm rule, gradient clipping
and torch.optim.Adam. Nothing here calls the runtime.

Usage (each sub-command exits non-zero with a message on a mismatch):
  torchref.py check-step ARCH CKPT X.npy B OUT [--steps N] [--lr LR]
              [--beta1 B1] [--beta2 B2] [--eps EPS] [--clip C]
              [--unit-norm NAME] [--sparsity S] [--grad G.npy] [--k K]
              [--lr-warmup W] [--lr-decay none|linear|cosine]
              [--sparsity-warmup W] [--rtol R] [--noise-allowance F]
              [--no-state]
      runs N train steps (default 1) from CKPT/sae_weights.safetensors on
      rows [(t-1)B, tB) of X for step t, and compares every parameter with
      OUT/sae_weights.safetensors and the Adam moments with
      OUT/optimizer.safetensors ("<param>.exp_avg", "<param>.exp_avg_sq"):
      max|got - ref| <= R * max|ref| per tensor (R = 1e-4 by default).
      The schedule (warm-up, decay over the N steps, sparsity ramp) is that
      of `sae train --help`. State: since_fired is compared exactly (+B per
      step, then 0 where a latent fired in the batch, as sparsify counts
      it; --no-state skips it); frequency and batch_topk's threshold are
      not (no update rule is documented yet).
  torchref.py grad ARCH CKPT X.npy OUT.npz [--sparsity S] [--grad G.npy]
      writes the gradient of the total loss over the whole of X (one batch)
      for every trainable parameter, as float32 arrays named like them.
  torchref.py check-grad ARCH CKPT X.npy GOT.npz [--rtol R] [...]
      compares gradients GOT.npz (e.g. from sae_gradient) with the above.
  torchref.py run-step ARCH CKPT X.npy B OUT [check-step's options]
              [--double] [--permute SEED]
      writes what `sae train --no-shuffle` should write (weights, Adam
      moments, trainer_state.json {"step": N}); --double computes in
      float64, --permute sums in another order (shuffled input dimensions
      and rows): stand-ins for another implementation, to test check-step.
  torchref.py selftest [ARCH ...]
      checks this file against saeref.py's NumPy forward passes (float64),
      autograd against finite differences (stopgrad values frozen), the
      JumpReLU/L0 straight-through gradients against their formulas, and
      the step mechanics (projection, clipping, Adam, renormalisation)
      against abi.h's formulas in NumPy.

Exactness. Adam's first steps are about lr·sign(g), so where a gradient is
at the level of float32 rounding (or where moments cancel), two correct
float32 implementations legitimately differ by up to about lr: with Adam's
usual tiny eps (6.25e-10, 1e-8), a strict 1e-4 comparison fails on a few
entries in a million after one step for most models. Two ways out:
  - one step at a small eps: --noise-allowance 10 measures, per entry, the
    float32 rounding error of the gradient (three summation orders against
    float64 at the same parameters) and allows what 10 times that error can
    do through Adam (interval arithmetic on the moments); a few hundred
    entries in a million get an allowance, all others stay strict (about
    2x slower);
  - several steps: an eps well above the gradients' rounding error (about
    1e-3 of a typical |g|; e.g. --clip 1 --eps 1e-6 at d=256, n=4096), where
    the strict comparison holds to about 1e-5. At a small eps the
    differences of step 1 change later selections and no per-entry bound
    holds.

ARCH is one of ARCHS below (saeref.py's MODELS less the stochastic vsae,
plus "options" for Inputs/options.sae). Hyperparameters are those of the
examples/ specs, as in saeref.py; k comes from CKPT/cfg.json (or --k). The
total loss is the first term plus S times the sum of the others (S = the
sparsity warm-up factor, 1 by default). Defaults of the optimiser (lr 2e-4,
betas 0.9/0.999, eps 6.25e-10, no clipping, no unit-norm rule) are the train
section's defaults in abi.h; check-step takes the options it is not given
from OUT/trainer_state.json ("hyper", "unit_norm") where that records them.
"""
import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import saeref  # noqa: E402
from saeref import read_safetensors, write_safetensors  # noqa: E402

BANDWIDTH = 1e-3  # ε of jump_relu and l0 (SAELens' default)
TINY = 1e-30
# Maintained by training rules, not by gradient (`state` in the specs).
STATE = {"topk_auxk": ("since_fired",), "options": ("since_fired",),
         "feature_choice": ("frequency",), "batch_topk": ("threshold",)}


def is_state(arch, name):
    return name in STATE.get(arch, ())


def fail(msg):
    print("torchref: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


# --- what differs between an autograd run and a finite-difference run --------

class Ctx:
    """Records the discrete choices (selections, ReLU and step masks) of a
    forward pass and the values its `stopgrad`s froze. A finite-difference
    run replays a base run: stopgrad returns the base run's values, so the
    function differentiated numerically is the one autograd differentiates,
    and a perturbation that changes a choice is detected and skipped."""

    def __init__(self, replay=None):
        self.frozen = {} if replay is None else replay.frozen
        self.replay = replay is not None
        self.choices = []

    def stopgrad(self, name, value):
        if self.replay:
            return self.frozen[name]
        # A copy: a finite-difference run perturbs the parameters in place.
        self.frozen[name] = value.detach().clone()
        return self.frozen[name]

    def choose(self, mask):
        self.choices.append(mask.detach().clone())
        return mask


def same_choices(a, b):
    return len(a.choices) == len(b.choices) and all(
        torch.equal(u, v) for u, v in zip(a.choices, b.choices))


# --- straight-through estimators (SAELens' JumpReLU and Step) ---------------

def rect(u):
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """x·H(x−θ); ∂/∂x = H(x−θ), ∂/∂θ = −(θ/ε)·rect((x−θ)/ε)."""

    @staticmethod
    def forward(ctx, x, theta):
        ctx.save_for_backward(x, theta)
        return x * (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, theta = ctx.saved_tensors
        gx = (x > theta).to(x.dtype) * grad
        gt = (-(theta / BANDWIDTH) * rect((x - theta) / BANDWIDTH) * grad).sum(0)
        return gx, gt


class Step(torch.autograd.Function):
    """H(x−θ); ∂/∂x = 0, ∂/∂θ = −(1/ε)·rect((x−θ)/ε)."""

    @staticmethod
    def forward(ctx, x, theta):
        ctx.save_for_backward(x, theta)
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, theta = ctx.saved_tensors
        gt = (-(1.0 / BANDWIDTH) * rect((x - theta) / BANDWIDTH) * grad).sum(0)
        return torch.zeros_like(x), gt


# --- building blocks ---------------------------------------------------------

def relu(ctx, v):
    ctx.choose(v > 0)
    return torch.relu(v)


def encode_pre(p, x):
    return (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]


def decode(p, z):
    return z @ p["W_dec"] + p["b_dec"]


def mse(a, b, mean=False):
    sq = (a - b) ** 2
    return sq.mean() if mean else sq.sum(1).mean()


def fvu(xhat, x):
    return ((xhat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def row_norms(w):
    return torch.linalg.vector_norm(w, dim=1)


def l1(z, w=None):
    a = z.abs()
    return (a if w is None else a * row_norms(w)).sum(1).mean()


def keep(ctx, values, mask):
    """The values at the kept entries: gradient flows to those only."""
    ctx.choose(mask & (values != 0))
    return values * mask.to(values.dtype)


def rows_topk_mask(rank, k):
    """The k highest ranks per row; ties keep the lower index."""
    order = torch.sort(rank.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros(rank.shape, dtype=torch.bool).scatter_(1, order, True)


def batch_topk_mask(rank, k):
    """The B·k largest entries of the whole batch, ties in row-major order."""
    flat = rank.detach().reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[: k * rank.shape[0]]
    return torch.zeros(flat.shape, dtype=torch.bool).scatter_(0, order, True).reshape(rank.shape)


def group_max_mask(f, k):
    B, n = f.shape
    arg = f.detach().reshape(B, k, n // k).argmax(2)  # the first maximum
    cols = arg + torch.arange(k) * (n // k)
    return torch.zeros(f.shape, dtype=torch.bool).scatter_(1, cols, True)


def feature_choice_mask(f, k, zipf):
    """Latent j keeps its m_j best rows (ties: lower row)."""
    B, n = f.shape
    with contextlib.redirect_stdout(io.StringIO()):
        m = torch.from_numpy(saeref.feature_choice_budgets(B, n, k, zipf))
    order = torch.sort(f.detach(), dim=0, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(B)[:, None].expand(B, n).contiguous())
    return rank < m[None, :]


def aux_loss(ctx, pre, e, w, dead, k_aux, bias=None, target=None):
    """AuxK over the latents marked dead (or under-used), as docs/language.md."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return torch.zeros((), dtype=pre.dtype)
    masked = torch.where(dead[None, :], pre.detach(), torch.tensor(-float("inf"), dtype=pre.dtype))
    mask = rows_topk_mask(masked, min(k_aux, n_dead))
    a = keep(ctx, pre, mask)
    dec = a @ w
    if bias is not None:
        dec = dec + bias
    v = e if target is None else target
    return min(n_dead / k_aux, 1.0) * ((dec - e) ** 2).sum() / ((v - v.mean(0)) ** 2).sum()


# --- the models: (params, inputs, hyper, ctx) -> codes, xhat, [(term, value)] --

def m_topk(p, xs, h, ctx):
    f = relu(ctx, encode_pre(p, xs[0]))
    z = keep(ctx, f, rows_topk_mask(f, h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("loss", fvu(xhat, xs[0]))]


def m_abs_topk(p, xs, h, ctx):
    pre = encode_pre(p, xs[0])
    z = keep(ctx, pre, rows_topk_mask(pre.abs(), h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("loss", fvu(xhat, xs[0]))]


def m_group_max(p, xs, h, ctx):
    f = relu(ctx, encode_pre(p, xs[0]))
    z = keep(ctx, f, group_max_mask(f, h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("loss", fvu(xhat, xs[0]))]


def m_grad_topk(p, xs, h, ctx):
    x, g = xs
    pre = encode_pre(p, x)
    s = pre + 1.0 * pre * (g @ p["W_dec"].T).abs()  # beta = 1
    z = keep(ctx, pre, rows_topk_mask(s, h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("loss", fvu(xhat, x))]


def m_relu(p, xs, h, ctx):
    z = relu(ctx, encode_pre(p, xs[0]))
    xhat = decode(p, z)
    return z, xhat, [("loss", mse(xhat, xs[0]))]


def m_relu_l1(p, xs, h, ctx):
    z = relu(ctx, encode_pre(p, xs[0]))
    xhat = decode(p, z)
    return z, xhat, [("recon", mse(xhat, xs[0])), ("sparsity", 5 * l1(z, p["W_dec"]))]


def m_jump_relu(p, xs, h, ctx):
    pre = encode_pre(p, xs[0])
    ctx.choose(pre > p["threshold"])
    z = JumpReLU.apply(pre, p["threshold"])
    xhat = decode(p, z)
    l0 = Step.apply(pre, p["threshold"]).sum(1).mean()
    return z, xhat, [("recon", mse(xhat, xs[0])), ("sparsity", 0.001 * l0)]


def m_gated(p, xs, h, ctx):
    x = xs[0]
    xc = x - p["b_dec"]
    pi_gate = xc @ p["W_enc"] + p["b_gate"]
    pi_mag = xc @ (p["W_enc"] * torch.exp(p["r_mag"])) + p["b_mag"]
    z = ctx.choose(pi_gate > 0).to(x.dtype) * relu(ctx, pi_mag)  # step: no gradient
    xhat = decode(p, z)
    g = relu(ctx, pi_gate)
    aux = g @ ctx.stopgrad("W_dec", p["W_dec"]) + ctx.stopgrad("b_dec", p["b_dec"])
    return z, xhat, [("recon", mse(xhat, x)),
                     ("sparsity", 0.5 * l1(g, p["W_dec"])),
                     ("aux", mse(aux, x))]


def m_matching_pursuit(p, xs, h, ctx):
    x, w = xs[0], p["W_dec"]
    r = x - p["b_dec"]
    z = torch.zeros((x.shape[0], w.shape[0]), dtype=x.dtype)
    for _ in range(h["k"]):
        c = r @ w.T
        i = ctx.choose(c.detach().argmax(1, keepdim=True))  # not differentiated
        v = relu(ctx, c.gather(1, i))                          # nonneg = true
        z = z + torch.zeros_like(z).scatter(1, i, v)
        r = r - v * w[i[:, 0]]
    xhat = decode(p, z)
    return z, xhat, [("loss", mse(xhat, x))]


def m_top_afa(p, xs, h, ctx):
    x = xs[0]
    xc = x - p["b_dec"]
    a = relu(ctx, xc @ p["W_enc"])
    with torch.no_grad():
        s = (a * row_norms(p["W_dec"])) ** 2
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        c = torch.sqrt(torch.cumsum(s.gather(1, order), 1))
        kstar = (c - torch.linalg.vector_norm(xc, dim=1, keepdim=True)).abs().argmin(1) + 1
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(a.shape[1]).expand_as(order).contiguous())
        mask = rank < kstar[:, None]
    z = keep(ctx, a, mask)
    xhat = decode(p, z)
    afa = ((torch.linalg.vector_norm(z, dim=1) - torch.linalg.vector_norm(x, dim=1)) ** 2).mean()
    return z, xhat, [("recon", mse(xhat, x)), ("afa", 0.03125 * afa)]


def m_batch_topk(p, xs, h, ctx):
    f = relu(ctx, encode_pre(p, xs[0]))
    z = keep(ctx, f, batch_topk_mask(f, h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("loss", fvu(xhat, xs[0]))]


def m_mutual_choice(p, xs, h, ctx):
    f = relu(ctx, encode_pre(p, xs[0]))
    z = keep(ctx, f, batch_topk_mask(f, h["k"]))
    xhat = decode(p, z)
    return z, xhat, [("recon", mse(xhat, xs[0])), ("sparsity", 0.001 * l1(z, p["W_dec"]))]


def m_feature_choice(p, xs, h, ctx):
    x = xs[0]
    f = relu(ctx, encode_pre(p, x))
    z = keep(ctx, f, feature_choice_mask(f, h["k"], 0.5))
    xhat = decode(p, z)
    n = f.shape[1]
    w = np.arange(1, n + 1, dtype=np.float64) ** -0.5
    under = p["frequency"].detach() < torch.from_numpy(h["k"] * w / w.sum()).to(x.dtype)
    e = ctx.stopgrad("residual", x - xhat)
    return z, xhat, [("recon", mse(xhat, x)),
                     ("aux", 0.03125 * aux_loss(ctx, f, e, p["W_dec"], under, 512))]


def m_matryoshka(p, xs, h, ctx):
    x = xs[0]
    f = relu(ctx, encode_pre(p, x))
    z = keep(ctx, f, rows_topk_mask(f, h["k"]))
    n = f.shape[1]
    loss = sum(mse(z[:, :w] @ p["W_dec"][:w] + p["b_dec"], x) for w in (n // 16, n // 4, n))
    return z, decode(p, z), [("loss", loss)]


def m_topk_auxk(p, xs, h, ctx):
    x = xs[0]
    f = relu(ctx, encode_pre(p, x))
    z = keep(ctx, f, rows_topk_mask(f, h["k"]))
    xhat = decode(p, z)
    e = ctx.stopgrad("residual", x - xhat)
    dead = p["since_fired"].detach() >= 10000000
    return z, xhat, [("recon", fvu(xhat, x)),
                     ("auxk", 0.03125 * aux_loss(ctx, f, e, p["W_dec"], dead, 512))]


def m_options(p, xs, h, ctx):
    x = xs[0]
    f = relu(ctx, encode_pre(p, x))
    z = keep(ctx, f, rows_topk_mask(f, h["k"]))
    xhat = decode(p, z)
    e = ctx.stopgrad("residual", x - xhat)
    dead = p["since_fired"].detach() >= 1000
    return z, xhat, [
        ("recon", mse(xhat, x, mean=True)),
        ("tanh", 0.1 * torch.tanh(4 * z * row_norms(p["W_dec"])).sum(1).mean()),
        ("l1", 0.01 * l1(z)),
        ("auxk", aux_loss(ctx, f, e, p["W_dec"], dead, 64, bias=p["b_dec"], target=x))]


ARCHS = {"topk": m_topk, "relu": m_relu, "relu_l1": m_relu_l1,
         "batch_topk": m_batch_topk, "jump_relu": m_jump_relu, "gated": m_gated,
         "abs_topk": m_abs_topk, "top_afa": m_top_afa,
         "mutual_choice": m_mutual_choice, "feature_choice": m_feature_choice,
         "group_max": m_group_max, "matching_pursuit": m_matching_pursuit,
         "grad_topk": m_grad_topk, "matryoshka": m_matryoshka,
         "topk_auxk": m_topk_auxk, "options": m_options}


def total_loss(terms, sparsity):
    """The first term plus the sparsity factor times the others."""
    rest = [v for _, v in terms[1:]]
    return terms[0][1] + sparsity * sum(rest) if rest else terms[0][1]


def forward(arch, p, xs, h, sparsity=1.0, ctx=None):
    ctx = ctx or Ctx()
    z, xhat, terms = ARCHS[arch](p, xs, h, ctx)
    return z, xhat, terms, total_loss(terms, sparsity), ctx


def update_state(p, z, batch):
    """since_fired: tokens since the latent last fired, counted per batch as
    sparsify does (+B, then 0 for every latent with a nonzero code in the
    batch). frequency has no documented rule yet: it is left unchanged."""
    if "since_fired" in p:
        fired = (z.detach() != 0).any(0)
        with torch.no_grad():
            p["since_fired"] += batch
            p["since_fired"][fired] = 0


# --- training ------------------------------------------------------------------

D_AXIS = {"W_enc": 0, "W_dec": 1, "b_dec": 0}  # the parameters' input-dimension axes


def permuted_gradient(arch, h, params, xs, sparsity, dtype, seed, names):
    """The gradient at `params` (NumPy) computed in `dtype`, with the input
    dimensions and the rows shuffled by `seed` (None: not shuffled) and the
    result shuffled back. Every model is equivariant under both shuffles,
    so this is the same gradient summed in another order."""
    rng = np.random.default_rng(seed)
    d, B = xs[0].shape[1], xs[0].shape[0]
    cols = rng.permutation(d) if seed is not None else np.arange(d)
    rows = rng.permutation(B) if seed is not None else np.arange(B)
    p = {k: torch.tensor(np.take(v, cols, axis=D_AXIS[k]) if k in D_AXIS else v, dtype=dtype)
         for k, v in params.items()}
    for k in names:
        p[k].requires_grad_(True)
    forward(arch, p, [torch.tensor(v[rows][:, cols], dtype=dtype) for v in xs], h, sparsity)[3].backward()
    inv = np.argsort(cols)
    out = {}
    for k in names:
        g = p[k].grad.double().numpy() if p[k].grad is not None else np.zeros(p[k].shape)
        out[k] = np.take(g, inv, axis=D_AXIS[k]) if k in D_AXIS else g
    return out


class Trainer:
    """Parameters as torch tensors, torch.optim.Adam on the trainable ones."""

    def __init__(self, arch, params, hyper, opt, dtype=torch.float32):
        self.arch, self.h, self.o = arch, hyper, opt
        self.p = {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}
        self.trainable = [k for k in params if not is_state(arch, k)]
        for k in self.trainable:
            self.p[k].requires_grad_(True)
        self.adam = torch.optim.Adam([self.p[k] for k in self.trainable], lr=opt.lr,
                                     betas=(opt.beta1, opt.beta2), eps=opt.eps, foreach=False)
        if opt.unit_norm and opt.unit_norm not in self.trainable:
            fail("--unit-norm %s: no trainable parameter of that name" % opt.unit_norm)
        self.dtype = dtype
        self.noise = 0.0   # see track_noise
        self.slack = None
        self.t = 0

    def track_noise(self, factor):
        """Bound, per entry, what another float32 implementation may do
        differently through Adam (see bound_adam)."""
        self.noise = factor
        self.slack = {k: np.zeros(self.p[k].shape) for k in self.trainable}
        self.box = {k: [np.zeros(self.p[k].shape) for _ in range(4)] for k in self.trainable}

    def gradient(self, xs, sparsity):
        """Gradients of the total loss (zeros where a parameter is unused)."""
        xt = [torch.tensor(v, dtype=self.dtype) for v in xs]
        for k in self.trainable:
            self.p[k].grad = None
        z, xhat, terms, total, _ = forward(self.arch, self.p, xt, self.h, sparsity)
        total.backward()
        for k in self.trainable:
            if self.p[k].grad is None:
                self.p[k].grad = torch.zeros_like(self.p[k])
        return z, terms

    def gradient_noise(self, xs, sparsity):
        """Per entry: the largest difference between float32 gradients
        summed in three orders and the float64 gradient, at the current
        parameters (before the unit-norm projection and clipping)."""
        params = {k: v.detach().double().numpy() for k, v in self.p.items()}
        g64 = permuted_gradient(self.arch, self.h, params, xs, sparsity, torch.float64, None, self.trainable)
        noise = {k: np.abs(self.p[k].grad.double().numpy() - g64[k]) for k in self.trainable}
        for seed in (1, 2):
            g32 = permuted_gradient(self.arch, self.h, params, xs, sparsity, torch.float32, seed, self.trainable)
            for k in self.trainable:
                noise[k] = np.maximum(noise[k], np.abs(g32[k] - g64[k]))
        return noise

    def bound_adam(self, noise, scale):
        """Interval arithmetic over Adam's moments, with each gradient entry
        anywhere in g ± factor·noise (scale: the clipping coefficient): how
        far can this step's update be from the reference's? Where rounding
        can flip a gradient's sign (Adam's first step is about lr·sign(g))
        or moments cancel, the allowance is large; elsewhere negligible.
        Selection changes that such differences cause in later steps are not
        covered: use a larger --eps for several steps."""
        self.t += 1
        b1, b2, eps, lr = self.o.beta1, self.o.beta2, self.o.eps, self.adam.param_groups[0]["lr"]
        bc1, bc2s = 1 - b1 ** self.t, np.sqrt(1 - b2 ** self.t)

        def update(mm, vv):
            return lr / bc1 * mm / (np.sqrt(vv) / bc2s + eps)
        for k in self.trainable:
            g = self.p[k].grad.double().numpy()
            delta = self.noise * noise[k] * scale
            st = self.adam.state.get(self.p[k], {})
            m = st["exp_avg"].double().numpy() if "exp_avg" in st else np.zeros(g.shape)
            v = st["exp_avg_sq"].double().numpy() if "exp_avg_sq" in st else np.zeros(g.shape)
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            lo, hi = g - delta, g + delta
            sq_lo = np.where((lo <= 0) & (hi >= 0), 0, np.minimum(lo * lo, hi * hi))
            m_lo, m_hi, v_lo, v_hi = self.box[k]
            m_lo, m_hi = b1 * m_lo + (1 - b1) * lo, b1 * m_hi + (1 - b1) * hi
            v_lo, v_hi = b2 * v_lo + (1 - b2) * sq_lo, b2 * v_hi + (1 - b2) * np.maximum(lo * lo, hi * hi)
            self.box[k] = [m_lo, m_hi, v_lo, v_hi]
            u = update(m, v)
            u_hi = np.where(m_hi >= 0, update(m_hi, v_lo), update(m_hi, v_hi))
            u_lo = np.where(m_lo >= 0, update(m_lo, v_hi), update(m_lo, v_lo))
            self.slack[k] += np.maximum(u_hi - u, u - u_lo)

    def step(self, xs, sparsity, lr=None):
        if lr is not None:
            self.adam.param_groups[0]["lr"] = lr
        z, terms = self.gradient(xs, sparsity)
        noise = self.gradient_noise(xs, sparsity) if self.noise > 0 else None
        params = [self.p[k] for k in self.trainable]
        with torch.no_grad():
            un = self.o.unit_norm
            if un:  # remove each row's gradient component along the row
                w, g = self.p[un], self.p[un].grad
                g -= (g * w).sum(1, keepdim=True) * w
                if noise is not None:  # |Δg − (Δg·w)w| <= |Δg| + |Δg|·|w|·|w|
                    wn = w.double().numpy()
                    noise[un] = noise[un] + (noise[un] * np.abs(wn)).sum(1, keepdims=True) * np.abs(wn)
            scale = 1.0
            if self.o.clip > 0:
                scale = min(1.0, float(torch.nn.utils.clip_grad_norm_(params, self.o.clip).double()
                                       .add(1e-6).reciprocal().mul(self.o.clip)))
            if noise is not None:
                self.bound_adam(noise, scale)
            self.adam.step()
            if un:  # renormalise the rows; a zero row stays zero
                w = self.p[un]
                norm = row_norms(w)[:, None]
                w /= torch.where(norm > 0, norm, torch.ones_like(norm))
        update_state(self.p, z, z.shape[0])
        return terms

    def moments(self):
        out = {}
        for k in self.trainable:
            st = self.adam.state[self.p[k]]
            out[k + ".exp_avg"] = st["exp_avg"].detach().numpy()
            out[k + ".exp_avg_sq"] = st["exp_avg_sq"].detach().numpy()
        return out

    def weights(self):
        return {k: v.detach().numpy() for k, v in self.p.items()}


# --- command line ----------------------------------------------------------------

def load(args):
    ckpt = args.ckpt
    params = read_safetensors(os.path.join(ckpt, "sae_weights.safetensors"))
    cfg_path = os.path.join(ckpt, "cfg.json")
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    h = dict(cfg)
    if args.k is not None:
        h["k"] = args.k
    if "k" not in h and args.arch not in ("relu", "relu_l1", "jump_relu", "gated", "top_afa"):
        fail("%s needs k: CKPT/cfg.json has none, pass --k" % args.arch)
    x = np.load(args.x)
    xs = [x] if args.grad is None else [x, np.load(args.grad)]
    if args.arch == "grad_topk" and len(xs) != 2:
        fail("grad_topk needs its second input: --grad G.npy")
    return params, h, xs


def compare(got, ref, what, rtol, slack=None):
    """max|got − ref| <= rtol·max|ref| (+ TINY), plus `slack` per entry where
    given (--noise-allowance); returns the relative error (slack not counted)."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        fail("%s: shape %s, reference %s" % (what, got.shape, ref.shape))
    if not np.all(np.isfinite(got)):
        fail("%s: %d non-finite values" % (what, int((~np.isfinite(got)).sum())))
    if not ref.size:
        return 0.0
    scale = np.abs(ref).max()
    diff = np.abs(got - ref)
    rel = diff / (scale + TINY)
    excess = diff - (0 if slack is None else slack)
    bad = excess > rtol * (scale + TINY)
    stats = ("max rel %.2e, mean rel %.2e, %d of %d entries above %.0e"
             % (rel.max(), rel.mean(), int((rel > rtol / 10).sum()), rel.size, rtol / 10))
    if slack is not None:
        stats += ", %d with a --noise-allowance over %.0e, %d of them used" % (
            int((slack > rtol * (scale + TINY)).sum()), rtol, int(((rel > rtol) & ~bad).sum()))
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, rel, -1)), rel.shape)
        fail("%s: relative error %.3g at %s (got %r, reference %r; max|ref| %.3g); %d entries over %.0e; %s"
             % (what, rel[worst], tuple(int(i) for i in worst), got[worst], ref[worst], scale,
                int(bad.sum()), rtol, stats))
    print("%s: %s" % (what, stats))
    return rel.max()


DEFAULTS = {"lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "eps": 6.25e-10, "clip": 0.0,
            "unit_norm": None, "lr_warmup": 0, "lr_decay": "none", "sparsity_warmup": 0}


def resolve_hyper(args):
    """Fills the optimiser options not given: from OUT/trainer_state.json
    ("hyper", "unit_norm") for check-step, else DEFAULTS; prints them, and
    warns where a given one differs from what the trainer recorded."""
    state = {}
    path = os.path.join(args.out, "trainer_state.json")
    if args.cmd == "check-step" and os.path.exists(path):
        st = json.load(open(path))
        state = dict(st.get("hyper", {}))
        if "unit_norm" in st:
            state["unit_norm"] = st["unit_norm"]
        if st.get("step") not in (None, args.steps):
            print("torchref: note: trainer_state.json says step %s, checking %d steps" % (st.get("step"), args.steps))
    used = []
    for k, default in DEFAULTS.items():
        given = getattr(args, k)
        if given is None:
            setattr(args, k, state.get(k, default))
            used.append("%s=%s%s" % (k, getattr(args, k), " (trainer_state)" if k in state else ""))
        else:
            if k in state and state[k] != given:
                print("torchref: note: --%s %s, trainer_state.json has %s" % (k.replace("_", "-"), given, state[k]))
            used.append("%s=%s" % (k, given))
    print("hyperparameters: " + ", ".join(used))


def schedule(args, t):
    """The learning rate and sparsity factor of step t (1-based) of a run
    of args.steps steps, as `sae train --help` documents them: lr times
    min(1, t/lr_warmup) times the decay at p = (t − lr_warmup)/(T −
    lr_warmup) clamped to [0, 1] (none: 1, linear: 1 − p, cosine:
    (1 + cos πp)/2); sparsity factor --sparsity times min(1,
    t/sparsity_warmup)."""
    lr = args.lr
    if args.lr_warmup > 0:
        lr *= min(1.0, t / args.lr_warmup)
    if args.lr_decay != "none":
        span = args.steps - args.lr_warmup
        p = min(max((t - args.lr_warmup) / span, 0.0), 1.0) if span > 0 else 0.0
        lr *= 1.0 - p if args.lr_decay == "linear" else 0.5 * (1.0 + np.cos(np.pi * p))
    s = args.sparsity
    if args.sparsity_warmup > 0:
        s *= min(1.0, t / args.sparsity_warmup)
    return lr, s


def train(args, dtype=torch.float32, permute=None, quiet=False):
    """args.steps steps on consecutive batches of args.batch rows. With
    `permute` (a seed), the input dimensions and the rows of each batch are
    shuffled (every model is equivariant under both), which changes every
    summation order: a stand-in for another float32 implementation."""
    params, h, xs = load(args)
    B, d = args.batch, xs[0].shape[1]
    if xs[0].shape[0] < args.steps * B:
        fail("X has %d rows, %d steps of %d need %d" % (xs[0].shape[0], args.steps, B, args.steps * B))
    rng = np.random.default_rng(permute)
    cols = rng.permutation(d) if permute is not None else np.arange(d)
    params = {k: np.take(v, cols, axis=D_AXIS[k]) if k in D_AXIS else v for k, v in params.items()}
    t = Trainer(args.arch, params, h, args, dtype)
    if getattr(args, "noise_allowance", 0) > 0:
        t.track_noise(args.noise_allowance)
    for step in range(args.steps):
        rows = np.arange(step * B, (step + 1) * B)
        if permute is not None:
            rows = rng.permutation(rows)
        lr, sparsity = schedule(args, step + 1)
        terms = t.step([v[rows][:, cols] for v in xs], sparsity, lr)
        if not quiet:
            print("step %d: %s" % (step + 1, ", ".join("%s %.6g" % (k, float(v)) for k, v in terms)))
    inv = np.argsort(cols)

    def unpermute(name, v):
        base = name.split(".")[0]
        return np.take(v, inv, axis=D_AXIS[base]) if base in D_AXIS else v
    t.final_weights = {k: unpermute(k, v) for k, v in t.weights().items()}
    t.final_moments = {k: unpermute(k, v) for k, v in t.moments().items()}
    if t.slack is not None:
        t.final_slack = {k: unpermute(k, v) for k, v in t.slack.items()}
    return t


def cmd_check_step(args):
    t = train(args)
    ref_w, ref_m = t.final_weights, t.final_moments
    slack_w = getattr(t, "final_slack", {})
    got = read_safetensors(os.path.join(args.out, "sae_weights.safetensors"))
    opt_path = os.path.join(args.out, "optimizer.safetensors")
    got_opt = read_safetensors(opt_path)
    worst = 0.0
    for name, ref in ref_w.items():
        if name not in got:
            fail("%s is missing from OUT/sae_weights.safetensors" % name)
        if is_state(args.arch, name):
            if name != "since_fired" or args.no_state:
                print("%s: state, not compared (no documented update rule)" % name)
            else:  # token counts: exact
                diff = np.abs(got[name].astype(np.float64) - ref)
                if diff.max() > 0:
                    i = int(np.argmax(diff))
                    fail("%s differs at %d entries, e.g. latent %d: got %r, reference %r"
                         % (name, int((diff > 0).sum()), i, got[name][i], ref[i]))
                print("%s: exact" % name)
            continue
        worst = max(worst, compare(got[name], ref, name, args.rtol, slack_w.get(name)))
    for name, ref in ref_m.items():
        if name not in got_opt:
            fail("%s is missing from %s" % (name, opt_path))
        worst = max(worst, compare(got_opt[name], ref, name, args.rtol))
    state = os.path.join(args.out, "trainer_state.json")
    if os.path.exists(state):
        print("trainer_state.json: %s" % json.dumps(json.load(open(state)), sort_keys=True)[:200])
    print("max relative error %.2e after %d step(s)%s" % (
        worst, args.steps, " (entries over %.0e within their --noise-allowance bound)" % args.rtol
        if worst > args.rtol else ""))


def cmd_run_step(args):
    t = train(args, torch.float64 if args.double else torch.float32, args.permute)
    os.makedirs(args.out, exist_ok=True)
    write_safetensors(os.path.join(args.out, "sae_weights.safetensors"), t.final_weights)
    write_safetensors(os.path.join(args.out, "optimizer.safetensors"), t.final_moments)
    json.dump({"step": args.steps}, open(os.path.join(args.out, "trainer_state.json"), "w"))


def torch_gradients(args):
    params, h, xs = load(args)
    t = Trainer(args.arch, params, h, args)
    _, terms = t.gradient(xs, args.sparsity)
    print("loss terms: %s" % ", ".join("%s %.6g" % (k, float(v)) for k, v in terms))
    return {k: t.p[k].grad.numpy() for k in t.trainable}


def cmd_grad(args):
    np.savez(args.out, **torch_gradients(args))


def cmd_check_grad(args):
    ref = torch_gradients(args)
    got = np.load(args.out)
    worst = max(compare(got[k], v, "gradient of " + k, args.rtol) for k, v in ref.items())
    print("max relative error %.2e" % worst)


# --- self-test -----------------------------------------------------------------

TINY_SIZE = dict(d=6, n=16, k=3, B=5)


def random_params(arch, d, n, rng):
    """Random parameters in float64 for the self-test (shapes of the spec)."""
    p = {"W_dec": rng.standard_normal((n, d)) / np.sqrt(d), "b_dec": rng.standard_normal(d) * 0.1}
    if arch != "matching_pursuit":
        p["W_enc"] = rng.standard_normal((d, n)) / np.sqrt(d)
    if arch == "matching_pursuit":
        p["W_dec"] /= np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
    elif arch == "gated":
        p.update(b_gate=rng.standard_normal(n) * 0.1, b_mag=rng.standard_normal(n) * 0.1,
                 r_mag=rng.standard_normal(n) * 0.1)
    elif arch != "top_afa":
        p["b_enc"] = rng.standard_normal(n) * 0.1
    if arch in ("jump_relu", "batch_topk"):
        p["threshold"] = np.abs(rng.standard_normal(n)) * 0.1
    if arch in ("topk_auxk", "options"):
        # Some dead, some alive (dead_after is 1e7 and 1000).
        p["since_fired"] = np.where(rng.random(n) < 0.4, 2e7, rng.integers(0, 900, n)).astype(np.float64)
    if arch == "feature_choice":
        p["frequency"] = rng.random(n) * 0.5
    return p


def selftest_arch(arch, rng, report):
    d, n, k, B = TINY_SIZE["d"], TINY_SIZE["n"], TINY_SIZE["k"], TINY_SIZE["B"]
    if arch == "group_max":
        k = 4  # k must divide n
    h = {"k": k}
    p = random_params(arch, d, n, rng)
    x = rng.standard_normal((B, d))
    xs = [x] + ([rng.standard_normal((B, d))] if arch == "grad_topk" else [])

    # 1. The forward loss against saeref.py's NumPy forward (float64).
    with contextlib.redirect_stdout(io.StringIO()):
        ref = saeref.MODELS[arch]({a: b.copy() for a, b in p.items()}, x.copy(), h, *xs[1:])
    tp = {a: torch.tensor(b, requires_grad=not is_state(arch, a)) for a, b in p.items()}
    txs = [torch.tensor(v) for v in xs]
    sparsity = 0.7
    z, xhat, terms, _, base = forward(arch, tp, txs, h, 1.0)
    loss_err = abs(float(sum(v for _, v in terms)) - ref["loss"]) / max(abs(ref["loss"]), TINY)
    xhat_err = np.abs(xhat.detach().numpy() - ref["xhat"]).max() / np.abs(ref["xhat"]).max()
    if loss_err > 1e-12 or xhat_err > 1e-12:
        fail("%s: forward differs from saeref.py: loss rel %.3g, xhat rel %.3g" % (arch, loss_err, xhat_err))

    # 2. Autograd against central differences of the same function (stopgrad
    #    values frozen, choices fixed), with the sparsity factor.
    _, _, _, total, base = forward(arch, tp, txs, h, sparsity)
    total.backward()
    fd_worst, skipped, checked = 0.0, 0, 0
    eps = 1e-6
    with torch.no_grad():
        for name, t in tp.items():
            if is_state(arch, name) or (arch == "jump_relu" and name == "threshold"):
                continue  # state; the STE is checked below
            ag = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
            fd = np.zeros(t.shape)
            flat = t.view(-1)
            ok = np.ones(t.shape, bool).reshape(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                vals = []
                for sgn in (1, -1):
                    flat[i] = old + sgn * eps
                    ctx = Ctx(replay=base)
                    vals.append(float(forward(arch, tp, txs, h, sparsity, ctx)[3]))
                    ok[i] &= same_choices(ctx, base)
                flat[i] = old
                fd.reshape(-1)[i] = (vals[0] - vals[1]) / (2 * eps)
            ok = ok.reshape(t.shape)
            skipped += int((~ok).sum())
            checked += int(ok.sum())
            scale = max(np.abs(ag).max(), 1e-8)
            err = np.abs(np.where(ok, fd - ag, 0)).max() / scale
            fd_worst = max(fd_worst, err)
            if err > 1e-6:
                fail("%s: gradient of %s differs from finite differences by %.3g (relative)" % (arch, name, err))
    line = "%-16s forward vs saeref: loss %.1e xhat %.1e; autograd vs finite differences: %.1e (%d entries, %d skipped at a choice boundary)" % (
        arch, loss_err, xhat_err, fd_worst, checked, skipped)
    if arch == "jump_relu":
        line += "; " + selftest_ste(rng)
    report.append(line)
    print(line)


def selftest_ste(rng):
    """jump_relu's threshold gradient against the STE formulas in NumPy, with
    thresholds placed inside the bandwidth window of some pre-activations."""
    d, n, B = TINY_SIZE["d"], TINY_SIZE["n"], TINY_SIZE["B"]
    p = random_params("jump_relu", d, n, rng)
    x = rng.standard_normal((B, d))
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    rows = rng.integers(0, B, n)
    p["threshold"] = pre[rows, np.arange(n)] + rng.uniform(-0.4, 0.4, n) * BANDWIDTH
    tp = {a: torch.tensor(b, requires_grad=True) for a, b in p.items()}
    sparsity = 0.7
    forward("jump_relu", tp, [torch.tensor(x)], {}, sparsity)[3].backward()
    theta = p["threshold"]
    z = pre * (pre > theta)
    xhat = z @ p["W_dec"] + p["b_dec"]
    dz = 2 * (xhat - x) @ p["W_dec"].T / B           # ∂ mse / ∂z
    win = (np.abs((pre - theta) / BANDWIDTH) < 0.5).astype(np.float64)
    want = (dz * -(theta / BANDWIDTH) * win).sum(0) \
        + sparsity * 0.001 / B * (-(1 / BANDWIDTH) * win).sum(0)
    got = tp["threshold"].grad.numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    if err > 1e-12 or win.sum() < n:
        fail("jump_relu: threshold STE gradient differs from the formula by %.3g" % err)
    # The input side of l0 has no gradient: the pre-activation gradient is
    # that of the reconstruction alone.
    return "threshold STE vs formula %.1e (%d entries in the window)" % (err, int(win.sum()))


def selftest_mechanics(rng):
    """One step of projection, clipping, torch Adam and renormalisation
    against abi.h's formulas written out in NumPy (float64)."""
    d, n, B, k = 8, 32, 6, 4
    p = random_params("topk", d, n, rng)
    p["W_dec"] /= np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
    p["W_dec"][3] = 0  # a zero row of a latent that never fires stays zero
    p["b_enc"][3] = -100.0
    x = rng.standard_normal((B, d))
    o = argparse.Namespace(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, clip=0.05, unit_norm="W_dec")
    t = Trainer("topk", p, {"k": k}, o, torch.float64)
    t.gradient([x], 1.0)
    g = {a: t.p[a].grad.numpy().copy() for a in t.trainable}
    for a in t.trainable:
        t.p[a].grad = None
    t.step([x], 1.0)
    w = p["W_dec"]
    g["W_dec"] -= (g["W_dec"] * w).sum(1, keepdims=True) * w
    norm = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    coef = o.clip / (norm + 1e-6)
    worst = 0.0
    for a in t.trainable:
        gg = g[a] * min(coef, 1.0)
        m = (1 - o.beta1) * gg
        v = (1 - o.beta2) * gg * gg
        new = p[a] - o.lr / (1 - o.beta1) * m / (np.sqrt(v) / np.sqrt(1 - o.beta2) + o.eps)
        if a == "W_dec":
            nn = np.linalg.norm(new, axis=1, keepdims=True)
            new = new / np.where(nn > 0, nn, 1)
        mom = t.moments()
        for got, want, what in ((t.p[a].detach().numpy(), new, a), (mom[a + ".exp_avg"], m, a + ".exp_avg"),
                                (mom[a + ".exp_avg_sq"], v, a + ".exp_avg_sq")):
            err = np.abs(got - want).max() / max(np.abs(want).max(), TINY)
            worst = max(worst, err)
            if err > 1e-12:
                fail("step mechanics: %s differs from the NumPy formula by %.3g" % (what, err))
    if coef >= 1:
        fail("step mechanics: the self-test meant to clip (norm %.3g)" % norm)
    if np.any(t.p["W_dec"].detach().numpy()[3] != 0):
        fail("step mechanics: a zero decoder row did not stay zero")
    return "step mechanics (projection, clip coef %.3f, Adam, renormalisation) vs NumPy: %.1e" % (coef, worst)


def cmd_selftest(args):
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(args.seed)
    report = []
    for arch in args.archs or list(ARCHS):
        if arch not in ARCHS:
            fail("unknown ARCH %s (one of %s)" % (arch, ", ".join(ARCHS)))
        selftest_arch(arch, rng, report)
    print(selftest_mechanics(rng))
    print("selftest passed: %d architectures" % len(report))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(sp, batch):
        sp.add_argument("arch", choices=sorted(ARCHS))
        sp.add_argument("ckpt")
        sp.add_argument("x")
        if batch:
            sp.add_argument("batch", type=int)
        sp.add_argument("out")
        sp.add_argument("--grad", help="second input (grad_topk), rows as X")
        sp.add_argument("--k", type=int, help="k when CKPT/cfg.json has none")
        sp.add_argument("--sparsity", type=float, default=1.0, help="factor on the terms after the first")
        sp.add_argument("--rtol", type=float, default=1e-4)

    for name in ("check-step", "run-step"):
        sp = sub.add_parser(name)
        common(sp, True)
        # Unset options come from OUT/trainer_state.json where it records
        # them (check-step), else from DEFAULTS.
        sp.add_argument("--steps", type=int, default=1)
        sp.add_argument("--lr", type=float)
        sp.add_argument("--beta1", type=float)
        sp.add_argument("--beta2", type=float)
        sp.add_argument("--eps", type=float)
        sp.add_argument("--clip", type=float)
        sp.add_argument("--unit-norm", dest="unit_norm")
        sp.add_argument("--lr-warmup", dest="lr_warmup", type=int)
        sp.add_argument("--lr-decay", dest="lr_decay", choices=("none", "linear", "cosine"))
        sp.add_argument("--sparsity-warmup", dest="sparsity_warmup", type=int)
        sp.add_argument("--no-state", action="store_true", help="do not compare since_fired")
        if name == "run-step":
            sp.add_argument("--double", action="store_true", help="compute in float64")
            sp.add_argument("--permute", type=int, help="shuffle dims and rows with this seed")
        else:
            sp.add_argument("--noise-allowance", dest="noise_allowance", type=float, default=0.0,
                            help="allow, per entry, what gradient errors of this many times the "
                                 "measured float32 rounding error can do through Adam (e.g. 10)")
    for name in ("grad", "check-grad"):
        sp = sub.add_parser(name)
        common(sp, False)
        sp.set_defaults(lr=0.0, beta1=0.9, beta2=0.999, eps=1e-8, clip=0.0, unit_norm=None)
    sp = sub.add_parser("selftest")
    sp.add_argument("archs", nargs="*")
    sp.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd in ("check-step", "run-step"):
        resolve_hyper(args)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    {"check-step": cmd_check_step, "run-step": cmd_run_step, "grad": cmd_grad,
     "check-grad": cmd_check_grad, "selftest": cmd_selftest}[args.cmd](args)


if __name__ == "__main__":
    main()
