"""Finite-difference check of a compiled library's sae_gradient.

  gradcheck.py LIB [--skip NAME ...] [--batch B] [--seed S] [--scale S] [--step H]
                  [--state-every N]

For every trainable parameter p (except the skipped ones) and three random
directions u, compares <grad_p, u> from sae_gradient with the central
difference (L(p + h u) - L(p - h u)) / 2h of sae_forward's total loss, with
the same inputs and noise seed. Selections make the loss piecewise smooth
(abs_topk even jumps where two entries of equal magnitude and opposite sign
trade places): a direction whose central differences at h and h/4 disagree
crosses such a seam and is replaced by another (at most 20 tries; at least
two smooth directions are required). Prints one line per parameter; exits 1
on a mismatch. State (since_fired) is zero, or with --state-every N, 1 at
every N-th latent from 0 (dead when the spec's dead_after is 1).
"""
import argparse
import sys
import os

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from saelib import Library  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=0.3)
    ap.add_argument("--step", type=float, default=1e-3)
    ap.add_argument("--state-every", type=int, default=0)
    args = ap.parse_args()
    lib = Library(args.lib)
    rng = np.random.default_rng(args.seed)
    params = lib.random_params(rng, args.scale)
    for p in lib.params:  # state: counters at zero (latents alive/dead by spec)
        if not p.get("trainable", True):
            params[p["name"]][...] = 0
            if args.state_every:
                params[p["name"]][::args.state_every] = 1
    inputs = [rng.standard_normal((args.batch, i["dim"])).astype(np.float32)
              for i in lib.desc["inputs"]]
    grads, _ = lib.gradient(inputs, params, seed=7)

    def loss(ps):
        return float(lib.forward(inputs, ps, seed=7)[1][0])

    bad = 0
    checked = 0
    for p in lib.trainable:
        name = p["name"]
        if name in args.skip:
            continue
        g = grads[name].astype(np.float64)
        base = params[name]
        h = args.step * (1.0 + float(np.sqrt(np.mean(base.astype(np.float64) ** 2))))
        worst = 0.0
        smooth = 0

        def central(u, step):
            ps = dict(params)
            ps[name] = (base + step * u).astype(np.float32)
            up = loss(ps)
            ps[name] = (base - step * u).astype(np.float32)
            return (up - loss(ps)) / (2 * step)

        for trial in range(20):
            if smooth == 3:
                break
            u = rng.standard_normal(base.shape)
            u /= np.linalg.norm(u)
            an = float(np.sum(g * u))
            tol = 0.03 * abs(an) + 0.003 * float(np.linalg.norm(g)) + 2e-4
            fd, fd4 = central(u, h), central(u, h / 4)
            if abs(fd - fd4) > tol:  # a seam of the selection in [-h, h]
                continue
            smooth += 1
            worst = max(worst, abs(fd - an) / tol)
        if smooth < 2:
            print(f"gradcheck: FAIL: {name}: fewer than 2 smooth directions in 20", file=sys.stderr)
            sys.exit(1)
        checked += 1
        status = "ok" if worst <= 1 else "MISMATCH"
        print(f"{name}: |grad| = {np.linalg.norm(g):.4g}, worst error/tolerance = {worst:.3f} {status}")
        if worst > 1:
            bad += 1
    if checked == 0:
        print("gradcheck: FAIL: no parameter checked", file=sys.stderr)
        sys.exit(1)
    if bad:
        print(f"gradcheck: FAIL: {bad} parameter(s) disagree with finite differences", file=sys.stderr)
        sys.exit(1)
    print(f"gradcheck: {checked} parameter(s) agree with finite differences")


if __name__ == "__main__":
    main()
