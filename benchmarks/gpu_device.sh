#!/usr/bin/env bash
# Run on the GPU machine, from the repository root, with .gpu-wheels carried (tools/gpu_wheels.sh):
# installs the carried wheels into a scratch folder, runs the GPU tests, then benchmarks/gpu.py.
# Results land in $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$site" .gpu-wheels/*.whl || exit 1
export PYTHONPATH="$site:$PWD/src:$PWD/benchmarks"
# the numba kernels (labels) compile in run 0, beside the CUDA kernels, instead of running on NumPy
# while a background process compiles them (the default policy for a fresh install, core/jit.py)
export NAPARI_CELLMAPPER_JIT=${NAPARI_CELLMAPPER_JIT:-always}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())" \
  | tee -a "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_search_cupy_index.py tests/test_search_cupy_ivf.py \
  tests/test_transfer_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
python3 benchmarks/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_stdout.txt"
