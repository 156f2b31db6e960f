"""Training-step and encode speed of saec against PyTorch, side by side.

For each shape (d, n) and architecture (examples/topk.sae, batch_topk.sae,
jump_relu.sae, relu_l1.sae, each with and without an AuxK term), this
measures in one run:

  saec     the compiled library's sae_train_step (one fused forward pass,
           backward pass, Adam and decoder-norm update) and its encode entry
           point, called through ctypes on NumPy buffers;
  torch    bench/torch_step.py in its styles: `dense` (SAELens /
           dictionary_learning), `sparse` (embedding_bag decode, sparsify's
           fallback) and, for TopK, `manual` (a hand-optimised sparse
           backward with preallocated buffers and a chunked Adam);

each measurement in its own process (so peak RSS is per measurement), the
same math and hyperparameters (Adam lr 2e-4, eps 6.25e-10, batch B), the
same number of threads. Data: 4 batches of standard normal rows used in
turn (speed does not depend on the values).

AuxK variants add `loss auxk = 0.03125 * aux_k(relu(pre), stopgrad(x - xhat),
W_dec, since_fired, k_aux = 512)` with a `since_fired` state in which a
fixed 10% of the latents are dead, so the auxiliary top-k does its full work.

"aux cost" is the AuxK variant's extra step time, measured apart from the
rows' figures: the steps of the model with and without AuxK are timed in
turn in one process, and the median ratio of each pair is reported (a slow
spell of a shared machine then slows both sides alike; separate runs
minutes apart can disagree by 30% here). It is measured with 10% of the
latents dead, as in the rows, and with 1% dead: the auxiliary products'
work grows with the number of dead latents, and a run that AuxK keeps
healthy has few. Each ratio is the median of at least PAIR_STEPS pairs
(more with --steps), after the warm-up.

The roofline: sgemm GFLOP/s of OpenBLAS (torch.mm, all threads) on the
encoder's shape [B, d] x [d, n], and memory bandwidth (a large NumPy copy),
measured before and after a shape's runs; the faster of the two sets the
bound (on a shared machine one measurement may land in a slow spell).
The lower bound of a step is the encoder product at that speed plus Adam's
parameter traffic (2·d·n parameters, about 28 bytes each: read p, g, m, v,
write p, m, v) at that bandwidth; of encode, the encoder product alone.

Usage:
  /usr/bin/python3 bench/train_step.py [--shapes 768x16384,512x4096] [--k 32]
      [--batch 1024] [--steps 10] [--archs topk,batch_topk,jump_relu,relu_l1]
      [--no-aux] [--no-torch] [--threads N] [--build build] [--out DIR]
      [--scaling] [--aux-curve] [--dead-fractions 0,0.01,...]
--scaling instead times the saec TopK step at d=768 as n grows (4096 ...
65536, k=32) and as k grows (16 ... 256, n=16384).
--aux-curve instead measures AuxK's cost for TopK at the first shape as the
fraction of dead latents grows (--dead-fractions), each fraction a pair run
as above, beside the work of AuxK's four products over the dead latents
(decode, the codes' gradient, the decoder's and the encoder's gradients:
2·B·n_dead·d multiply-adds each while they are dense, n_dead ≤ 3·k_aux;
2·B·k_aux·d each when sparse) and that work's time at the measured sgemm
speed as a share of the TopK step: the least AuxK can cost, before its
selection.
Prints tables; exits non-zero if a run fails.
"""
import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
sys.path.insert(0, os.path.join(ROOT, "test", "Integration", "CPU", "Inputs"))

DEAD_FRACTION = 0.1
AUX_COST_DEAD = (0.1, 0.01)  # the dead fractions "aux cost" is measured at
PAIR_STEPS = 20  # the fewest pairs of steps an aux cost is the median of
AUX_LINE = ("  loss auxk = 0.03125 * aux_k(relu(pre), stopgrad(x - xhat), W_dec, since_fired,\n"
            "                              k_aux = 512);\n")


def spec_text(arch, aux):
    """The example spec, with an AuxK term added when `aux` (topk has its
    own example, topk_auxk.sae)."""
    if aux and arch == "topk":
        return open(os.path.join(ROOT, "examples", "topk_auxk.sae")).read()
    text = open(os.path.join(ROOT, "examples", arch + ".sae")).read()
    if not aux:
        return text
    lines = text.splitlines(keepends=True)
    out = []
    for line in lines:
        out.append(line)
        if line.strip().startswith("param b_dec"):
            out.append("  state since_fired : [n] = zeros;\n")
    text = "".join(out)
    # After the first loss statement (which may span lines up to its ';').
    start = text.index("  loss")
    end = text.index(";", start) + 2
    text = text[:end] + AUX_LINE + text[end:]
    text = text.replace("  loss = ", "  loss recon = ")
    if "encode z = relu(" in text and "let pre" not in text:
        # relu_l1 has no `pre`: name the pre-activation.
        text = text.replace("encode z = relu((x - b_dec) @ W_enc + b_enc);",
                            "let pre = (x - b_dec) @ W_enc + b_enc;\n  encode z = relu(pre);")
    return text


def compile_lib(args, arch, aux, d, n, k):
    name = "%s%s_%d_%d_%d" % (arch, "_aux" if aux else "", d, n, k)
    spec = os.path.join(args.out, name + ".sae")
    lib = os.path.join(args.out, name + ".so")
    with open(spec, "w") as f:
        f.write(spec_text(arch, aux))
    defines = ["-D", "d=%d" % d, "-D", "n=%d" % n]
    if arch in ("topk", "batch_topk"):
        defines += ["-D", "k=%d" % k]
    run([os.path.join(args.build, "bin", "saec"), spec, "-o", lib] + defines)
    return lib


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit("failed: " + " ".join(cmd))
    return p.stdout


def child_json(cmd):
    return json.loads(run(cmd).strip().splitlines()[-1])


# --- the saec child: one library, timed through ctypes -----------------------

def keep_heap():
    """As the `sae` tool does: keep freed work buffers in the heap instead of
    returning them to the OS (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1).
    saec's libraries keep their own (runtime/src/cpu/workspace.c); this is
    for PyTorch's tensors, and so that every style runs alike."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)
    libc.mallopt(-1, 1 << 30)


def add_heap_flag(ap):
    """--glibc-defaults: leave malloc's settings as they are."""
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="leave glibc's malloc settings as they are, as a "
                    "program that loads the libraries itself would (by "
                    "default the heap keeps freed blocks, as in the sae "
                    "tool)")


def set_heap(args):
    if not args.glibc_defaults:
        keep_heap()


def stepper(lib, args, rng):
    """(inputs, a function that takes training step `step` and returns its
    seconds): fresh parameters and Adam moments, a fixed fraction of the
    latents dead when the model has since_fired (args.dead_fraction, else
    DEAD_FRACTION)."""
    d = lib.desc["input"]["dim"]
    xs = [rng.standard_normal((args.batch, d), dtype=np.float32) for _ in range(4)]
    params = lib.init(0)
    if "since_fired" in params:
        fraction = getattr(args, "dead_fraction", None)
        fraction = DEAD_FRACTION if fraction is None else fraction
        dead = rng.permutation(lib.n)[: int(fraction * lib.n)]
        params["since_fired"][dead] = 1e7
    m = {p["name"]: np.zeros(p["shape"], np.float32) for p in lib.trainable}
    v = {p["name"]: np.zeros(p["shape"], np.float32) for p in lib.trainable}

    def step_seconds(step):
        hyper = {"lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "eps": 6.25e-10,
                 "bc1": 1 - 0.9 ** (step + 1), "bc2": 1 - 0.999 ** (step + 1),
                 "clip": 0.0, "sparsity": 1.0}
        if "since_fired" in params:
            saved = params["since_fired"].copy()
        t = time.perf_counter()
        lib.train_step([xs[step % 4]], params, m, v, hyper, seed=step)
        seconds = time.perf_counter() - t
        if "since_fired" in params:
            params["since_fired"][:] = saved  # keep the same latents dead
        return seconds
    return xs, params, step_seconds


def saec_child(args):
    from saelib import Library, _array
    keep_heap()
    rng = np.random.default_rng(0)
    lib = Library(args.lib)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    xs, params, step_seconds = stepper(lib, args, rng)
    result = {"batch": args.batch, "threads": args.threads}
    times = [step_seconds(step) for step in range(args.warmup + args.steps)]
    times = times[args.warmup:]
    result["step_ms"] = 1e3 * float(np.median(times))
    result["step_ms_min"] = 1e3 * min(times)
    result["tokens_per_s"] = args.batch / float(np.median(times))
    # Encode: the sparse codes (or dense for models without them).
    enc = encoder(lib, args.batch)
    arr = _array([params[p["name"]] for p in lib.params])
    times = []
    for rep in range(12):
        inputs = lib._inputs([xs[rep % 4]])
        t = time.perf_counter()
        rc = enc(inputs, arr)
        times.append(time.perf_counter() - t)
        assert rc == 0, rc
    result["encode_ms"] = 1e3 * float(np.median(times[2:]))
    result["rss_base_mb"] = base
    result["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def pair_child(args):
    """The steps of two libraries (--lib, then --lib2) in turn in one
    process: the median ratio of each pair of steps, which a slow spell of
    a shared machine affects on both sides alike."""
    from saelib import Library
    keep_heap()
    rng = np.random.default_rng(0)
    steppers = [stepper(Library(path), args, rng)[2] for path in (args.lib, args.lib2)]
    times = np.array([[f(step) for f in steppers]
                      for step in range(args.warmup + args.steps)])[args.warmup:]
    print(json.dumps({"ratio": float(np.median(times[:, 1] / times[:, 0])),
                      "ms": [1e3 * float(np.median(t)) for t in times.T]}))


def encoder(lib, batch):
    """A callable (inputs, params) -> rc for the library's encode entry
    point: sparse codes when the model has them, else dense."""
    from saelib import _ptr
    c = lib.lib
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    codes = lib.desc["codes"]
    k = codes.get("k", 0)
    if codes.get("kind") == "sparse" and codes.get("layout") == "rows":
        vals = np.zeros((batch, k), np.float32)
        idx = np.zeros((batch, k), np.int32)
        c.sae_encode_sparse.argtypes = [i64, vp, vp, vp, vp]
        return lambda inputs, params: c.sae_encode_sparse(
            batch, inputs, params, vals.ctypes.data, idx.ctypes.data)
    if codes.get("kind") == "sparse":
        vals = np.zeros(batch * k, np.float32)
        idx = np.zeros(batch * k, np.int32)
        rows = np.zeros(batch * k, np.int32)
        c.sae_encode_batch.argtypes = [i64, vp, vp, vp, vp, vp]
        return lambda inputs, params: c.sae_encode_batch(
            batch, inputs, params, vals.ctypes.data, idx.ctypes.data, rows.ctypes.data)
    dense = np.zeros((batch, lib.n), np.float32)
    c.sae_encode_dense.argtypes = [i64, vp, vp, vp]
    return lambda inputs, params: c.sae_encode_dense(batch, inputs, params, dense.ctypes.data)


# --- the roofline --------------------------------------------------------------

def roofline_child(args):
    import torch
    from torchblas import require_openblas
    torch.set_num_threads(args.threads)
    require_openblas()
    d, n, b = args.d, args.n, args.batch
    a = torch.randn(b, d)
    w = torch.randn(d, n)
    out = torch.empty(b, n)
    times = []
    for _ in range(8):
        t = time.perf_counter()
        torch.mm(a, w, out=out)
        times.append(time.perf_counter() - t)
    gflops = 2 * b * d * n / min(times[2:]) / 1e9
    src = np.ones(64 << 20, np.float32)  # 256 MiB
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    bandwidth = 2 * src.nbytes / min(times[1:]) / 1e9
    print(json.dumps({"sgemm_gflops": gflops, "bandwidth_gbs": bandwidth}))


def bounds(roof, d, n, b):
    gemm = 2 * b * d * n / (roof["sgemm_gflops"] * 1e9)
    adam = 28 * 2 * d * n / (roof["bandwidth_gbs"] * 1e9)
    return 1e3 * (gemm + adam), 1e3 * gemm


# --- the driver ----------------------------------------------------------------

def table(title, rows, cols):
    print(title)
    widths = [max(len(str(r.get(c, ""))) for r in rows + [{c: c}]) for c in cols]
    line = lambda r: "  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(cols, widths))
    print(line({c: c for c in cols}))
    for r in rows:
        print(line(r))
    print(flush=True)


def saec_measure(args, lib):
    return child_json([PY, __file__, "--child", "saec", "--lib", lib, "--batch", str(args.batch),
                       "--steps", str(args.steps), "--threads", str(args.threads)])


def main_tables(args):
    lscpu = run(["lscpu"])
    model = next((l for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    print("machine: %s; %d threads; B=%d, k=%d; step/encode: median of %d steps / 10 calls\n"
          % (" ".join(model.split()), args.threads, args.batch, args.k, args.steps))
    for shape in args.shapes.split(","):
        d, n = (int(s) for s in shape.split("x"))
        # The roofline is measured before and after the runs, and the
        # faster of the two sets the bound: on a shared machine one
        # measurement can land in a slow spell and flatter every ratio.
        roofline = [PY, __file__, "--child", "roofline", "--d", str(d), "--n", str(n),
                    "--batch", str(args.batch), "--threads", str(args.threads)]
        roofs = [child_json(roofline)]
        rows = []
        for arch in args.archs.split(","):
            for aux in ([False] if args.no_aux else [False, True]):
                lib = compile_lib(args, arch, aux, d, n, args.k)
                s = saec_measure(args, lib)
                name = arch + ("+aux" if aux else "")
                row = {"model": name, "run": "saec", "step ms": "%.1f" % s["step_ms"],
                       "tokens/s": "%.0f" % s["tokens_per_s"],
                       "encode ms": "%.1f" % s["encode_ms"],
                       "peak RSS MB": "%.0f" % s["rss_peak_mb"],
                       "RSS growth MB": "%.0f" % (s["rss_peak_mb"] - s["rss_base_mb"]),
                       "saec": s}
                if aux and not args.no_aux:
                    for fraction in AUX_COST_DEAD:
                        pair = child_json([PY, __file__, "--child", "pair", "--lib", plain,
                                           "--lib2", lib, "--batch", str(args.batch),
                                           "--steps", str(max(args.steps, PAIR_STEPS)),
                                           "--threads",
                                           str(args.threads), "--dead-fraction", str(fraction)])
                        row["aux cost %g%% dead" % (100 * fraction)] = \
                            "%+.0f%%" % (100 * (pair["ratio"] - 1))
                plain = lib
                rows.append(row)
                if args.no_torch:
                    continue
                styles = ["dense", "sparse"] + (["manual"] if arch == "topk" and not aux else [])
                for style in styles:
                    cmd = [PY, os.path.join(ROOT, "bench", "torch_step.py"), "--arch", arch,
                           "--style", style, "--d", str(d), "--n", str(n), "--k", str(args.k),
                           "--batch", str(args.batch), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--encode"]
                    if aux:
                        cmd += ["--aux", "--dead-fraction", str(DEAD_FRACTION)]
                    t = child_json(cmd)
                    rows.append({"model": name, "run": "torch " + style,
                                 "step ms": "%.1f" % t["step_ms"],
                                 "tokens/s": "%.0f" % t["tokens_per_s"],
                                 "encode ms": "%.1f" % t["encode_ms"],
                                 "peak RSS MB": "%.0f" % t["rss_peak_mb"],
                                 "RSS growth MB": "%.0f" % (t["rss_peak_mb"] - t["rss_base_mb"]),
                                 "saec step speed-up": "%.2fx" % (t["step_ms"] / s["step_ms"]),
                                 "saec encode speed-up": "%.2fx" % (t["encode_ms"] / s["encode_ms"])})
        roofs.append(child_json(roofline))
        roof = {key: max(r[key] for r in roofs) for key in ("sgemm_gflops", "bandwidth_gbs")}
        step_bound, enc_bound = bounds(roof, d, n, args.batch)
        print("d=%d n=%d: OpenBLAS sgemm %s GFLOP/s on [%d, %d] x [%d, %d] (before and after the "
              "runs), copy bandwidth %s GB/s; lower bound from the faster: step %.1f ms, encode "
              "%.1f ms\n"
              % (d, n, " and ".join("%.0f" % r["sgemm_gflops"] for r in roofs), args.batch, d, d,
                 n, " and ".join("%.1f" % r["bandwidth_gbs"] for r in roofs), step_bound,
                 enc_bound))
        for r in rows:
            s = r.pop("saec", None)
            if s:
                r["bound/step"] = "%.2f" % (step_bound / s["step_ms"])
                r["bound/encode"] = "%.2f" % (enc_bound / s["encode_ms"])
        table("train step and encode, d=%d n=%d k=%d B=%d" % (d, n, args.k, args.batch), rows,
              ["model", "run", "step ms", "tokens/s", "encode ms", "peak RSS MB", "RSS growth MB",
               "bound/step", "bound/encode"]
              + ["aux cost %g%% dead" % (100 * f) for f in AUX_COST_DEAD]
              + ["saec step speed-up",
               "saec encode speed-up"])


def scaling(args):
    rows = []
    d = 768
    for n in (4096, 8192, 16384, 32768, 65536):
        s = saec_measure(args, compile_lib(args, "topk", False, d, n, 32))
        rows.append({"n": n, "k": 32, "step ms": "%.1f" % s["step_ms"],
                     "encode ms": "%.1f" % s["encode_ms"], "step ms / n·1e-3": "%.2f" % (s["step_ms"] / n * 1e3)})
    table("saec TopK step as n grows (d=768, k=32, B=%d)" % args.batch, rows,
          ["n", "k", "step ms", "encode ms", "step ms / n·1e-3"])
    rows = []
    for k in (16, 32, 64, 128, 256):
        s = saec_measure(args, compile_lib(args, "topk", False, d, 16384, k))
        rows.append({"n": 16384, "k": k, "step ms": "%.1f" % s["step_ms"],
                     "encode ms": "%.1f" % s["encode_ms"]})
    table("saec TopK step as k grows (d=768, n=16384, B=%d)" % args.batch, rows,
          ["n", "k", "step ms", "encode ms"])


def aux_curve(args):
    d, n = (int(s) for s in args.shapes.split(",")[0].split("x"))
    k_aux, dense_ratio = 512, 3  # AUX_LINE's k_aux; kDenseDeadRatio in SaeToLinalg.cpp
    plain = compile_lib(args, "topk", False, d, n, args.k)
    aux = compile_lib(args, "topk", True, d, n, args.k)
    roof = child_json([PY, __file__, "--child", "roofline", "--d", str(d), "--n", str(n),
                       "--batch", str(args.batch), "--threads", str(args.threads)])
    rows = []
    for fraction in (float(f) for f in args.dead_fractions.split(",")):
        pair = child_json([PY, __file__, "--child", "pair", "--lib", plain, "--lib2", aux,
                           "--batch", str(args.batch), "--steps", str(max(args.steps, PAIR_STEPS)),
                           "--threads", str(args.threads), "--dead-fraction", str(fraction)])
        dead = int(fraction * n)
        width = dead if dead <= dense_ratio * k_aux else k_aux
        flop = 4 * 2 * args.batch * width * d
        floor_ms = 1e3 * flop / (roof["sgemm_gflops"] * 1e9)
        rows.append({"dead %": "%g" % (100 * fraction), "dead latents": dead,
                     "products": "dense" if dead <= dense_ratio * k_aux else "sparse",
                     "TopK ms": "%.1f" % pair["ms"][0], "TopK+AuxK ms": "%.1f" % pair["ms"][1],
                     "aux cost": "%+.0f%%" % (100 * (pair["ratio"] - 1)),
                     "products GFLOP": "%.2f" % (flop / 1e9),
                     "at sgemm speed": "%+.0f%%" % (100 * floor_ms / pair["ms"][0])})
    print("OpenBLAS sgemm %.0f GFLOP/s on [%d, %d] x [%d, %d]\n"
          % (roof["sgemm_gflops"], args.batch, d, d, n))
    table("AuxK's cost as latents die: TopK d=%d n=%d k=%d B=%d, k_aux=%d (median of pairs)"
          % (d, n, args.k, args.batch, k_aux), rows,
          ["dead %", "dead latents", "products", "TopK ms", "TopK+AuxK ms", "aux cost",
           "products GFLOP", "at sgemm speed"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="768x16384,512x4096")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--archs", default="topk,batch_topk,jump_relu,relu_l1")
    ap.add_argument("--no-aux", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default="/tmp/saec-bench-step")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--aux-curve", action="store_true")
    ap.add_argument("--dead-fractions", default="0,0.005,0.01,0.02,0.03,0.05,0.07,0.1,0.15,0.2")
    ap.add_argument("--child", choices=("saec", "roofline", "pair"), help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    ap.add_argument("--lib2", help=argparse.SUPPRESS)
    ap.add_argument("--dead-fraction", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.child == "saec":
        return saec_child(args)
    if args.child == "roofline":
        return roofline_child(args)
    if args.child == "pair":
        return pair_child(args)
    os.makedirs(args.out, exist_ok=True)
    if not args.no_torch:
        from torchblas import require_openblas
        require_openblas()  # here too, so that its warning is seen
    if args.scaling:
        scaling(args)
    elif args.aux_curve:
        aux_curve(args)
    else:
        main_tables(args)


if __name__ == "__main__":
    main()
