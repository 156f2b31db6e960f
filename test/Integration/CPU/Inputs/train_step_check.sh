#!/usr/bin/env bash
# train_step_check.sh BIN PYTHON INPUTS OUTDIR ARCH...
# For each architecture: compile examples/ARCH.sae at d = 256, n = 4096,
# initialise it, randomise its biases and draw inputs (saeref.py), take one
# `sae train` step (B = 64, in file order) and compare every parameter and
# Adam moment with torchref.py's torch autograd + torch.optim.Adam step
# (1e-4 relative; see torchref.py for the allowance of entries whose
# gradient is at float32 rounding level).
# ARCH+clip trains with --clip 0.001, a bound that the gradient's norm
# exceeds there, so that the step scales the gradient before Adam, and at
# d = 192 (the outer products' chunks of 12 vectors, with AVX2 and AVX-512).
# $SAEC_FLAGS, when set, goes to every saec command (--target-cpu=haswell).
set -euo pipefail
bin=$1 python=$2 inputs=$3 out=$4
shift 4
examples=$(cd "$inputs/../../../../examples" && pwd)
for token in "$@"; do
  arch=${token%+clip}
  clip=() d=256
  if [ "$arch" != "$token" ]; then clip=(--clip 0.001) d=192; fi
  t="$out/$token"
  rm -rf "$t" && mkdir -p "$t"
  # shellcheck disable=SC2086 # SAEC_FLAGS: words, one per flag
  "$bin/saec" "$examples/$arch.sae" -D d=$d -D n=4096 ${SAEC_FLAGS:-} -o "$t/lib.so"
  "$bin/sae" init "$t/lib.so" --seed 1 --out "$t/init" > /dev/null
  "$python" "$inputs/saeref.py" randomize "$t/init" "$t/ckpt" "$t/x.npy" 64 7
  extra=() ref=()
  if [ "$arch" = grad_topk ]; then
    "$python" -c "import numpy as np; np.save('$t/g.npy', np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32))"
    extra=(--input-data "g=$t/g.npy")
    ref=(--grad "$t/g.npy")
  fi
  "$bin/sae" train "$t/lib.so" --init "$t/ckpt" --data "$t/x.npy" --steps 1 \
    --batch 64 --no-shuffle --lr 1e-3 --eps 1e-8 --out "$t/out" "${extra[@]}" "${clip[@]}" \
    > "$t/summary.json" 2> "$t/progress.txt"
  echo "$token: $("$python" "$inputs/torchref.py" check-step "$arch" "$t/ckpt" "$t/x.npy" 64 "$t/out" --noise-allowance 10 "${ref[@]}" | tail -1)"
done
