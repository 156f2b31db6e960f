"""PyTorch peer baseline for saec's CPU training-step benchmark.

Times one sparse-autoencoder training step (forward, loss, backward, Adam,
decoder unit-norm rule) and, optionally, the encode (inference) pass, in three
PyTorch implementation styles, and reports peak memory. Meant to be run as a
child process, one process per measurement (so the RSS numbers belong to that
measurement); the last line of stdout is one JSON object.

Models (the math of saec's examples/*.sae; float32; W_enc [d, n] kaiming-
uniform in [-sqrt(6/d), sqrt(6/d)), W_dec [n, d] = rows of W_encᵀ at unit
norm, b_enc [n] = 0, b_dec [d] = 0):

  pre = (x - b_dec) @ W_enc + b_enc                                  [B, n]
  topk        z = topk(relu(pre), k) per row;  loss = fvu(xhat, x)
  batch_topk  z keeps the B·k largest entries of relu(pre) over the batch;
              loss = fvu(xhat, x); state threshold θ [n]:
              θ_i = 0.999·θ_i + 0.001·m (m if θ_i <= 0), m = the smallest
              positive value the batch kept. Inference: z = a·H(a - θ).
  jump_relu   z = pre·H(pre - θ), θ [n] a parameter (init 0.001);
              loss = mse(xhat, x) + 0.001·l0, l0 = mean_b Σ_i H(pre - θ);
              straight-through gradients with a rectangle kernel of
              bandwidth ε = 0.001 (Gemma Scope / SAELens):
              ∂z/∂pre = H(pre - θ), ∂z/∂θ = -(θ/ε)·K((pre - θ)/ε),
              ∂l0/∂pre = 0,         ∂l0/∂θ = -(1/ε)·K((pre - θ)/ε),
              K(u) = 1 if |u| < 1/2 else 0.
  relu_l1     z = relu(pre); loss = mse(xhat, x) + 5·l1,
              l1 = mean_b Σ_i |z_i|·‖W_dec[i]‖. No unit-norm rule.
  xhat = z @ W_dec + b_dec
  fvu(xhat, x) = Σ_b ‖xhat - x‖² / Σ_b ‖x - mean_b x‖²
  mse(xhat, x) = mean_b Σ_j (xhat - x)²
  --aux (AuxK, Gao et al.; any arch): a random --dead-fraction of the latents
      is marked dead once (since_fired = 1e7, others 0) and kept dead for the
      whole run: the counter is NOT updated, so every timed step does the
      same work. With D the dead set, a = relu(pre) with non-dead latents at
      -inf, take per row the top min(512, |D|) values of a, decode
      e = Σ values·W_dec[idx] (no b_dec), r = stopgrad(x - xhat):
      aux = min(|D|/512, 1)·Σ_b ‖e - r‖² / Σ_b ‖r - mean_b r‖²,
      added to the loss with weight 1/32.
  Step: gradients; for topk/batch_topk (unit_norm = W_dec in their
  examples; jump_relu and relu_l1 declare none) each W_dec row's gradient
  is projected onto the row's orthogonal complement (g -= (g·w) w) before
  Adam and the rows are renormalised after it. Adam: lr 2e-4, betas
  (0.9, 0.999), eps 6.25e-10 (torch.optim.Adam for dense/sparse).

Styles:
  dense   autograd; codes materialised dense [B, n] (scatter into zeros),
          decoded with a dense [B, n] @ [n, d] product (SAELens,
          dictionary_learning).
  sparse  autograd; decode gathers rows with F.embedding_bag(indices, W_dec,
          per_sample_weights=values, mode='sum') (EleutherAI sparsify's
          fallback). topk: [B, k] indices; batch_topk / jump_relu / relu_l1:
          the nonzero entries of each row, flattened with offsets (for
          relu_l1 and jump_relu that is whatever the ReLU / threshold
          leaves, not a fixed k; jump_relu's training decode also carries
          the zero codes with θ - ε/2 < pre <= θ, whose dL/dz the
          estimator's ∂L/∂θ needs). The AuxK decode also uses embedding_bag.
  manual  topk without --aux only: no autograd; every workspace allocated
          once; hand-written gradients exploiting k-sparsity (gathered
          decoder rows, index_add_ scatters for dW_dec, dW_enc, db_enc;
          db_dec = Σ_b g_b - W_enc @ db_enc); W_enc is stored transposed
          [n, d] so its gradient and Adam state are row-contiguous; the
          unit-norm projection, Adam and row renormalisation are fused per
          chunk of 1024 rows with in-place ops.

Encode pass (--encode): the codes for one batch under torch.no_grad, median
of 10 repetitions after 2 warm-ups. dense: the dense [B, n] codes (as
SAELens' encode); sparse: (values, indices) ([B, k] for topk, flattened with
offsets otherwise); manual: topk into preallocated (values, indices).
batch_topk encodes with its threshold θ; if no training step ran, θ is first
set from one batch's selection (untimed).

Usage:
  /usr/bin/python3 bench/torch_step.py --arch topk|batch_topk|jump_relu|relu_l1
      --style dense|sparse|manual [--d 768] [--n 16384] [--k 32]
      [--batch 1024] [--steps 10] [--warmup 2] [--threads N] [--aux]
      [--dead-fraction 0.1] [--encode] [--check]
  Data: 4 batches x [B, d] ~ N(0, 1) float32 (seed 0), used round-robin.
  --steps 0 skips the step timing (step keys null; use with --encode and
  --warmup 0 for an encode-only memory figure). Warm-up steps are untimed.
  --check runs the correctness check instead (float64, d=64, n=512, k=8,
  B=128): first-step gradients and the parameters after 3 steps of
  manual vs dense (topk) and sparse vs dense (every arch, with and without
  --aux), max |a - b| / max |b| < 1e-6 per tensor; prints a line per
  comparison and "check ok"; exit 0 on success, 1 on failure.
  Invalid flag combinations: a message on stderr and exit status 2.

Output (last stdout line, JSON): arch, style, d, n, k, batch, threads, aux,
dead_fraction, n_dead, decode, steps, warmup, step_ms (median over timed
steps), step_ms_min, tokens_per_s (batch / median step seconds),
encode_ms (only with --encode), rss_base_mb (ru_maxrss after imports and
data creation, before the model), rss_peak_mb (ru_maxrss at the end).
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchblas import require_openblas  # noqa: E402

ARCHS = ("topk", "batch_topk", "jump_relu", "relu_l1")
STYLES = ("dense", "sparse", "manual")
UNIT_NORM_ARCHS = ("topk", "batch_topk")  # as the examples declare (unit_norm = W_dec)
LR, BETA1, BETA2, ADAM_EPS = 2e-4, 0.9, 0.999, 6.25e-10
JUMP_BANDWIDTH = 1e-3   # ε of the straight-through estimator
THRESHOLD_INIT = 1e-3   # jump_relu's θ
L0_COEF = 1e-3
L1_COEF = 5.0
AUX_COEF = 1.0 / 32
K_AUX = 512
DEAD_SINCE = 1e7        # since_fired of a dead latent (dead_after = 1e7 tokens)
EMA = 0.999             # batch_topk threshold decay
CHUNK_ROWS = 1024       # manual Adam chunk
N_BATCHES = 4


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------
# Model state shared by all styles
# --------------------------------------------------------------------------

def init_params(arch, d, n, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    bound = math.sqrt(6.0 / d)
    w_enc = (torch.rand(d, n, generator=g, dtype=dtype) * 2 - 1) * bound
    w_dec = w_enc.t().contiguous()
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": w_enc, "W_dec": w_dec,
         "b_enc": torch.zeros(n, dtype=dtype), "b_dec": torch.zeros(d, dtype=dtype)}
    if arch == "jump_relu":
        p["threshold"] = torch.full((n,), THRESHOLD_INIT, dtype=dtype)
    return p


def init_state(arch, n, aux, dead_fraction, dtype, seed=2):
    """Non-parameter training state: batch_topk's threshold, AuxK's dead set."""
    s = {}
    if arch == "batch_topk":
        s["threshold"] = torch.zeros(n, dtype=dtype)
    if aux:
        g = torch.Generator().manual_seed(seed)
        n_dead = max(1, int(round(dead_fraction * n)))
        since_fired = torch.zeros(n, dtype=dtype)
        since_fired[torch.randperm(n, generator=g)[:n_dead]] = DEAD_SINCE
        s["dead"] = since_fired >= DEAD_SINCE  # frozen: not updated while timing
        s["n_dead"] = n_dead
    return s


def update_batch_threshold(theta, kept_vals):
    """θ_i = 0.999 θ_i + 0.001 m (m where θ_i <= 0), m = min positive kept value."""
    pos = kept_vals[kept_vals > 0]
    if pos.numel() == 0:
        return
    m = pos.min()
    theta.copy_(torch.where(theta <= 0, m, EMA * theta + (1 - EMA) * m))


# --------------------------------------------------------------------------
# Losses and straight-through functions
# --------------------------------------------------------------------------

def fvu(xhat, x):
    return ((xhat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def mse(xhat, x):
    return ((xhat - x) ** 2).sum() / x.shape[0]


def _rect(pre, theta):
    """K((pre - θ)/ε): 1 where |pre - θ| < ε/2."""
    return ((pre - theta).abs() < JUMP_BANDWIDTH / 2).to(pre.dtype)


class JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        dpre = grad * (pre > theta).to(pre.dtype)
        dtheta = -(theta / JUMP_BANDWIDTH) * (grad * _rect(pre, theta)).sum(0)
        return dpre, dtheta


class Step(torch.autograd.Function):
    """H(pre - θ) with ∂/∂pre = 0 and ∂/∂θ = -(1/ε) K((pre - θ)/ε)."""
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        dtheta = -(1.0 / JUMP_BANDWIDTH) * (grad * _rect(pre, theta)).sum(0)
        return None, dtheta


# --------------------------------------------------------------------------
# Codes: dense [B, n] or sparse (values, column indices, row offsets)
# --------------------------------------------------------------------------

class Codes:
    """Either z (dense [B, n]) or vals/cols (+ offsets when cols is flat)."""

    def __init__(self, z=None, vals=None, cols=None, offsets=None):
        self.z, self.vals, self.cols, self.offsets = z, vals, cols, offsets

    def decode(self, w_dec):
        if self.z is not None:
            return self.z @ w_dec
        return F.embedding_bag(self.cols, w_dec, self.offsets, mode="sum",
                               per_sample_weights=self.vals)

    def weighted_abs_sum(self, row_weights):
        """Σ_b Σ_i |z_bi| · row_weights_i."""
        if self.z is not None:
            return (self.z.abs() @ row_weights).sum()
        return (self.vals.abs() * row_weights[self.cols]).sum()


def offsets_from_counts(counts):
    off = torch.zeros_like(counts)
    off[1:] = counts.cumsum(0)[:-1]
    return off


def nonzero_codes(z, mask=None):
    """Flatten the entries of z under mask (default: the nonzero ones) per row,
    row-major, with offsets."""
    if mask is None:
        mask = z != 0
    cols = mask.nonzero()[:, 1]
    return Codes(vals=z[mask], cols=cols, offsets=offsets_from_counts(mask.sum(1)))


def row_topk_codes(a, k, dense):
    vals, idx = a.topk(k, dim=1, sorted=False)
    if dense:
        return Codes(z=torch.zeros_like(a).scatter(1, idx, vals), vals=vals)
    return Codes(vals=vals, cols=idx)


def batch_topk_codes(a, k, dense):
    b, n = a.shape
    vals, flat = a.flatten().topk(b * k, sorted=False)
    if dense:
        z = torch.zeros_like(a).flatten().scatter(0, flat, vals).view(b, n)
        return Codes(z=z, vals=vals)
    flat, perm = flat.sort()          # row-major order for embedding_bag
    rows = torch.div(flat, n, rounding_mode="floor")
    return Codes(vals=vals[perm], cols=flat - rows * n,
                 offsets=offsets_from_counts(torch.bincount(rows, minlength=b)))


def select(arch, pre, p, state, k, dense, training):
    """The codes of one batch; relu(pre) is returned too (AuxK uses it)."""
    if arch == "jump_relu":
        theta = p["threshold"]
        z = JumpReLU.apply(pre, theta)
        if dense:
            return Codes(z=z), None
        if not training:
            return nonzero_codes(z), None
        # Training also needs the zero codes inside the estimator's window
        # (θ - ε/2 < pre <= θ): their dL/dz feeds ∂L/∂θ.
        return nonzero_codes(z, pre.detach() > theta.detach() - JUMP_BANDWIDTH / 2), None
    a = torch.relu(pre)
    if arch == "topk":
        return row_topk_codes(a, k, dense), a
    if arch == "batch_topk":
        if training:
            return batch_topk_codes(a, k, dense), a
        z = a * (a > state["threshold"]).to(a.dtype)
        return (Codes(z=z) if dense else nonzero_codes(z)), a
    return (Codes(z=a) if dense else nonzero_codes(a)), a  # relu_l1


def aux_k_loss(a, x, xhat, w_dec, state, dense):
    n_dead = state["n_dead"]
    masked = torch.where(state["dead"], a, torch.full_like(a[:1], -math.inf))
    codes = row_topk_codes(masked, min(K_AUX, n_dead), dense)
    e = codes.decode(w_dec)
    r = (x - xhat).detach()
    return min(n_dead / K_AUX, 1.0) * fvu(e, r)


def autograd_loss(arch, p, state, x, k, dense):
    pre = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc"])
    codes, a = select(arch, pre, p, state, k, dense, training=True)
    xhat = codes.decode(p["W_dec"]) + p["b_dec"]
    if arch in ("topk", "batch_topk"):
        loss = fvu(xhat, x)
    elif arch == "jump_relu":
        l0 = Step.apply(pre, p["threshold"]).sum() / x.shape[0]
        loss = mse(xhat, x) + L0_COEF * l0
    else:
        l1 = codes.weighted_abs_sum(p["W_dec"].norm(dim=1)) / x.shape[0]
        loss = mse(xhat, x) + L1_COEF * l1
    if "dead" in state:
        if a is None:
            a = torch.relu(pre)
        loss = loss + AUX_COEF * aux_k_loss(a, x, xhat, p["W_dec"], state, dense)
    return loss, codes


# --------------------------------------------------------------------------
# Styles dense and sparse: autograd + torch.optim.Adam
# --------------------------------------------------------------------------

class AutogradTrainer:
    def __init__(self, arch, params, state, k, dense):
        self.arch, self.state, self.k, self.dense = arch, state, k, dense
        self.p = {name: t.clone().requires_grad_(True) for name, t in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=LR,
                                    betas=(BETA1, BETA2), eps=ADAM_EPS)
        self.unit_norm = arch in UNIT_NORM_ARCHS
        self._kept = None

    def backward(self, x):
        self.opt.zero_grad(set_to_none=True)
        loss, codes = autograd_loss(self.arch, self.p, self.state, x, self.k, self.dense)
        loss.backward()
        self._kept = codes.vals.detach() if self.arch == "batch_topk" else None

    def update(self):
        w = self.p["W_dec"]
        with torch.no_grad():
            if self.unit_norm:
                g = w.grad
                g.sub_((g * w).sum(1, keepdim=True) * w)
            self.opt.step()
            if self.unit_norm:
                w.div_(w.norm(dim=1, keepdim=True))
            if self._kept is not None:
                update_batch_threshold(self.state["threshold"], self._kept)

    def step(self, x):
        self.backward(x)
        self.update()

    def grads(self):
        return {name: t.grad for name, t in self.p.items()}

    def params(self):
        out = {name: t.detach() for name, t in self.p.items()}
        if "threshold" in self.state:
            out["state.threshold"] = self.state["threshold"]
        return out

    def calibrate(self, x):
        """Give batch_topk's inference threshold a value if no step set it."""
        if self.arch == "batch_topk" and not (self.state["threshold"] > 0).any():
            with torch.no_grad():
                pre = torch.addmm(self.p["b_enc"], x - self.p["b_dec"], self.p["W_enc"])
                codes = batch_topk_codes(torch.relu(pre), self.k, dense=True)
                update_batch_threshold(self.state["threshold"], codes.vals)

    def encode(self, x):
        with torch.no_grad():
            pre = torch.addmm(self.p["b_enc"], x - self.p["b_dec"], self.p["W_enc"])
            codes, _ = select(self.arch, pre, self.p, self.state, self.k,
                              self.dense, training=False)
            return codes


# --------------------------------------------------------------------------
# Style manual: topk, hand-written gradients and Adam, no autograd
# --------------------------------------------------------------------------

def adam_(p, g, m, v, tmp, step_size, bc2_sqrt):
    """torch.optim.Adam's update, in place, tmp a workspace shaped like p."""
    m.mul_(BETA1).add_(g, alpha=1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    torch.sqrt(v, out=tmp)
    tmp.div_(bc2_sqrt).add_(ADAM_EPS)
    p.addcdiv_(m, tmp, value=-step_size)


class ManualTopKTrainer:
    def __init__(self, params, k, batch, chunk=CHUNK_ROWS):
        d, n = params["W_enc"].shape
        dt = params["W_enc"].dtype
        self.d, self.n, self.k, self.B, self.chunk = d, n, k, batch, min(chunk, n)
        self.W_encT = params["W_enc"].t().contiguous()       # [n, d]
        self.W_dec = params["W_dec"].clone()
        self.b_enc = params["b_enc"].clone()
        self.b_dec = params["b_dec"].clone()
        e = lambda *s: torch.empty(*s, dtype=dt)
        # forward / backward workspaces
        self.xc, self.xhat, self.g = e(batch, d), e(batch, d), e(batch, d)
        self.pre = e(batch, n)
        self.vals, self.dvals = e(batch, k), e(batch, k)
        self.idx = torch.empty(batch, k, dtype=torch.long)
        self.rows = e(batch * k, d)  # gathered decoder rows, then outer products
        # gradients (W_enc's transposed, like its storage)
        self.gW_encT, self.gW_dec = e(n, d), e(n, d)
        self.gb_enc, self.gb_dec = e(n), e(d)
        # Adam state and workspaces
        self.adam = {name: (torch.zeros_like(t), torch.zeros_like(t))
                     for name, t in (("W_encT", self.W_encT), ("W_dec", self.W_dec),
                                     ("b_enc", self.b_enc), ("b_dec", self.b_dec))}
        self.tmp_rows, self.tmp_n, self.tmp_d = e(self.chunk, d), e(n), e(d)
        self.dots = e(self.chunk)
        self.t = 0

    def encode(self, x):
        torch.sub(x, self.b_dec, out=self.xc)
        torch.addmm(self.b_enc, self.xc, self.W_encT.t(), out=self.pre)
        self.pre.clamp_(min=0)
        torch.topk(self.pre, self.k, dim=1, sorted=False, out=(self.vals, self.idx))
        return self.vals, self.idx

    @torch.no_grad()
    def backward(self, x):
        B, k, d = self.B, self.k, self.d
        vals, idx = self.encode(x)
        flat = idx.view(-1)
        rows3 = self.rows.view(B, k, d)
        # xhat = Σ_j vals[b, j] W_dec[idx[b, j]] + b_dec
        torch.index_select(self.W_dec, 0, flat, out=self.rows)
        torch.bmm(vals.unsqueeze(1), rows3, out=self.xhat.unsqueeze(1))
        self.xhat.add_(self.b_dec)
        # g = dL/dxhat = 2 (xhat - x) / sst
        sst = (torch.var(x, 0, unbiased=False).sum() * B).item()
        torch.sub(self.xhat, x, out=self.g).mul_(2.0 / sst)
        # dvals = <g_b, W_dec[idx]> where vals > 0 (relu' = 0 elsewhere)
        torch.bmm(rows3, self.g.unsqueeze(2), out=self.dvals.unsqueeze(2))
        self.dvals.masked_fill_(vals <= 0, 0)
        # dW_dec[idx] += vals ⊗ g
        torch.mul(vals.unsqueeze(2), self.g.unsqueeze(1), out=rows3)
        self.gW_dec.zero_().index_add_(0, flat, self.rows)
        # dW_encᵀ[idx] += dvals ⊗ (x - b_dec)
        torch.mul(self.dvals.unsqueeze(2), self.xc.unsqueeze(1), out=rows3)
        self.gW_encT.zero_().index_add_(0, flat, self.rows)
        # db_enc = Σ_b dpre_b;  db_dec = Σ_b g_b - Σ_b W_enc dpre_b = Σ g - W_enc db_enc
        self.gb_enc.zero_().index_add_(0, flat, self.dvals.view(-1))
        torch.sum(self.g, 0, out=self.gb_dec)
        self.gb_dec.addmv_(self.W_encT.t(), self.gb_enc, alpha=-1)

    @torch.no_grad()
    def update(self):
        self.t += 1
        step_size = LR / (1 - BETA1 ** self.t)
        bc2_sqrt = math.sqrt(1 - BETA2 ** self.t)
        for r0 in range(0, self.n, self.chunk):
            r1 = min(r0 + self.chunk, self.n)
            tmp, dots = self.tmp_rows[: r1 - r0], self.dots[: r1 - r0]
            # decoder: project the gradient, Adam, renormalise the rows
            w, g = self.W_dec[r0:r1], self.gW_dec[r0:r1]
            m, v = (s[r0:r1] for s in self.adam["W_dec"])
            torch.bmm(g.unsqueeze(1), w.unsqueeze(2), out=dots.view(-1, 1, 1))
            g.addcmul_(dots.unsqueeze(1), w, value=-1)
            adam_(w, g, m, v, tmp, step_size, bc2_sqrt)
            torch.linalg.vector_norm(w, dim=1, out=dots)
            w.div_(dots.unsqueeze(1))
            # encoder (stored transposed)
            m, v = (s[r0:r1] for s in self.adam["W_encT"])
            adam_(self.W_encT[r0:r1], self.gW_encT[r0:r1], m, v, tmp, step_size, bc2_sqrt)
        adam_(self.b_enc, self.gb_enc, *self.adam["b_enc"], self.tmp_n, step_size, bc2_sqrt)
        adam_(self.b_dec, self.gb_dec, *self.adam["b_dec"], self.tmp_d, step_size, bc2_sqrt)

    def step(self, x):
        self.backward(x)
        self.update()

    def grads(self):
        return {"W_enc": self.gW_encT.t(), "W_dec": self.gW_dec,
                "b_enc": self.gb_enc, "b_dec": self.gb_dec}

    def params(self):
        return {"W_enc": self.W_encT.t(), "W_dec": self.W_dec,
                "b_enc": self.b_enc, "b_dec": self.b_dec}

    def calibrate(self, x):
        pass


def make_trainer(style, arch, params, state, k, batch):
    if style == "manual":
        return ManualTopKTrainer(params, k, batch)
    return AutogradTrainer(arch, params, state, k, dense=(style == "dense"))


# --------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------

def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def compare(label, ref, other, tol=1e-6, steps=3, d=64, n=512, k=8, batch=128):
    """Run ref and other trainers side by side; compare step-1 grads and params."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(steps, batch, d, generator=g, dtype=torch.float64)
    worst = 0.0
    for i in range(steps):
        for t in (ref, other):
            t.backward(data[i])
        if i == 0:
            gr, go = ref.grads(), other.grads()
            worst = max([worst] + [rel_diff(go[name], gr[name]) for name in gr])
        for t in (ref, other):
            t.update()
    pr, po = ref.params(), other.params()
    worst = max([worst] + [rel_diff(po[name], pr[name]) for name in po])
    ok = worst < tol
    print(f"{label:40s} max rel diff {worst:.3e}  {'ok' if ok else 'FAIL'}")
    return ok


def run_check():
    d, n, k, batch, dt = 64, 512, 8, 128, torch.float64
    ok = True
    p = init_params("topk", d, n, dt)
    ok &= compare("topk manual vs dense",
                  AutogradTrainer("topk", p, init_state("topk", n, False, 0.1, dt), k, True),
                  ManualTopKTrainer(p, k, batch))
    for arch in ARCHS:
        for aux in (False, True):
            p = init_params(arch, d, n, dt)
            ref = AutogradTrainer(arch, p, init_state(arch, n, aux, 0.1, dt), k, True)
            oth = AutogradTrainer(arch, p, init_state(arch, n, aux, 0.1, dt), k, False)
            ok &= compare(f"{arch}{' +aux' if aux else ''} sparse vs dense", ref, oth)
    print("check ok" if ok else "check FAILED")
    return 0 if ok else 1


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------

def fail(msg):
    sys.stderr.write(f"torch_step.py: {msg}\n")
    sys.exit(2)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=ARCHS, default="topk")
    ap.add_argument("--style", choices=STYLES, default="dense")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--aux", action="store_true")
    ap.add_argument("--dead-fraction", type=float, default=0.1)
    ap.add_argument("--encode", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.check:
        return a
    if a.style == "manual" and a.arch != "topk":
        fail("--style manual is only defined for --arch topk")
    if a.style == "manual" and a.aux:
        fail("--style manual does not implement --aux")
    if min(a.d, a.n, a.k, a.batch, a.threads) < 1:
        fail("--d, --n, --k, --batch and --threads must be positive")
    if a.k > a.n:
        fail("--k must not exceed --n")
    if a.steps < 0 or a.warmup < 0:
        fail("--steps and --warmup must be >= 0")
    if a.steps == 0 and not a.encode:
        fail("nothing to measure: --steps 0 without --encode")
    if a.aux and not 0 < a.dead_fraction <= 1:
        fail("--dead-fraction must be in (0, 1]")
    return a


def decode_kind(style):
    return {"dense": "dense", "sparse": "embedding_bag", "manual": "gather+bmm"}[style]


def main():
    a = parse_args()
    torch.set_num_threads(a.threads if not a.check else (os.cpu_count() or 1))
    if a.check:
        sys.exit(run_check())
    require_openblas()

    g = torch.Generator().manual_seed(0)
    data = torch.randn(N_BATCHES, a.batch, a.d, generator=g, dtype=torch.float32)
    rss_base = rss_mb()

    params = init_params(a.arch, a.d, a.n, torch.float32)
    state = init_state(a.arch, a.n, a.aux, a.dead_fraction, torch.float32)
    trainer = make_trainer(a.style, a.arch, params, state, a.k, a.batch)
    del params

    times = []
    for i in range(a.warmup + a.steps):
        x = data[i % N_BATCHES]
        t0 = time.perf_counter()
        trainer.step(x)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)

    out = {"arch": a.arch, "style": a.style, "d": a.d, "n": a.n, "k": a.k,
           "batch": a.batch, "threads": a.threads, "aux": a.aux,
           "dead_fraction": a.dead_fraction if a.aux else None,
           "n_dead": state.get("n_dead"), "decode": decode_kind(a.style),
           "steps": a.steps, "warmup": a.warmup,
           "step_ms": None, "step_ms_min": None, "tokens_per_s": None}
    if times:
        med = statistics.median(times)
        out.update(step_ms=med * 1e3, step_ms_min=min(times) * 1e3,
                   tokens_per_s=a.batch / med)

    if a.encode:
        x = data[0]
        trainer.calibrate(x)
        enc = []
        with torch.no_grad():
            for i in range(12):
                t0 = time.perf_counter()
                trainer.encode(x)
                if i >= 2:
                    enc.append(time.perf_counter() - t0)
        out["encode_ms"] = statistics.median(enc) * 1e3

    out["rss_base_mb"] = rss_base
    out["rss_peak_mb"] = rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
