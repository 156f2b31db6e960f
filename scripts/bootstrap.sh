#!/usr/bin/env bash
# Installs every Debian package that saec's build, tests and demo need.
# Idempotent: installs only what is missing (after `apt-get update`).
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ gcc
  llvm-22-dev llvm-22-tools libmlir-22-dev mlir-22-tools libomp-22-dev
  antlr4 libantlr4-runtime-dev
  libgtest-dev nlohmann-json3-dev zlib1g-dev
  python3 python3-numpy python3-torch
  dataset-fashion-mnist
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "bootstrap: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
