"""Page faults of repeated calls to a saec library, with glibc's malloc left
at its defaults (as a program that loads the library itself has it).

usage: workspace_faults.py LIB.so BATCH

Calls sae_forward four times and sae_train_step three times on the same
BATCH rows and prints each call's minor page faults. Generated code
allocates its work buffers from the library's own heap
(runtime/src/cpu/workspace.c), so after the first call of an entry point
the later ones reuse its memory: each must fault fewer pages than a
quarter of the encoder weight holds (with glibc's heap alone, every call
maps the forward's packed copy of that weight, a block above 32 MiB at
d = 768, n = 16384, afresh and faults all of it in). The forward's
outputs must be the same bit for bit on every call: reused memory holds
the last call's data, which nothing may read.
"""
import resource
import sys

import numpy as np

from saelib import Library


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counted(call):
    before = faults()
    result = call()
    return faults() - before, result


def main():
    path, batch = sys.argv[1], int(sys.argv[2])
    lib = Library(path)
    params = lib.init(0)
    d = lib.desc["input"]["dim"]
    x = np.random.default_rng(1).standard_normal((batch, d), dtype=np.float32)

    counts, outputs = [], []
    for _ in range(4):
        count, out = counted(lambda: lib.forward([x], params))
        counts.append(count)
        outputs.append(out)
    limit = lib.desc["input"]["dim"] * lib.n * 4 // 4096 // 4
    print("forward faults:", counts, "limit", limit)
    for xhat, losses in outputs[1:]:
        assert np.array_equal(xhat, outputs[0][0]), "forward outputs differ"
        assert np.array_equal(losses, outputs[0][1]), "forward losses differ"
    assert max(counts[1:]) < limit, counts

    m = {p["name"]: np.zeros(p["shape"], np.float32) for p in lib.trainable}
    v = {p["name"]: np.zeros(p["shape"], np.float32) for p in lib.trainable}
    hyper = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
             "bc1": 0.1, "bc2": 0.001, "clip": 0.0, "sparsity": 1.0}
    counts = [counted(lambda: lib.train_step([x], params, m, v, hyper))[0]
              for _ in range(3)]
    print("train_step faults:", counts)
    assert max(counts[1:]) < limit, counts
    print("ok")


if __name__ == "__main__":
    main()
