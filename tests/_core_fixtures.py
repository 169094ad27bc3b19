"""Small synthetic data sets for the core tests (no conftest: fixtures live here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

CELLTYPES = ["B", "T", "NK", "Mono"]
COLORS = ["#111111", "#222222", "#333333", "#444444"]


def clustered(n_ref: int, n_query: int, dim: int, n_clusters: int, seed: int = 0, spread: float = 8.0):
    """Gaussian clusters: (reference, query, reference labels, query labels), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(n_clusters, dim))
    lr = rng.integers(0, n_clusters, n_ref)
    lq = rng.integers(0, n_clusters, n_query)
    ref = (centres[lr] + rng.normal(size=(n_ref, dim))).astype(np.float32)
    qry = (centres[lq] + rng.normal(size=(n_query, dim))).astype(np.float32)
    return ref, qry, lr, lq


def make_pair(
    n_query: int = 60,
    n_ref: int = 120,
    n_genes: int = 40,
    dim: int = 8,
    seed: int = 0,
    sparse_x: bool = True,
) -> tuple[AnnData, AnnData]:
    """(query, reference) sharing cell types: X_joint, X_umap, counts in X, labelled reference."""
    rng = np.random.default_rng(seed)
    n_types = len(CELLTYPES)
    centres = rng.normal(scale=6.0, size=(n_types, dim))
    umap_centres = rng.normal(scale=10.0, size=(n_types, 2))
    # every type owns a block of marker genes
    rates = np.full((n_types, n_genes), 0.3)
    block = n_genes // n_types
    for t in range(n_types):
        rates[t, t * block : (t + 1) * block] = 6.0

    def build(n: int, prefix: str, labels: np.ndarray) -> AnnData:
        counts = rng.poisson(rates[labels]).astype(np.float32)
        x = sparse.csr_matrix(counts) if sparse_x else counts
        adata = AnnData(X=x)
        adata.obs_names = [f"{prefix}{i}" for i in range(n)]
        adata.var_names = [f"gene{j}" for j in range(n_genes)]
        adata.obsm["X_joint"] = (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)
        return adata

    lr = np.arange(n_ref) % n_types
    lq = rng.integers(0, n_types, n_query)
    reference = build(n_ref, "ref", lr)
    query = build(n_query, "qry", lq)
    reference.obs["celltype"] = pd.Categorical.from_codes(lr, categories=CELLTYPES)
    reference.uns["celltype_colors"] = np.array(COLORS, dtype=object)
    reference.obs["score"] = (lr * 10.0 + rng.normal(scale=0.1, size=n_ref)).astype(np.float64)
    reference.obs["batch"] = pd.Categorical(np.where(np.arange(n_ref) % 2 == 0, "b0", "b1"))
    reference.obsm["X_umap"] = (umap_centres[lr] + rng.normal(scale=0.5, size=(n_ref, 2))).astype(np.float32)
    query.obs["true_celltype"] = pd.Categorical.from_codes(lq, categories=CELLTYPES)
    return query, reference


def snapshot(adata: AnnData) -> dict:
    """Deep copy of everything a mapping could touch, for before/after comparison."""
    x = adata.X
    return {
        "obs": adata.obs.copy(deep=True),
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "obsm": {
            k: v.copy() if isinstance(v, pd.DataFrame) else np.array(v, copy=True)
            for k, v in adata.obsm.items()
        },
        "uns_keys": sorted(adata.uns.keys()),
        "uns": {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in adata.uns.items()},
        "X": x.copy() if x is not None else None,
        "layers": sorted(adata.layers.keys()),
        "shape": adata.shape,
    }


def assert_unchanged(adata: AnnData, before: dict) -> None:
    """Fail if anything recorded by :func:`snapshot` differs now."""
    assert adata.shape == before["shape"]
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    assert adata.obs_names.equals(before["obs_names"])
    assert adata.var_names.equals(before["var_names"])
    assert sorted(adata.obsm.keys()) == sorted(before["obsm"].keys())
    for k, v in before["obsm"].items():
        now = adata.obsm[k]
        if isinstance(v, pd.DataFrame):
            pd.testing.assert_frame_equal(now, v)
        else:
            np.testing.assert_array_equal(np.asarray(now), v)
    assert sorted(adata.uns.keys()) == before["uns_keys"]
    for k, v in before["uns"].items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(adata.uns[k], v)
    assert sorted(adata.layers.keys()) == before["layers"]
    x_now, x_before = adata.X, before["X"]
    if x_before is None:
        assert x_now is None
    elif sparse.issparse(x_before):
        assert sparse.issparse(x_now)
        assert (x_now != x_before).nnz == 0
    else:
        np.testing.assert_array_equal(x_now, x_before)
