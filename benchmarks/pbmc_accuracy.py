"""Built-in pbmc example: napari-cellmapper and cellmapper with the same split, representation and k.

.venv-bench/bin/python benchmarks/pbmc_accuracy.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from napari_cellmapper import CellMapper  # noqa: E402
from napari_cellmapper.core.metrics import accuracy, macro_f1  # noqa: E402
from napari_cellmapper.datasets import pbmc_example  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    print("| tool | use_rep | k | kernel | accuracy | macro F1 |\n|---|---|---|---|---|---|")
    for k in (15, 30):
        for kernel in ("gauss", "scarches", "hnoca"):
            reference, query = pbmc_example()
            CellMapper(query, reference).fit(
                "X_pca", obs_keys="cell_type", n_neighbors=k, kernel=kernel, progress=False
            )
            truth, pred = query.obs["cell_type_true"], query.obs["cell_type_pred"]
            print(
                f"| napari-cellmapper | X_pca | {k} | {kernel} | {accuracy(truth, pred):.3f} "
                f"| {macro_f1(truth, pred):.3f} |"
            )
            try:
                from cellmapper import CellMapper as ReferenceCellMapper
            except ImportError:
                continue
            reference, query = pbmc_example()
            cm = ReferenceCellMapper(query, reference)
            cm.compute_neighbors(
                n_neighbors=k, use_rep="X_pca", knn_method="sklearn", only_yx=kernel != "hnoca"
            )
            cm.compute_mapping_matrix(kernel_method=kernel)
            cm.map_obs("cell_type")
            truth, pred = query.obs["cell_type_true"], query.obs["cell_type_pred"]
            print(
                f"| cellmapper 0.2.6 | X_pca | {k} | {kernel} | {accuracy(truth, pred):.3f} "
                f"| {macro_f1(truth, pred):.3f} |"
            )


if __name__ == "__main__":
    main()
