#!/usr/bin/env bash
# The main job on its embedded default: install what is missing, build,
# compile examples/topk.sae for Fashion-MNIST (d = 784 pixels, n = 4096
# latents, k = 32) into a shared library, train it with `sae train` on the
# 60,000 training images from Debian's dataset-fashion-mnist (5 epochs of
# batches of 1024, Adam at lr 1e-3, progress on stderr), encode the training
# images with the trained model, and report the metrics (MSE, FVU, L0, dead
# and dense latents, cosine) on the 10,000 test images.
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

echo "== training on $data (5 epochs, batch 1024, lr 1e-3, seed 0)"
rm -rf "$out/checkpoint"
"$bin/sae" train "$out/libtopk_fmnist.so" --data "$data" --batch 1024 \
  --lr 1e-3 --tokens 300000 --seed 0 --out "$out/checkpoint" \
  --metrics-json "$out/train_metrics.json"

echo "== encoding $data"
"$bin/sae" encode "$out/libtopk_fmnist.so" --checkpoint "$out/checkpoint" \
  --input "$data" --output "$out/codes.npz" --sparse
echo "wrote sparse codes (values and indices, 60000 x 32) to $out/codes.npz"

echo "== metrics of the trained model on the 10,000 test images"
"$bin/sae" eval "$out/libtopk_fmnist.so" --checkpoint "$out/checkpoint" \
  --data /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
