"""Spatial niches: clusters of cells by the cell-type composition of their neighbourhood.

1. A spatial neighbour graph on the query coordinates (``n_neighbors`` nearest, or all cells
   within ``radius`` coordinate units), the cell itself included, rows normalised to 1.
2. Neighbourhood composition ``F = W^h P`` of the transferred cell-type probabilities ``P``
   (``obsm[f"{key}_proba"]``, or a one-hot of predicted labels), ``h = n_hops``.
3. k-means (seeded; ``MiniBatchKMeans`` for large n) into ``n_niches`` niches, numbered by size,
   and a niche x cell-type composition table (mean ``P`` of the member cells, rows sum to 1).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_cellmapper.core.progress import Progress, chunk_bounds, run_steps
from napari_cellmapper.core.validation import CellMapperInputError, storable_name

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "NicheResult",
    "add_niches",
    "categorical_palette",
    "cluster_niches",
    "compute_niches",
    "describe_niches",
    "iter_compute_niches",
    "neighborhood_composition",
    "niche_composition",
    "one_hot",
    "spatial_graph",
]

#: above this many cells, k-means is fitted on a random subsample of this size
MAX_FIT_CELLS = 100_000


@dataclass(frozen=True)
class NicheResult:
    """Niches of the query cells.

    Attributes
    ----------
    labels
        Categorical niche per cell; categories ``"0"`` .. ``"n-1"`` numbered by decreasing size.
    composition
        Niche x cell-type table: mean probability of each type among the niche's cells; rows sum
        to 1 (a niche whose cells all have zero probabilities has a zero row).
    features
        (n_cells, n_types) float32 neighbourhood composition the clustering used.
    centers
        (n_niches, n_types) cluster centres in feature space, rows in category order.
    colors
        Hex colour per category.
    """

    labels: pd.Categorical
    composition: pd.DataFrame
    features: np.ndarray
    centers: np.ndarray
    colors: tuple[str, ...]


def categorical_palette(n: int) -> list[str]:
    """``n`` distinct hex colours (scanpy's defaults, from :mod:`napari_cellmapper.core.palettes`)."""
    from napari_cellmapper.core.palettes import default_palette

    return [str(c) for c in default_palette(int(n))]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _check_coords(coords: Any) -> np.ndarray:
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3) or xy.shape[0] == 0:
        raise CellMapperInputError(
            f"coords must be an (n_cells, 2) or (n_cells, 3) array of positions, got shape {xy.shape}."
        )
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise CellMapperInputError(
            f"coords contain NaN or inf for {int(bad.sum())} of {len(xy)} cells; drop those cells or give "
            "them positions before computing niches."
        )
    return xy


def one_hot(labels: Any, categories: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """One-hot float32 matrix of labels (NaN / unknown labels give a zero row) and its columns."""
    if isinstance(labels, pd.Series) and isinstance(labels.dtype, pd.CategoricalDtype):
        labels = labels.array
    if isinstance(labels, pd.Categorical):
        cat = labels
    else:
        cat = pd.Categorical(np.asarray(labels, dtype=object))
    if categories is not None:
        cat = pd.Categorical(np.asarray(cat, dtype=object), categories=list(categories))
    codes = np.asarray(cat.codes, dtype=np.int64)
    names = [str(c) for c in cat.categories]
    out = np.zeros((len(codes), len(names)), dtype=np.float32)
    ok = codes >= 0
    out[np.flatnonzero(ok), codes[ok]] = 1.0
    return out, names


def _check_proba(proba: Any, n_cells: int, cell_types: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if isinstance(proba, pd.DataFrame):
        names = [str(c) for c in proba.columns] if cell_types is None else list(cell_types)
        values = proba.to_numpy(dtype=np.float32)
    elif isinstance(proba, pd.Categorical | pd.Series) or (not sp.issparse(proba) and np.ndim(proba) == 1):
        values, names = one_hot(proba, cell_types)
    else:
        values = proba.toarray() if sp.issparse(proba) else np.asarray(proba)
        if values.dtype.kind not in "fiub":
            raise CellMapperInputError(
                "proba must be numeric probabilities (n_cells, n_types) or 1-D labels, "
                f"got dtype {values.dtype}."
            )
        values = np.asarray(values, dtype=np.float32)
        ncol = values.shape[-1] if values.ndim == 2 else 0
        names = list(cell_types) if cell_types is not None else [str(i) for i in range(ncol)]
    if values.ndim != 2 or values.shape[0] != n_cells:
        raise CellMapperInputError(
            f"proba must be an (n_cells, n_types) matrix with one row per coordinate ({n_cells}), got shape "
            f"{values.shape}; pass obsm['<key>_proba'] of the same query."
        )
    if len(names) != values.shape[1]:
        raise CellMapperInputError(
            f"cell_types has {len(names)} names but proba has {values.shape[1]} columns."
        )
    values = np.where(np.isfinite(values), values, 0.0).astype(np.float32, copy=False)
    if (values < 0).any():
        raise CellMapperInputError("proba contains negative values; pass probabilities or a one-hot matrix.")
    return np.ascontiguousarray(values), names


# --------------------------------------------------------------------------------------------
# graph and features
# --------------------------------------------------------------------------------------------
def spatial_graph(
    coords: Any,
    *,
    n_neighbors: int = 15,
    radius: float | None = None,
    include_self: bool = True,
    chunk_size: int = 200_000,
    workers: int = -1,
) -> sp.csr_matrix:
    """Row-normalised spatial neighbour graph (float32 CSR, n x n).

    Parameters
    ----------
    coords
        (n, 2) or (n, 3) positions.
    n_neighbors
        Nearest neighbours per cell (the cell itself counts as one when ``include_self``).
    radius
        If given, all cells within this distance (coordinate units) instead of ``n_neighbors``.
    include_self
        Keep the cell in its own neighbourhood.
    """
    from scipy.spatial import cKDTree

    xy = _check_coords(coords)
    n = xy.shape[0]
    tree = cKDTree(xy)
    if radius is None:
        if n_neighbors < 1:
            raise CellMapperInputError(f"n_neighbors must be >= 1, got {n_neighbors}.")
        k = min(int(n_neighbors) + (0 if include_self else 1), n)
        indices = np.empty((n, k), dtype=np.int64)
        for start, stop in chunk_bounds(n, chunk_size):
            _, idx = tree.query(xy[start:stop], k=k, workers=workers)
            indices[start:stop] = np.asarray(idx, dtype=np.int64).reshape(stop - start, k)
        valid = np.ones((n, k), dtype=bool)
        if not include_self:
            valid = indices != np.arange(n)[:, None]
            # keep the k - 1 nearest others (drop the farthest where self was not found)
            extra = valid.sum(axis=1) > k - 1
            valid[extra, -1] = False
    else:
        if not radius > 0:
            raise CellMapperInputError(f"radius must be > 0 coordinate units, got {radius}.")
        counts = tree.query_ball_point(xy, r=float(radius), workers=workers, return_length=True)
        k = int(counts.max())
        indices = np.full((n, k), n, dtype=np.int64)
        step = max(1, min(chunk_size, 20_000_000 // max(k, 1)))
        for start, stop in chunk_bounds(n, step):
            _, idx = tree.query(xy[start:stop], k=k, distance_upper_bound=float(radius), workers=workers)
            indices[start:stop] = np.asarray(idx, dtype=np.int64).reshape(stop - start, k)
        valid = indices < n
        if not include_self:
            valid &= indices != np.arange(n)[:, None]
    return _row_normalised(indices, valid, n)


def _row_normalised(indices: np.ndarray, valid: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR with ``1 / count`` on each valid entry of an (n, k) index table."""
    counts = valid.sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(n, int(indptr[-1])) < np.iinfo(np.int32).max else np.int64
    cols = indices[valid].astype(idx_dtype)
    inv = np.zeros(n, dtype=np.float32)
    np.divide(1.0, counts, out=inv, where=counts > 0)
    data = np.repeat(inv, counts)
    return sp.csr_matrix((data, cols, indptr.astype(idx_dtype)), shape=(n, n))


def neighborhood_composition(graph: sp.spmatrix, proba: np.ndarray, n_hops: int = 1) -> np.ndarray:
    """``W^n_hops @ proba`` with ``W`` the row-normalised graph (float32, n x n_types)."""
    if n_hops < 1:
        raise CellMapperInputError(f"n_hops must be >= 1, got {n_hops}.")
    if graph.shape[0] != proba.shape[0] or graph.shape[1] != proba.shape[0]:
        raise CellMapperInputError(
            f"graph {graph.shape} and proba {proba.shape} disagree on the number of cells."
        )
    features = np.asarray(proba, dtype=np.float32)
    for _ in range(int(n_hops)):
        features = np.asarray(graph @ features, dtype=np.float32)
    return features


def cluster_niches(
    features: np.ndarray,
    n_niches: int,
    *,
    seed: int = 0,
    minibatch: bool = False,
    max_fit_cells: int = MAX_FIT_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the features; labels renumbered by decreasing cluster size.

    Up to ``max_fit_cells`` cells: ``KMeans`` (4 seeded inits) on all cells. Above: ``KMeans`` is
    fitted on a seeded random subsample of ``max_fit_cells`` cells and every cell is assigned to
    the nearest centre (faster and more stable than MiniBatchKMeans on 1M cells in our tests);
    ``minibatch=True`` uses ``MiniBatchKMeans`` on all cells instead.

    Returns ``(labels, centers)`` with int64 labels in ``[0, n_niches)``.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = features.shape[0]
    if not 1 <= n_niches <= n:
        raise CellMapperInputError(
            f"n_niches must be between 1 and the number of cells ({n}), got {n_niches}; lower n_niches."
        )
    x = np.ascontiguousarray(features, dtype=np.float32)
    if minibatch:
        model = MiniBatchKMeans(
            n_clusters=n_niches, random_state=seed, batch_size=min(8192, n), n_init=3, max_no_improvement=20
        )
        raw = model.fit_predict(x)
    else:
        model = KMeans(n_clusters=n_niches, random_state=seed, n_init=4)
        if n > max_fit_cells:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=int(max_fit_cells), replace=False))
            model.fit(x[sample])
            raw = np.concatenate([model.predict(x[a:b]) for a, b in chunk_bounds(n, 500_000)])
        else:
            raw = model.fit_predict(x)
    raw = np.asarray(raw, dtype=np.int64)
    sizes = np.bincount(raw, minlength=n_niches)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty(n_niches, dtype=np.int64)
    rank[order] = np.arange(n_niches)
    return rank[raw], np.asarray(model.cluster_centers_, dtype=np.float32)[order]


def niche_composition(
    labels: np.ndarray, proba: np.ndarray, n_niches: int, cell_types: Sequence[str]
) -> pd.DataFrame:
    """Niche x cell-type table: mean ``proba`` of each niche's cells, rows normalised to sum 1."""
    onehot = sp.csr_matrix(
        (np.ones(len(labels), np.float32), (np.arange(len(labels)), labels)), shape=(len(labels), n_niches)
    )
    sums = np.asarray((onehot.T @ proba), dtype=np.float64)
    total = sums.sum(axis=1, keepdims=True)
    table = np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)
    return pd.DataFrame(
        table,
        index=pd.Index([str(i) for i in range(n_niches)], name="niche"),
        columns=[storable_name(c) for c in cell_types],
    )


def describe_niches(composition: pd.DataFrame, top: int = 3, min_fraction: float = 0.05) -> pd.Series:
    """One line per niche naming its most abundant types, e.g. ``'Inhibitory 52%, Astrocytes 20%'``."""
    out = {}
    for niche, row in composition.iterrows():
        parts = [
            f"{name} {value:.0%}"
            for name, value in row.sort_values(ascending=False).iloc[:top].items()
            if value >= min_fraction
        ]
        out[niche] = ", ".join(parts)
    return pd.Series(out, name="top cell types")


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def iter_compute_niches(
    coords: Any,
    proba: Any,
    n_niches: int = 8,
    *,
    n_neighbors: int = 15,
    radius: float | None = None,
    n_hops: int = 1,
    seed: int = 0,
    cell_types: Sequence[str] | None = None,
    minibatch: bool = False,
) -> Generator[Progress, None, NicheResult]:
    """Generator version of :func:`compute_niches`; yields one ``Progress`` per stage."""
    xy = _check_coords(coords)
    n = xy.shape[0]
    values, names = _check_proba(proba, n, cell_types)
    if not 1 <= int(n_niches) <= n:
        raise CellMapperInputError(
            f"n_niches ({n_niches}) must be between 1 and the number of cells ({n}); lower n_niches."
        )
    stage = "niches"
    yield Progress(stage, 0, 3)
    graph = spatial_graph(xy, n_neighbors=n_neighbors, radius=radius)
    yield Progress(stage, 1, 3)
    features = neighborhood_composition(graph, values, n_hops=n_hops)
    yield Progress(stage, 2, 3)
    labels, centers = cluster_niches(features, int(n_niches), seed=seed, minibatch=minibatch)
    categories = [str(i) for i in range(int(n_niches))]
    cat = pd.Categorical.from_codes(labels, categories=categories)
    composition = niche_composition(labels, values, int(n_niches), names)
    yield Progress(stage, 3, 3)
    return NicheResult(
        labels=cat,
        composition=composition,
        features=features,
        centers=centers,
        colors=tuple(categorical_palette(int(n_niches))),
    )


def compute_niches(
    coords: Any,
    proba: Any,
    n_niches: int = 8,
    *,
    n_neighbors: int = 15,
    radius: float | None = None,
    n_hops: int = 1,
    seed: int = 0,
    cell_types: Sequence[str] | None = None,
    minibatch: bool = False,
    progress: Any = None,
) -> NicheResult:
    """Cluster cells into spatial niches by their neighbourhood cell-type composition.

    Parameters
    ----------
    coords
        (n_cells, 2|3) positions; NaN is an error.
    proba
        (n_cells, n_types) cell-type probabilities (array or DataFrame, e.g. ``obsm["celltype_proba"]``;
        NaN rows of unmapped cells count as zeros), or one label per cell (one-hot is used).
    n_niches
        Number of niches (k-means clusters).
    n_neighbors, radius
        Spatial neighbourhood: ``n_neighbors`` nearest cells (self included), or everything within
        ``radius`` coordinate units.
    n_hops
        Smoothing: features are ``W^n_hops @ proba`` with ``W`` the row-normalised graph.
    seed
        k-means seed.
    cell_types
        Column names (default: DataFrame columns or label categories).
    minibatch
        ``True``: MiniBatchKMeans on all cells; default ``False``: KMeans, fitted on a seeded
        subsample of 100,000 cells when there are more (see :func:`cluster_niches`).
    progress
        ``True`` (tqdm), a callback taking ``Progress``, or ``None``.
    """
    steps = iter_compute_niches(
        coords,
        proba,
        n_niches,
        n_neighbors=n_neighbors,
        radius=radius,
        n_hops=n_hops,
        seed=seed,
        cell_types=cell_types,
        minibatch=minibatch,
    )
    return run_steps(steps, progress)


def add_niches(
    query: AnnData,
    coords: Any = None,
    *,
    proba_key: str | None = "celltype_proba",
    label_key: str | None = None,
    key_added: str = "niche",
    spatial_key: str = "spatial",
    n_niches: int = 8,
    **kwargs: Any,
) -> NicheResult:
    """Compute niches and write them into the query.

    Reads coordinates from ``coords`` or ``query.obsm[spatial_key]``; probabilities from
    ``query.obsm[proba_key]``, or a one-hot of ``query.obs[label_key]`` when ``label_key`` is given.
    Writes ``obs[key_added]`` (categorical), ``uns[f"{key_added}_colors"]``,
    ``uns[f"{key_added}_composition"]`` (DataFrame) and ``obsm[f"{key_added}_features"]``.
    Other keyword arguments go to :func:`compute_niches`.
    """
    if coords is None:
        if spatial_key not in query.obsm:
            raise CellMapperInputError(
                f"query.obsm has no {spatial_key!r} coordinates; pass coords=... or spatial_key=..."
            )
        coords = query.obsm[spatial_key]
    coords = np.asarray(coords)
    if coords.shape[0] != query.n_obs:
        raise CellMapperInputError(
            f"coords has {coords.shape[0]} rows but the query has {query.n_obs} cells."
        )
    if label_key is not None:
        if label_key not in query.obs:
            raise CellMapperInputError(
                f"query.obs has no column {label_key!r}; run the label transfer first."
            )
        proba = query.obs[label_key]
    else:
        if proba_key is None or proba_key not in query.obsm:
            raise CellMapperInputError(
                f"query.obsm has no {proba_key!r}; transfer cell types first (obsm['<key>_proba']) or pass "
                "label_key=... to use predicted labels."
            )
        proba = query.obsm[proba_key]
    result = compute_niches(coords, proba, n_niches, **kwargs)
    query.obs[key_added] = pd.Categorical(result.labels, categories=result.labels.categories)
    query.uns[f"{key_added}_colors"] = list(result.colors)
    query.uns[f"{key_added}_composition"] = result.composition
    query.obsm[f"{key_added}_features"] = result.features
    return result
