"""Synthetic clustered workload of the scale benchmark (shared by every runner)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

N_TYPES = 20
DIM = 30
N_GENES = 500
GENES_PER_TYPE = 100


def make_pair(
    n_ref: int,
    n_query: int,
    *,
    dim: int = DIM,
    n_types: int = N_TYPES,
    structure: str = "structured",
    seed: int = 0,
    query_seed: int | None = None,
):
    """(reference, query) AnnData: clustered joint embedding, labels, UMAP, sparse expression.

        ``structure="structured"`` (default) models a learned latent space: each cell type is a
        centre plus variation along its own 4-dimensional subspace (cell states) plus isotropic noise,
        so the data has a low intrinsic dimension, as scVI/PCA latent spaces do.
        ``structure="isotropic"`` is the stress case: overlapping isotropic gaussian clusters that fill
        all ``dim`` dimensions, the worst case for any space-partitioning index. Each type expresses its
    own ``GENES_PER_TYPE`` of ``N_GENES`` genes.
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_types, 3.0))
    umap_centres = rng.uniform(-10, 10, size=(n_types, 2)).astype(np.float32)
    programs = np.stack([rng.choice(N_GENES, GENES_PER_TYPE, replace=False) for _ in range(n_types)])
    if structure == "isotropic":
        centres = rng.normal(0, 0.35, size=(n_types, dim)).astype(np.float32)
        spreads = rng.uniform(0.3, 0.5, size=n_types).astype(np.float32)
        bases = None
    elif structure == "structured":
        centres = rng.normal(0, 0.3, size=(n_types, dim)).astype(np.float32)
        bases = np.stack([np.linalg.qr(rng.normal(size=(dim, 4)))[0].T for _ in range(n_types)]).astype(
            np.float32
        )
        spreads = np.full(n_types, 0.2, dtype=np.float32)
    else:
        raise ValueError(f"structure must be 'structured' or 'isotropic', not {structure!r}")

    def make(n: int, rng: np.random.Generator) -> AnnData:
        types = rng.choice(n_types, size=n, p=weights)
        rep = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, 100_000):  # bounded temporaries at 1M+ cells
            t = types[start : start + 100_000]
            noise = rng.normal(0, 1, size=(t.size, dim)).astype(np.float32) * spreads[t, None]
            block = centres[t] + noise
            if bases is not None:
                z = rng.normal(0, 1, size=(t.size, 4)).astype(np.float32)
                block += np.einsum("nl,nld->nd", z, bases[t])
            rep[start : start + t.size] = block
        umap = umap_centres[types] + rng.normal(0, 0.8, size=(n, 2)).astype(np.float32)
        # each cell expresses ~30% of its type's program with Poisson counts
        mask = rng.random((n, GENES_PER_TYPE)) < 0.3
        rows = np.repeat(np.arange(n), mask.sum(axis=1))
        cols = programs[types][mask]
        vals = rng.poisson(2.0, size=rows.size).astype(np.float32) + 1
        x = sparse.csr_matrix((vals, (rows, cols)), shape=(n, N_GENES), dtype=np.float32)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(types, [f"type_{i:02d}" for i in range(n_types)])},
            index=pd.RangeIndex(n).astype(str),
        )
        adata = AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
        adata.obsm["X_joint"] = rep
        adata.obsm["X_umap"] = umap
        return adata

    reference = make(n_ref, rng)
    query = make(n_query, np.random.default_rng(seed + 1 if query_seed is None else query_seed))
    query.obs_names = "q" + query.obs_names
    query.obs["cell_type_true"] = query.obs.pop("cell_type")
    del query.obsm["X_umap"]
    return reference, query
