"""PyTorch reference: does a TopK or GBA SAE recover a known dictionary?

Trains the TopK SAE of examples/topk.sae (FVU loss, decoder unit-norm rule,
Adam; the model and loop of bench/train_fmnist_torch.py) on synthetic data
X.npy written by `sae synth --out X.npy --dict TRUE.npy`, then reports how
well the learned decoder rows recover the true dictionary TRUE.npy [F, d]
(one feature per row), with the definition of `sae eval --true-dict`
(runtime/src/common/match.cpp):
  C[f][i] = |cos(TRUE[f], W_dec[i])| in double precision (0 where a norm is
  0, at most 1); mean_max_cos = mean over f of max over i of C[f][i].
Also prints the fraction of features with max |cos| above 0.9, the FVU and
L0 on all of X (sums in double), and the training throughput.

--arch gba trains examples/gba.sae instead: pre = (x − b_dec)·W_enc + b_enc,
z = relu(pre), x̂ = z·W_dec + b_dec, loss = mse (mean over rows of Σ_d), the
same initialisation and unit-norm rule; b_enc is not trained by gradient but
moved by Group Bias Adaptation (Chen et al. 2025), written here from the
rule's statement in SaeOps.td (sae.bias_adapt), independently of the
compiled code: per latent, count the rows with pre > 0 and the largest pre;
once at least --every rows are in, latents in --groups contiguous groups
with target frequencies falling geometrically from --p-max to --p-min
lower b_i by γ·(largest pre) (down to −1) when they fire more often than
their target, and raise it by γ·(the group's mean positive largest pre) (up
to 0) when they never fired; then the counts restart.

Usage:
  sae synth --d 64 --features 256 --active 4 --rows 65536 --out X.npy --dict TRUE.npy
  /usr/bin/python3 bench/synth_recovery_torch.py --data X.npy --true TRUE.npy
      [--n 512] [--k 4] [--steps 3000] [--batch 256] [--lr 1e-3]
      [--beta1 0.9] [--beta2 0.999] [--eps 6.25e-10] [--threads 1]
      [--seed 0] [--style dense|sparse] [--json OUT.json]
      [--arch topk|gba [--every 25600] [--groups 10] [--p-max 0.1]
       [--p-min 0.001] [--gamma 0.01]]
      [--save CKPT --cfg-from INIT_CKPT]
To cross-check with the runtime's definition (saec -D d=64 -D n=512 -D k=4,
sae init --out INIT_CKPT, then this script with --save CKPT --cfg-from
INIT_CKPT): sae eval LIB --checkpoint CKPT --data X.npy --true-dict TRUE.npy
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchblas import require_openblas  # noqa: E402
from train_fmnist_torch import TopKSAE, evaluate_fvu, save_checkpoint, train  # noqa: E402


class GBASAE(TopKSAE):
    """examples/gba.sae: a ReLU SAE whose b_enc follows Group Bias Adaptation
    (a buffer, no gradient) and whose loss is the mean squared error."""

    def __init__(self, d, n, generator, every, groups, p_max, p_min, gamma):
        super().__init__(d, n, 0, generator)
        b = self.b_enc.detach().clone()
        del self.b_enc
        self.register_buffer("b_enc", b)
        group = torch.arange(n, dtype=torch.float64) * groups // n
        self.group = group.long()
        self.target = p_max * torch.exp(group * (np.log(p_min / p_max) / max(groups - 1, 1)))
        self.groups, self.every, self.gamma = groups, every, gamma
        self.fired = torch.zeros(n, dtype=torch.float64)
        self.largest = torch.zeros(n, dtype=torch.float64)
        self.seen = 0

    def forward(self, x, style="dense"):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.training:
            self.observe(pre.detach())
        return torch.relu(pre) @ self.W_dec + self.b_dec

    @torch.no_grad()
    def observe(self, pre):
        """Accumulates the batch's statistics (computed with the bias before
        any update) and applies the rule once `every` rows are in."""
        self.fired += (pre > 0).sum(0).double()
        self.largest = torch.maximum(self.largest, pre.max(0).values.double())
        self.seen += pre.shape[0]
        if self.seen < self.every:
            return
        freq = self.fired / self.seen
        positive = self.largest > 0
        pos_max = torch.where(positive, self.largest, torch.zeros_like(self.largest))
        gsum = torch.zeros(self.groups, dtype=torch.float64).index_add_(0, self.group, pos_max)
        gnum = torch.zeros(self.groups, dtype=torch.float64).index_add_(0, self.group, positive.double())
        mean_max = (gsum / gnum.clamp_min(1))[self.group]
        b = self.b_enc.double()
        down = torch.clamp(b - self.gamma * self.largest.clamp_min(0), min=-1)
        up = torch.clamp(b + self.gamma * mean_max, max=0)
        b = torch.where(freq > self.target, down, torch.where(freq < 1e-6, up, b))
        self.b_enc.copy_(b.float())
        self.fired.zero_()
        self.largest.zero_()
        self.seen = 0


def mse(xhat, x):
    return ((xhat - x) ** 2).sum(1).mean()


@torch.no_grad()
def evaluate_l0(model, data, chunk=4096):
    """Mean number of active latents per row over all rows."""
    model.eval()
    active = 0
    for i in range(0, len(data), chunk):
        x = torch.from_numpy(data[i:i + chunk])
        if isinstance(model, GBASAE):
            active += int(((x - model.b_dec) @ model.W_enc + model.b_enc > 0).sum())
        else:
            active += int((model.encode(x)[0] > 0).sum())
    return active / len(data)


def mean_max_cos(truth, learned):
    """match.cpp's mean_max_cos, and the max |cos| of every true feature."""
    t = truth.astype(np.float64)
    w = learned.astype(np.float64)
    tn = np.linalg.norm(t, axis=1)
    wn = np.linalg.norm(w, axis=1)
    norms = tn[:, None] * wn[None, :]
    cos = np.where(norms > 0, np.abs(t @ w.T) / np.where(norms > 0, norms, 1), 0.0)
    best = np.minimum(cos, 1.0).max(1)
    return best.mean(), best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="X.npy from sae synth")
    ap.add_argument("--true", required=True, help="TRUE.npy [F, d] from sae synth --dict")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=6.25e-10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (more than the idle cores makes OpenMP crawl)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--style", choices=("dense", "sparse"), default="dense")
    ap.add_argument("--arch", choices=("topk", "gba"), default="topk")
    ap.add_argument("--every", type=int, default=25600, help="gba: rows between bias updates")
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--p-max", type=float, default=0.1)
    ap.add_argument("--p-min", type=float, default=0.001)
    ap.add_argument("--gamma", type=float, default=0.01)
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--save", help="write the trained weights to this checkpoint folder")
    ap.add_argument("--cfg-from", help="a `sae init` checkpoint whose cfg.json --save copies")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    require_openblas()

    x = np.ascontiguousarray(np.load(args.data), dtype=np.float32)
    truth = np.load(args.true).astype(np.float32)
    if truth.ndim != 2 or truth.shape[1] != x.shape[1]:
        sys.exit("TRUE.npy has shape %s, X rows have %d columns" % (truth.shape, x.shape[1]))
    gen = torch.Generator().manual_seed(args.seed)
    if args.arch == "gba":
        model = GBASAE(x.shape[1], args.n, gen, args.every, args.groups, args.p_max, args.p_min,
                       args.gamma)
    else:
        model = TopKSAE(x.shape[1], args.n, args.k, gen)
    before, _ = mean_max_cos(truth, model.W_dec.detach().numpy())
    model.train()
    wall = train(model, x, args.steps, args.batch, args.lr, (args.beta1, args.beta2),
                 args.eps, args.seed, args.style, args.log_every,
                 loss_fn=mse if args.arch == "gba" else None)
    model.eval()
    mmc, best = mean_max_cos(truth, model.W_dec.detach().numpy())
    result = {"rows": len(x), "d": x.shape[1], "features": len(truth), "n": args.n, "k": args.k,
              "arch": args.arch, "l0": evaluate_l0(model, x),
              "steps": args.steps, "batch": args.batch, "lr": args.lr, "style": args.style,
              "mean_max_cos_init": before, "mean_max_cos": mmc,
              "recovered_0.9": float((best > 0.9).mean()), "fvu": float(evaluate_fvu(model, x)),
              "tokens_per_s": args.steps * args.batch / wall, "wall_s": wall}
    print("torch %s %s: %d steps of %d rows: mean max |cos| %.4f (%.4f at init), %.1f%% of %d "
          "features above 0.9, fvu %.4f, L0 %.1f, %.0f tokens/s, wall %.2f s"
          % (args.arch, args.style, args.steps, args.batch, mmc, before, 100 * result["recovered_0.9"],
             len(truth), result["fvu"], result["l0"], result["tokens_per_s"], wall))
    if args.json:
        json.dump(result, open(args.json, "w"), indent=1)
    if args.save:
        save_checkpoint(model, args.save, args.cfg_from)


if __name__ == "__main__":
    main()
