"""NumPy reference of Group Bias Adaptation's training rule (examples/gba.sae,
the `bias_adapt` builtin; docs/language.md, SaeOps.td sae.bias_adapt).

  gbaref.py check BEFORE AFTER X.npy B STEPS EVERY [GROUPS P_MAX P_MIN GAMMA]

BEFORE and AFTER are checkpoints of `sae train --no-shuffle --batch B` over
STEPS steps. The weights W_enc and b_dec move by Adam between steps, so the
reference replays the rule step by step from the weights of each step: it
needs STEPS == 1, or a run whose W_enc and b_dec do not change (lr 0).
Checks b_enc and gba_stats of AFTER against the rule applied to BEFORE.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from saeref import read_safetensors  # noqa: E402


def main():
    before, after, xpath = sys.argv[2:5]
    b, steps, every = (int(v) for v in sys.argv[5:8])
    groups, p_max, p_min, gamma = 10, 0.1, 0.001, 0.01
    if len(sys.argv) > 8:
        groups = int(sys.argv[8])
        p_max, p_min, gamma = (float(v) for v in sys.argv[9:12])
    p0 = read_safetensors(os.path.join(before, "sae_weights.safetensors"))
    p1 = read_safetensors(os.path.join(after, "sae_weights.safetensors"))
    x = np.load(xpath).astype(np.float64)
    w, bdec = p0["W_enc"].astype(np.float64), p0["b_dec"].astype(np.float64)
    bias = p0["b_enc"].astype(np.float64)
    stats = p0["gba_stats"].astype(np.float64).copy()
    n = bias.shape[0]
    group = np.arange(n) * groups // n
    target = p_max * np.exp(group * (np.log(p_min / p_max) / max(groups - 1, 1)))
    updates = 0
    for t in range(steps):
        rows = x[t * b:(t + 1) * b]
        pre = (rows - bdec) @ w + bias
        count = stats[0] + (pre > 0).sum(0)
        mx = np.maximum(stats[1], pre.max(0))
        seen = stats[2, 0] + len(rows)
        if seen >= every:
            updates += 1
            freq = count / seen
            pos = mx > 0
            gsum = np.bincount(group, weights=np.where(pos, mx, 0), minlength=groups)
            gnum = np.bincount(group, weights=pos.astype(float), minlength=groups)
            mean_max = gsum / np.maximum(gnum, 1)
            down = np.maximum(bias - gamma * np.maximum(mx, 0), -1)
            up = np.minimum(bias + gamma * mean_max[group], 0)
            bias = np.where(freq > target, down, np.where(freq < 1e-6, up, bias))
            stats = np.zeros_like(stats)
        else:
            stats = np.stack([count, mx, np.full(n, seen)])
    got_b, got_s = p1["b_enc"].astype(np.float64), p1["gba_stats"].astype(np.float64)
    err_b = np.abs(got_b - bias).max() / max(np.abs(bias).max(), 1e-6)
    err_s = np.abs(got_s - stats).max() / max(np.abs(stats).max(), 1e-6)
    moved = int((np.abs(got_b - p0["b_enc"]) > 0).sum())
    if err_b > 1e-4 or err_s > 1e-4:
        print("gbaref: FAIL: b_enc error %.3g, gba_stats error %.3g" % (err_b, err_s), file=sys.stderr)
        sys.exit(1)
    print("gbaref: %d update(s), %d of %d biases moved, max relative error b_enc %.2e, stats %.2e"
          % (updates, moved, n, err_b, err_s))


if __name__ == "__main__":
    if len(sys.argv) < 8 or sys.argv[1] != "check":
        sys.exit(__doc__)
    main()
