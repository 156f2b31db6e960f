"""PyTorch reference training run of examples/topk.sae on Fashion-MNIST.

The baseline that `sae train` is compared with: the same model (TopK SAE,
d = 784, n = 4096, k = 32, FVU loss), the same initialisation rule
(kaiming_uniform W_enc with bound sqrt(6/d), W_dec = normalize_rows(W_encᵀ),
zero biases; torch's RNG instead of the spec's splitmix64), the decoder
unit-norm rule (project each decoder row's gradient onto the row's orthogonal
complement before the step, renormalise the rows after it) and
torch.optim.Adam, on the 60k training images read as `sae` reads IDX files
(runtime/src/common/idx.cpp: every pixel byte / 255 as float32, no
normalisation). Batches are drawn without replacement from a fresh
permutation of the rows each epoch (torch.Generator seeded with --seed).

Prints the training throughput (tokens = images per second, training loop
only), the wall time, and the final FVU on the 10k test images:
  FVU = Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over all test rows, x̂ from the float32
  model, the sums accumulated in double precision (as `sae eval` does).

--style dense decodes like SAELens: scatter the top-k values into a dense
[B, n] matrix, then a dense [B, n] x [n, d] product. --style sparse decodes
by gathering the k decoder rows of each row (torch's embedding_bag with
per-sample weights), whose cost does not grow with n.

Usage:
  /usr/bin/python3 bench/train_fmnist_torch.py [--steps 2000] [--batch 256]
      [--lr 2e-4] [--beta1 0.9] [--beta2 0.999] [--eps 6.25e-10]
      [--threads 1] [--seed 0] [--style dense|sparse] [--n 4096] [--k 32]
      [--data DIR] [--json OUT.json] [--save CKPT [--cfg-from INIT_CKPT]]
--save writes the trained weights as a checkpoint (cfg.json copied from a
`sae init` checkpoint of the same model), for `sae eval --checkpoint CKPT`.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torchblas import require_openblas  # noqa: E402


def save_checkpoint(model, out, cfg_from=None):
    """OUT/sae_weights.safetensors (SAELens layout, float32, the spec's
    names) with saeref.py's writer; OUT/cfg.json copied from a `sae init`
    checkpoint when given, so that `sae eval LIB --checkpoint OUT` reads it."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "test", "Integration", "CPU", "Inputs"))
    from saeref import write_safetensors
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "sae_weights.safetensors"),
                      {k: v.detach().numpy() for k, v in model.named_parameters()})
    if cfg_from:
        with open(os.path.join(cfg_from, "cfg.json")) as src, open(os.path.join(out, "cfg.json"), "w") as dst:
            dst.write(src.read())


def read_idx_images(path):
    """An IDX file of unsigned bytes (gzip or plain) as float32 rows in
    [0, 1]: byte / 255, as runtime/src/common/idx.cpp computes it."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        sys.exit("%s: not an IDX file of unsigned bytes" % path)
    ndim = raw[3]
    dims = struct.unpack(">%dI" % ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    rows = dims[0]
    width = int(np.prod(dims[1:]))
    return data.reshape(rows, width).astype(np.float32) / np.float32(255.0)


class TopKSAE(torch.nn.Module):
    """examples/topk.sae: pre = (x − b_dec)·W_enc + b_enc,
    z = topk(relu(pre), k), x̂ = z·W_dec + b_dec."""

    def __init__(self, d, n, k, generator):
        super().__init__()
        bound = (6.0 / d) ** 0.5
        w = torch.rand(d, n, generator=generator) * (2 * bound) - bound
        self.W_enc = torch.nn.Parameter(w)
        self.W_dec = torch.nn.Parameter((w.t() / w.t().norm(dim=1, keepdim=True)).contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.k = k

    def encode(self, x):
        """Top-k of relu(pre): values [B, k], indices [B, k]. Gradient flows
        to the kept entries only."""
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        return pre.topk(self.k, dim=1, sorted=False)

    def forward(self, x, style="dense"):
        values, indices = self.encode(x)
        if style == "dense":
            z = torch.zeros(x.shape[0], self.W_dec.shape[0], dtype=x.dtype).scatter(1, indices, values)
            return z @ self.W_dec + self.b_dec
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec


def fvu(xhat, x):
    return ((xhat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def train(model, data, steps, batch, lr, betas, eps, seed, style, log_every=0, loss_fn=None):
    """Adam with the decoder unit-norm rule on loss_fn (FVU by default);
    returns the wall time of the loop. Each epoch is a fresh permutation of
    the rows (torch.Generator)."""
    loss_fn = loss_fn or fvu
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    x_all = torch.from_numpy(data)
    order, pos = torch.randperm(len(data), generator=gen), 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        x = x_all[order[pos:pos + batch]]
        pos += batch
        loss = loss_fn(model(x, style), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w, g = model.W_dec, model.W_dec.grad
            g -= (g * w).sum(1, keepdim=True) * w
            opt.step()
            w /= w.norm(dim=1, keepdim=True).clamp_min(1e-30)  # a zero row stays zero
        if log_every and step % log_every == 0:
            print("step %6d  train loss %.4f" % (step, loss.item()), flush=True)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate_fvu(model, data, chunk=1024):
    """FVU over all rows: x̂ in float32, the sums in double."""
    sse, total, sq = 0.0, np.zeros(data.shape[1]), 0.0
    for i in range(0, len(data), chunk):
        x = torch.from_numpy(data[i:i + chunk])
        xhat = model(x, "dense").double().numpy()
        x64 = x.double().numpy()
        sse += ((xhat - x64) ** 2).sum()
        total += x64.sum(0)
        sq += (x64 ** 2).sum()
    mean = total / len(data)
    sst = sq - len(data) * (mean ** 2).sum()
    return sse / sst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=6.25e-10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (more than the idle cores makes OpenMP crawl)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--style", choices=("dense", "sparse"), default="dense")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--data", default=DATA, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--save", help="write the trained weights to this checkpoint folder")
    ap.add_argument("--cfg-from", help="a `sae init` checkpoint whose cfg.json --save copies")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    require_openblas()

    train_x = read_idx_images(os.path.join(args.data, "train-images-idx3-ubyte.gz"))
    test_x = read_idx_images(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"))
    d = train_x.shape[1]
    model = TopKSAE(d, args.n, args.k, torch.Generator().manual_seed(args.seed))
    print("test fvu at init %.4f" % evaluate_fvu(model, test_x), flush=True)
    wall = train(model, train_x, args.steps, args.batch, args.lr, (args.beta1, args.beta2),
                 args.eps, args.seed, args.style, args.log_every)
    result = {"steps": args.steps, "batch": args.batch, "d": d, "n": args.n, "k": args.k,
              "style": args.style, "threads": args.threads, "lr": args.lr,
              "tokens_per_s": args.steps * args.batch / wall, "wall_s": wall,
              "test_fvu": float(evaluate_fvu(model, test_x))}
    print("torch %s: %d steps of %d rows, %d threads: %.0f tokens/s, wall %.2f s, test fvu %.6f"
          % (args.style, args.steps, args.batch, args.threads, result["tokens_per_s"], wall, result["test_fvu"]))
    if args.json:
        json.dump(result, open(args.json, "w"), indent=1)
    if args.save:
        save_checkpoint(model, args.save, args.cfg_from)


if __name__ == "__main__":
    main()
