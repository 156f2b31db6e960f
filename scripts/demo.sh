#!/usr/bin/env bash
# The main job on its embedded default: install what is missing, build,
# compile examples/topk.sae for Fashion-MNIST (d = 784 pixels, n = 4096
# latents, k = 32) into a shared library, initialise it, encode the 60,000
# training images from Debian's dataset-fashion-mnist, and report the
# metrics (MSE, FVU, L0, dead and dense latents, cosine) on the test images. Training arrives with `sae train`; until then the
# model is the seeded initialisation.
#
# Environment: SAE_DEMO_DIR (default build/demo) holds everything written.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh"

bin="$root/build/bin"
out="${SAE_DEMO_DIR:-$root/build/demo}"
data=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
mkdir -p "$out"

echo "== compiling examples/topk.sae for Fashion-MNIST (d=784, n=4096, k=32)"
"$bin/saec" "$root/examples/topk.sae" -D d=784 -D n=4096 -o "$out/libtopk_fmnist.so"
"$bin/sae" info "$out/libtopk_fmnist.so"

echo "== initialising the parameters (seed 0)"
"$bin/sae" init "$out/libtopk_fmnist.so" --seed 0 --out "$out/checkpoint"

echo "== encoding $data"
"$bin/sae" encode "$out/libtopk_fmnist.so" --checkpoint "$out/checkpoint" \
  --input "$data" --output "$out/codes.npz" --sparse
echo "wrote sparse codes (values and indices, 60000 x 32) to $out/codes.npz"

echo "== metrics of the initialised model on the 10,000 test images"
"$bin/sae" eval "$out/libtopk_fmnist.so" --checkpoint "$out/checkpoint" \
  --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
