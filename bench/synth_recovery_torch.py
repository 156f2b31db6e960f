"""PyTorch reference: does a TopK SAE recover a known dictionary?

Trains the TopK SAE of examples/topk.sae (FVU loss, decoder unit-norm rule,
Adam; the model and loop of bench/train_fmnist_torch.py) on synthetic data
X.npy written by `sae synth --out X.npy --dict TRUE.npy`, then reports how
well the learned decoder rows recover the true dictionary TRUE.npy [F, d]
(one feature per row), with the definition of `sae eval --true-dict`
(runtime/src/common/match.cpp):
  C[f][i] = |cos(TRUE[f], W_dec[i])| in double precision (0 where a norm is
  0, at most 1); mean_max_cos = mean over f of max over i of C[f][i].
Also prints the fraction of features with max |cos| above 0.9 and the FVU
on all of X (sums in double), and the training throughput.

Usage:
  sae synth --d 64 --features 256 --active 4 --rows 65536 --out X.npy --dict TRUE.npy
  /usr/bin/python3 bench/synth_recovery_torch.py --data X.npy --true TRUE.npy
      [--n 512] [--k 4] [--steps 3000] [--batch 256] [--lr 1e-3]
      [--beta1 0.9] [--beta2 0.999] [--eps 6.25e-10] [--threads 1]
      [--seed 0] [--style dense|sparse] [--json OUT.json]
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
from train_fmnist_torch import TopKSAE, evaluate_fvu, save_checkpoint, train  # noqa: E402


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
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--save", help="write the trained weights to this checkpoint folder")
    ap.add_argument("--cfg-from", help="a `sae init` checkpoint whose cfg.json --save copies")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x = np.ascontiguousarray(np.load(args.data), dtype=np.float32)
    truth = np.load(args.true).astype(np.float32)
    if truth.ndim != 2 or truth.shape[1] != x.shape[1]:
        sys.exit("TRUE.npy has shape %s, X rows have %d columns" % (truth.shape, x.shape[1]))
    model = TopKSAE(x.shape[1], args.n, args.k, torch.Generator().manual_seed(args.seed))
    before, _ = mean_max_cos(truth, model.W_dec.detach().numpy())
    wall = train(model, x, args.steps, args.batch, args.lr, (args.beta1, args.beta2),
                 args.eps, args.seed, args.style, args.log_every)
    mmc, best = mean_max_cos(truth, model.W_dec.detach().numpy())
    result = {"rows": len(x), "d": x.shape[1], "features": len(truth), "n": args.n, "k": args.k,
              "steps": args.steps, "batch": args.batch, "lr": args.lr, "style": args.style,
              "mean_max_cos_init": before, "mean_max_cos": mmc,
              "recovered_0.9": float((best > 0.9).mean()), "fvu": float(evaluate_fvu(model, x)),
              "tokens_per_s": args.steps * args.batch / wall, "wall_s": wall}
    print("torch %s: %d steps of %d rows: mean max |cos| %.4f (%.4f at init), %.1f%% of %d features "
          "above 0.9, fvu %.4f, %.0f tokens/s, wall %.2f s"
          % (args.style, args.steps, args.batch, mmc, before, 100 * result["recovered_0.9"], len(truth),
             result["fvu"], result["tokens_per_s"], wall))
    if args.json:
        json.dump(result, open(args.json, "w"), indent=1)
    if args.save:
        save_checkpoint(model, args.save, args.cfg_from)


if __name__ == "__main__":
    main()
