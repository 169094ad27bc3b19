"""The label transfer with the label kernels and with the NumPy steps, alternating in one process.

Synthetic pair (``synthetic.make_pair``: 50 dimensions, 20 types), k = 30, gauss kernel, default
labels (LDA head, calibration). After a warm-up transfer (kernels loaded, the calibration's
reference search cached), ``transfer(obs_keys="cell_type")`` runs ``--repeats`` times each way::

    PYTHONPATH=src .venv/bin/python benchmarks/label_kernels.py --cells 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    # compiled here if need be (in the warm-up transfer): under the default policy, kernels not yet
    # in the cache would leave both rows on NumPy
    os.environ.setdefault("NAPARI_CELLMAPPER_JIT", "always")
    from synthetic import make_pair

    from napari_cellmapper import CellMapper
    from napari_cellmapper.core import label_kernels

    reference, query = make_pair(args.cells, args.cells, dim=50, n_types=20, seed=1)
    mapper = CellMapper(query, reference)
    mapper.compute_neighbors("X_joint", 30, progress=False)
    mapper.compute_mapping_matrix("gauss")
    mapper.transfer(obs_keys="cell_type", progress=False)
    small, times, outputs = label_kernels.SMALL, {"numpy": [], "kernels": []}, {}
    try:
        for _ in range(args.repeats):
            for mode in times:
                label_kernels.SMALL = small if mode == "kernels" else np.iinfo(np.int64).max
                start = time.perf_counter()
                mapper.transfer(obs_keys="cell_type", progress=False)
                times[mode].append(time.perf_counter() - start)
                obs = mapper.query.obs
                outputs[mode] = (obs["cell_type_pred"].to_numpy(), obs["cell_type_conf"].to_numpy())
    finally:
        label_kernels.SMALL = small
    for mode, runs in times.items():
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"{args.cells:,} cells, {mode:8s}: median {statistics.median(runs):.3f} s ({listed})")
    same = np.mean(outputs["numpy"][0] == outputs["kernels"][0])
    gap = np.abs(outputs["numpy"][1] - outputs["kernels"][1]).max()
    print(f"same predictions: {same:.4f}; largest confidence difference: {gap:.2g}")


if __name__ == "__main__":
    main()
