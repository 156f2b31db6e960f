"""Training steps of several compiled libraries, interleaved in one process.

A before/after comparison on a shared, noisy machine: step s of every
library runs before step s + 1 of any, so a slow spell slows all of them
alike. Each library gets the same inputs and state as in
bench/train_step.py (its `stepper`: fresh parameters and Adam moments, 4
batches of standard normal rows, 10% of the latents dead when the model
has `since_fired`, or --dead-fraction of them), in its own parameters.

Usage:
  /usr/bin/python3 bench/interleave.py LIB.so [LIB.so ...] [--steps 20]
      [--warmup 2] [--batch 1024] [--threads N] [--dead-fraction F]
      [--glibc-defaults]
Prints, per library, the median and the minimum step time after the
warm-up steps.
"""
import argparse
import os
import sys

import numpy as np


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_step  # noqa: E402
from saelib import Library  # noqa: E402  (train_step put its directory on the path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("libs", nargs="+", help="shared libraries built by saec")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dead-fraction", type=float,
                    help="fraction of the latents dead (models with "
                    "since_fired; default that of bench/train_step.py, 0.1)")
    train_step.add_heap_flag(ap)
    args = ap.parse_args()
    if args.steps <= args.warmup:
        sys.exit("--steps must exceed --warmup")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    train_step.set_heap(args)
    steppers = [train_step.stepper(Library(os.path.abspath(path)), args,
                                   np.random.default_rng(0))[2]
                for path in args.libs]
    times = [[] for _ in steppers]
    for step in range(args.steps):
        for i, step_seconds in enumerate(steppers):
            times[i].append(step_seconds(step))
    print("%-40s %10s %10s" % ("library", "median ms", "min ms"))
    for path, t in zip(args.libs, times):
        t = t[args.warmup:]
        print("%-40s %10.1f %10.1f" % (os.path.basename(path),
                                       1e3 * np.median(t), 1e3 * min(t)))


if __name__ == "__main__":
    main()
