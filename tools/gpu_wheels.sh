#!/usr/bin/env bash
# Wheels that the GPU machine lacks (it has numpy, scipy, pandas, numba, h5py, cupy; it reaches no
# package registry), downloaded here into .gpu-wheels/ (git-ignored) for the device tool's `carry`.
# About 25 MB with faiss-cpu (used only to check the GPU result against the CPU path); pytest is there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-wheels
rm -rf "$dest" && mkdir -p "$dest"
pkgs=(anndata array-api-compat legacy-api-wrap natsort zarr numcodecs donfig google-crc32c pyyaml tqdm
      session-info2 scverse-misc pydantic pydantic-core pydantic-settings typing-inspection annotated-types
      python-dotenv msgspec typing-extensions packaging platformdirs faiss-cpu)
python=$(tools/find_python.sh)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "${pkgs[@]}"
du -sh "$dest"
