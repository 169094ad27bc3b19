"""GPU benchmark: 1.5M x 1.5M cells, 50 dimensions, k = 30, end to end on one GPU.

End to end = neighbour search (cupy backend), mapping matrix, label transfer with confidence and
UMAP transfer. Run on a machine with an NVIDIA GPU and the ``gpu`` extra::

    python benchmarks/gpu.py --n 1500000 --dim 50 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_500_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from synthetic import make_pair

    from napari_cellmapper import CellMapper
    from napari_cellmapper.core.neighbors import gpu_available

    if not gpu_available():
        sys.exit("No GPU (cupy + CUDA device) available: nothing to measure.")
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    reference, query = make_pair(args.n, args.n, dim=args.dim)
    times = []
    for _ in range(args.repeats + 1):  # the first run warms up CUDA kernels
        q = query.copy()
        start = time.perf_counter()
        CellMapper(q, reference).fit(
            "X_joint",
            obs_keys="cell_type",
            obsm_keys="X_umap",
            n_neighbors=args.k,
            backend="cupy",
            progress=False,
        )
        times.append(time.perf_counter() - start)
    runs = times[1:]
    acc = (q.obs["cell_type_pred"].astype(str) == q.obs["cell_type_true"].astype(str)).mean()
    print(
        f"{name}: {args.n:,} x {args.n:,}, {args.dim} dims, k={args.k}: median {statistics.median(runs):.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in runs)}; warm-up {times[0]:.2f} s), accuracy {acc:.4f}"
    )


if __name__ == "__main__":
    main()
