"""Accuracy on real data: MERFISH hypothalamus mapped from counts alone (``use_rep=None``).

Reference: scRNA-seq counts, 134 genes (``Ambiguous``/``Unstable`` dropped); query: 750 MERFISH
cells with independent ground truth (``Ambiguous`` query cells not evaluated). Prints accuracy and
macro F1 for napari-cellmapper's built joint embedding, and, when cellmapper is installed (the
benchmark environment), cellmapper's own fallbacks and a nearest-centroid classifier, in one run.

    .venv-bench/bin/python benchmarks/merfish_accuracy.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _shared_data import DEFAULT_DATA, merfish_hypothalamus  # noqa: E402

from napari_cellmapper import CellMapper  # noqa: E402
from napari_cellmapper.core.metrics import accuracy, macro_f1  # noqa: E402


def _score(truth, pred) -> tuple[float, float]:
    keep = truth.notna().to_numpy()
    t, p = truth[keep].astype(str), np.asarray(pred)[keep].astype(str)
    return accuracy(t, p), macro_f1(t, p)


def ours(reference, query, **kwargs) -> tuple[float, float]:
    q = query.copy()
    CellMapper(q, reference).fit(None, obs_keys="cell_type", progress=False, **kwargs)
    return _score(q.obs["cell_type_true"], q.obs["cell_type_pred"])


def nearest_centroid(reference, query) -> tuple[float, float]:
    """z-scored log-normalised genes, nearest class centroid (the README's baseline)."""

    def prep(a):
        x = a.X.toarray()
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
        sd = x.std(0)
        return np.divide(x - x.mean(0), sd, out=np.zeros_like(x), where=sd > 0)

    r, q = prep(reference), prep(query)
    types = reference.obs["cell_type"].cat.categories
    centroids = np.stack([r[(reference.obs["cell_type"] == t).to_numpy()].mean(0) for t in types])
    pred = types[np.argmin(((q[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    return _score(query.obs["cell_type_true"], pred)


def cellmapper_reference(reference, query, fallback: str, kernel: str) -> tuple[float, float] | None:
    try:
        from cellmapper import CellMapper as ReferenceCellMapper
    except ImportError:
        return None
    import scanpy as sc

    r, q = reference.copy(), query.copy()
    r = r[np.asarray(r.X.sum(1)).ravel() > 0].copy()
    for a in (r, q):
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
    cm = ReferenceCellMapper(q, r)
    cm.compute_neighbors(n_neighbors=30, use_rep=None, fallback_representation=fallback)
    cm.compute_mapping_matrix(kernel_method=kernel)
    cm.map_obs("cell_type")
    return _score(q.obs["cell_type_true"], q.obs["cell_type_pred"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    reference, query = merfish_hypothalamus(args.data)
    n_eval = int(query.obs["cell_type_true"].notna().sum())
    print(
        f"MERFISH hypothalamus: reference {reference.n_obs} cells, query {query.n_obs} ({n_eval} evaluated)"
    )
    print("| method | accuracy | macro F1 |\n|---|---|---|")
    rows = [
        ("napari-cellmapper, use_rep=None (defaults: PCA, k=30, gauss)", ours(reference, query)),
        ("napari-cellmapper, use_rep=None, joint='cca'", ours(reference, query, joint="cca")),
        ("napari-cellmapper, use_rep=None, kernel='hnoca'", ours(reference, query, kernel="hnoca")),
        ("nearest centroid (z-scored genes)", nearest_centroid(reference, query)),
    ]
    for fallback in ("joint_pca", "fast_cca"):
        res = cellmapper_reference(reference, query, fallback, "gauss")
        if res is not None:
            rows.append((f"cellmapper {fallback}, gauss, k=30", res))
    for name, (acc, f1) in rows:
        print(f"| {name} | {acc:.3f} | {f1:.3f} |")


if __name__ == "__main__":
    main()
