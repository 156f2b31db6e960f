"""The PyTorch peers must run on OpenBLAS at its best, or every ratio in
bench/RESULTS.md flatters saec. Debian's python3-torch links the generic
libblas.so.3, which is the slow reference BLAS until an optimised one
(libopenblas0-pthread) provides it; on a CPU with AVX-512, Debian's OpenBLAS
may pick its AVX2 (Haswell) kernels unless OPENBLAS_CORETYPE=SkylakeX.

require_openblas() exits with the fix when torch's matrix products run on
another BLAS, and warns when the AVX-512 kernels are not selected.
"""
import os
import sys


def require_openblas():
    import torch
    torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # loads the BLAS
    with open("/proc/self/maps") as f:
        maps = f.read()
    if "openblas" not in maps:
        sys.exit("bench: PyTorch is not using OpenBLAS (the reference BLAS is ~30x slower, "
                 "which would flatter saec): apt-get install libopenblas0-pthread")
    with open("/proc/cpuinfo") as f:
        avx512 = " avx512f" in f.read()
    if avx512 and os.environ.get("OPENBLAS_CORETYPE") is None:
        print("bench: warning: this CPU has AVX-512; run with OPENBLAS_CORETYPE=SkylakeX so "
              "that OpenBLAS uses its AVX-512 kernels", file=sys.stderr)
