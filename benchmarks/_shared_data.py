"""Loaders for the real data sets in ``../shared/data`` (never copied into the project)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NOT_CELL_TYPES = ("Ambiguous", "Unstable")


def _counts_csv(path: Path) -> tuple[sparse.csr_matrix, list[str], list[str]]:
    """A genes x cells CSV (first column: gene) as a cells x genes CSR matrix."""
    table = pd.read_csv(path, index_col=0)
    return sparse.csr_matrix(table.to_numpy(dtype=np.float32).T), list(table.columns), list(table.index)


def merfish_hypothalamus(data_dir: Path = DEFAULT_DATA) -> tuple[AnnData, AnnData]:
    """(reference, query) of the MERFISH hypothalamus set, raw counts, labels as in its README.

    The reference drops the ``Ambiguous``/``Unstable`` pseudo-types; the query carries the ground
    truth in ``obs["cell_type_true"]`` (NaN for ``Ambiguous`` cells, which are not evaluated).
    """
    root = Path(data_dir) / "merfish_hypothalamus"
    x, cells, genes = _counts_csv(root / "spacexr/Reference/Merfish_Ref/counts.csv")
    types = pd.read_csv(root / "spacexr/Reference/Merfish_Ref/cell_types.csv", index_col=0)["x"]
    reference = AnnData(
        X=x, obs=pd.DataFrame(index=pd.Index(cells, name=None)), var=pd.DataFrame(index=genes)
    )
    reference.obs["cell_type"] = pd.Categorical(types.reindex(reference.obs_names).astype(str))
    reference = reference[~reference.obs["cell_type"].isin(NOT_CELL_TYPES)].copy()
    reference.obs["cell_type"] = reference.obs["cell_type"].cat.remove_unused_categories()
    xq, qcells, qgenes = _counts_csv(root / "spacexr/SpatialRNA/MerfishVignette/counts.csv")
    query = AnnData(X=xq, obs=pd.DataFrame(index=pd.Index(qcells)), var=pd.DataFrame(index=qgenes))
    coords = pd.read_csv(root / "spacexr/SpatialRNA/MerfishVignette/coords.csv", index_col=0)
    query.obsm["spatial"] = coords.reindex(query.obs_names)[["x", "y"]].to_numpy()
    truth = pd.read_csv(root / "ground_truth_labels.csv", index_col="cell_id").reindex(query.obs_names)
    label = truth["cell_type_coarse_ref_vocab"].where(truth["cell_type_ground_truth"] != "Ambiguous")
    query.obs["cell_type_true"] = label.to_numpy()
    return reference, query
