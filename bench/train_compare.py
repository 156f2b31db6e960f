"""saec's `sae train` against the PyTorch reference, side by side in one run.

Two comparisons, same model, hyperparameters and number of tokens on each side
(TopK SAE, the decoder unit-norm rule, Adam with eps 6.25e-10):

  fmnist   examples/topk.sae on Fashion-MNIST (d = 784, n = 4096, k = 32),
           trained on the 60k training images; test FVU on the 10k test images
           (`sae eval` for saec, the same formula in the torch script).
  synth    examples/topk.sae (and examples/gba.sae when given --gba, against
           the PyTorch GBA reference with the spec's rule settings) on
           `sae synth` data (d = 256, 2048 true features, 8 active per row);
           feature recovery = mean over true features of the best |cos| with
           a decoder row (`sae eval --true-dict`, the same formula in the
           torch script).

PyTorch runs bench/train_fmnist_torch.py / bench/synth_recovery_torch.py in the
`dense` (SAELens-style) and `sparse` (embedding_bag decode) styles with all
cores (--threads). saec runs its encoder product on all cores (OpenMP) and
the rest of the step on one. Wall time is the training loop only on both
sides (saec: the `seconds` of sae train's summary, which includes writing the
final checkpoint).

Usage:
  /usr/bin/python3 bench/train_compare.py fmnist [--steps 293] [--batch 1024]
      [--lr 1e-3] [--threads 2] [--build build] [--out /tmp/saec-bench]
  /usr/bin/python3 bench/train_compare.py synth [--steps 1500] [--batch 1024]
      [--lr 1e-3] [--k 8] [--n 4096] [--gba]
Prints a table; exits non-zero if a run fails.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
FMNIST = "/usr/share/datasets/fashion-mnist"


def run(cmd, **kw):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit("failed: " + " ".join(cmd))
    return p.stdout, time.time() - t


def saec_train(args, spec, defines, data, steps, out, extra=()):
    lib = os.path.join(out, os.path.basename(spec).replace(".sae", ".so"))
    cmd = [os.path.join(args.build, "bin", "saec"), spec, "-o", lib]
    for d in defines:
        cmd += ["-D", d]
    run(cmd)
    ckpt = os.path.join(out, os.path.basename(spec) + ".ckpt")
    subprocess.run(["rm", "-rf", ckpt])
    stdout, _ = run([os.path.join(args.build, "bin", "sae"), "train", lib, "--data", data,
                     "--batch", str(args.batch), "--lr", str(args.lr), "--eps", "6.25e-10",
                     "--steps", str(steps), "--seed", "0", "--out", ckpt, *extra])
    summary = json.loads(stdout.strip().splitlines()[-1])
    return lib, ckpt, summary


def sae_eval(args, lib, ckpt, data, *extra):
    stdout, _ = run([os.path.join(args.build, "bin", "sae"), "eval", lib, "--checkpoint", ckpt,
                     "--data", data, *extra])
    return json.loads(stdout)


def table(rows, cols):
    widths = [max(len(str(r.get(c, ""))) for r in rows + [{c: c}]) for c in cols]
    line = lambda r: "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths))
    print(line({c: c for c in cols}))
    for r in rows:
        print(line(r))


def fmnist(args):
    os.makedirs(args.out, exist_ok=True)
    train_data = os.path.join(FMNIST, "train-images-idx3-ubyte.gz")
    test_data = os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")
    rows = []
    lib, ckpt, s = saec_train(args, os.path.join(ROOT, "examples/topk.sae"),
                              ["d=784", "n=4096"], train_data, args.steps, args.out)
    ev = sae_eval(args, lib, ckpt, test_data)
    rows.append({"run": "saec", "tokens/s": "%.0f" % s["tokens_per_s"],
                 "wall s": "%.1f" % s["seconds"], "test FVU": "%.4f" % ev["fvu"]})
    saec_wall = s["seconds"]
    saec_fvu = ev["fvu"]
    for style in ("dense", "sparse"):
        j = os.path.join(args.out, "torch_%s.json" % style)
        run([PY, os.path.join(ROOT, "bench/train_fmnist_torch.py"), "--steps", str(args.steps),
             "--batch", str(args.batch), "--lr", str(args.lr), "--eps", "6.25e-10",
             "--threads", str(args.threads), "--style", style, "--json", j])
        r = json.load(open(j))
        rows.append({"run": "torch %s (%d threads)" % (style, args.threads),
                     "tokens/s": "%.0f" % r["tokens_per_s"], "wall s": "%.1f" % r["wall_s"],
                     "test FVU": "%.4f" % r["test_fvu"],
                     "saec speed-up": "%.2fx" % (r["wall_s"] / saec_wall),
                     "FVU saec - torch": "%+.4f" % (saec_fvu - r["test_fvu"])})
    print("Fashion-MNIST, TopK d=784 n=4096 k=32, %d steps of %d rows, lr %g, eps 6.25e-10, unit-norm decoder"
          % (args.steps, args.batch, args.lr))
    table(rows, ["run", "tokens/s", "wall s", "test FVU", "saec speed-up", "FVU saec - torch"])


def synth(args):
    os.makedirs(args.out, exist_ok=True)
    x = os.path.join(args.out, "x.npy")
    truth = os.path.join(args.out, "true.npy")
    if not os.path.exists(x):
        run([os.path.join(args.build, "bin", "sae"), "synth", "--d", "256", "--features", "2048",
             "--active", "8", "--rows", str(args.rows), "--seed", "1", "--out", x, "--dict", truth])
    rows = []
    specs = [("topk", ["d=256", "n=%d" % args.n, "k=%d" % args.k])]
    if args.gba:
        specs.append(("gba", ["d=256", "n=%d" % args.n]))
    for name, defines in specs:
        lib, ckpt, s = saec_train(args, os.path.join(ROOT, "examples/%s.sae" % name), defines, x,
                                  args.steps, args.out)
        ev = sae_eval(args, lib, ckpt, x, "--true-dict", truth)
        rows.append({"run": "saec %s" % name, "tokens/s": "%.0f" % s["tokens_per_s"],
                     "wall s": "%.1f" % s["seconds"], "FVU": "%.4f" % ev["fvu"],
                     "L0": "%.1f" % ev["l0"],
                     "mean max |cos|": "%.4f" % ev["feature_recovery"]["mean_max_cos"]})
    torch_runs = [("topk", "dense"), ("topk", "sparse")] + ([("gba", "dense")] if args.gba else [])
    for arch, style in torch_runs:
        j = os.path.join(args.out, "torch_synth_%s_%s.json" % (arch, style))
        # gba: examples/gba.sae's rule settings (groups 10, 0.1 -> 0.001,
        # every 25600 rows, gamma 0.01) are the script's defaults.
        run([PY, os.path.join(ROOT, "bench/synth_recovery_torch.py"), "--data", x, "--true", truth,
             "--arch", arch, "--n", str(args.n), "--k", str(args.k), "--steps", str(args.steps),
             "--batch", str(args.batch), "--lr", str(args.lr), "--threads", str(args.threads),
             "--style", style, "--json", j])
        r = json.load(open(j))
        rows.append({"run": "torch %s %s (%d threads)" % (arch, style, args.threads),
                     "tokens/s": "%.0f" % r["tokens_per_s"], "wall s": "%.1f" % r["wall_s"],
                     "FVU": "%.4f" % r["fvu"], "L0": "%.1f" % r["l0"],
                     "mean max |cos|": "%.4f" % r["mean_max_cos"]})
    print("Synthetic data (sae synth: d=256, 2048 features, 8 active, %d rows), n=%d, k=%d, "
          "%d steps of %d rows, lr %g, eps 6.25e-10, unit-norm decoder"
          % (args.rows, args.n, args.k, args.steps, args.batch, args.lr))
    table(rows, ["run", "tokens/s", "wall s", "FVU", "L0", "mean max |cos|"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("fmnist", "synth"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default="/tmp/saec-bench")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--gba", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from torchblas import require_openblas
    require_openblas()  # here too, so that its warning is seen
    if args.what == "fmnist":
        args.steps = args.steps or 293
        fmnist(args)
    else:
        args.steps = args.steps or 1500
        synth(args)


if __name__ == "__main__":
    main()
