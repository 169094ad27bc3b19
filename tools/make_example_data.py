"""Regenerate ``src/napari_cellmapper/_data/pbmc_example.h5ad`` (dev only: needs scanpy).

Source: scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765 genes, log-normalised and scaled;
scanpy is BSD-3-Clause, the 10x Genomics PBMC data are CC-BY 4.0). The file keeps ``X``
(float32), ``obsm["X_pca"]``, ``obsm["X_umap"]``, ``obs["cell_type"]`` (from ``bulk_labels``,
categorical, with ``uns["cell_type_colors"]``) and ``obs["split"]``: a deterministic stratified
split, ~70% "reference" / ~30% "query" within every cell type (seed 0).

Usage::

    PYTHONPATH=src .venv/bin/python tools/make_example_data.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_cellmapper" / "_data" / "pbmc_example.h5ad"
QUERY_FRACTION = 0.3
SEED = 0


def stratified_split(labels: pd.Categorical, fraction: float, seed: int) -> np.ndarray:
    """ "query" for round(fraction * n) random cells of every category, "reference" for the rest."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "reference", dtype=object)
    codes = np.asarray(labels.codes)
    for code in range(len(labels.categories)):
        idx = np.flatnonzero(codes == code)
        n_query = int(round(fraction * idx.size))
        split[rng.choice(idx, size=n_query, replace=False)] = "query"
    return split


def build() -> AnnData:
    """The compact example AnnData (reference and query cells together, told apart by obs["split"])."""
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    labels = pd.Categorical(src.obs["bulk_labels"])
    split = stratified_split(labels, QUERY_FRACTION, SEED)
    obs = pd.DataFrame(
        {
            "cell_type": labels,
            "split": pd.Categorical(split, categories=["reference", "query"]),
        },
        index=pd.Index(src.obs_names.astype(str), name=None),
    )
    var = pd.DataFrame(index=pd.Index(src.var_names.astype(str), name=None))
    out = AnnData(
        X=np.asarray(src.X, dtype=np.float32),
        obs=obs,
        var=var,
        obsm={
            "X_pca": np.asarray(src.obsm["X_pca"], dtype=np.float32),
            "X_umap": np.asarray(src.obsm["X_umap"], dtype=np.float32),
        },
    )
    out.uns["cell_type_colors"] = [str(c) for c in src.uns["bulk_labels_colors"]]
    out.uns["source"] = {
        "dataset": "scanpy.datasets.pbmc68k_reduced",
        "license": "scanpy BSD-3-Clause; 10x Genomics PBMC data CC-BY 4.0",
        "split": "stratified by bulk_labels",
        "query_fraction": QUERY_FRACTION,
        "seed": SEED,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    adata = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(args.out, compression="gzip", compression_opts=9)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {adata.n_obs} cells)")


if __name__ == "__main__":
    main()
