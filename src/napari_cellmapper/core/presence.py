"""Presence scores on the reference and mapping quality on the query.

Presence (HNOCA-tools ``estimate_presence_score``): how well each reference cell is represented
in the query. The column sums of the query -> reference mapping weights (optionally per group of
query cells, e.g. per sample) are smoothed by a random walk with restart on the reference's own
kNN graph, then ``log1p``, clipped to the 1st/99th percentiles and min-max scaled to [0, 1].

Mapping quality: how well each query cell is covered by the reference, from its distances to its
reference neighbours relative to those neighbours' own local kNN distances.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_cellmapper.core.progress import Progress, run_steps
from napari_cellmapper.core.validation import CellMapperInputError

if TYPE_CHECKING:
    from anndata import AnnData


__all__ = [
    "add_presence_scores",
    "iter_presence_scores",
    "mapping_quality",
    "normalize_scores",
    "presence_scores",
    "random_walk_with_restart",
    "iter_random_walk_with_restart",
    "reference_adjacency",
    "reference_local_scale",
    "ReferenceGraph",
    "reference_graph_operator",
]


# --------------------------------------------------------------------------------------------
# reference graph
# --------------------------------------------------------------------------------------------
def _is_neighbors(obj: Any) -> bool:
    return hasattr(obj, "indices") and hasattr(obj, "distances") and not sp.issparse(obj)


def _knn_adjacency(indices: np.ndarray, n_reference: int) -> sp.csr_matrix:
    """Binary (n, n_reference) adjacency from a kNN index table, without self and -1 entries."""
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise CellMapperInputError(f"neighbour indices must be 2-D (n_cells, k), got shape {indices.shape}.")
    n, k = indices.shape
    if indices.size and (indices.max() >= n_reference or indices.min() < -1):
        raise CellMapperInputError(
            f"neighbour indices must lie in [-1, {n_reference - 1}]; got [{indices.min()}, {indices.max()}]."
        )
    rows = np.arange(n, dtype=np.int64)[:, None]
    keep = (indices >= 0) & (indices != rows)
    counts = keep.sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(n, n_reference, int(indptr[-1])) < np.iinfo(np.int32).max else np.int64
    cols = indices[keep].astype(idx_dtype, copy=False)
    data = np.ones(cols.size, dtype=np.float32)
    # kNN rows hold distinct neighbours; a repeated index would simply count twice
    return sp.csr_matrix((data, cols, indptr.astype(idx_dtype)), shape=(n, n_reference))


@dataclass(frozen=True)
class ReferenceGraph:
    """The reference kNN graph as an operator: ``A = K + K.T + 2 I`` (or ``K + I``), never built.

    ``K`` is the kNN adjacency without self entries; ``A @ x`` is computed as
    ``K @ x + K.T @ x + 2 x`` (``K.T`` is a free CSC view), which is faster than building and
    multiplying the explicit symmetric matrix at 1M cells.
    """

    knn: sp.csr_matrix
    symmetrize: bool = True
    self_loops: bool = True

    @property
    def n(self) -> int:
        return int(self.knn.shape[0])

    @property
    def self_weight(self) -> float:
        return (2.0 if self.symmetrize else 1.0) if self.self_loops else 0.0

    def degree(self) -> np.ndarray:
        """Row sums of ``A`` (float32)."""
        deg = np.asarray(self.knn.sum(axis=1), dtype=np.float64).ravel()
        if self.symmetrize:
            deg += np.bincount(self.knn.indices, weights=self.knn.data, minlength=self.n)[: self.n]
        return (deg + self.self_weight).astype(np.float32)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``A @ x`` for a 2-D float32 ``x``."""
        out = np.asarray(self.knn @ x, dtype=np.float32)
        if self.symmetrize:
            out += self.knn.T @ x
        if self.self_weight:
            out += np.float32(self.self_weight) * x
        return out

    def to_adjacency(self) -> sp.csr_matrix:
        """The explicit ``A`` (float32 CSR), for inspection and small graphs."""
        adj = self.knn + self.knn.T if self.symmetrize else self.knn.copy()
        if self.self_weight:
            adj = adj + sp.identity(self.n, dtype=np.float32, format="csr") * self.self_weight
        adj = sp.csr_matrix(adj, dtype=np.float32)
        adj.sum_duplicates()
        adj.sort_indices()
        return adj


def reference_graph_operator(
    reference_graph: Any,
    *,
    n_neighbors: int = 30,
    symmetrize: bool = True,
    self_loops: bool = True,
    metric: str = "euclidean",
    backend: str = "auto",
) -> ReferenceGraph:
    """The reference's own kNN graph as HNOCA-tools builds it (see :func:`reference_adjacency`)."""
    if isinstance(reference_graph, ReferenceGraph):
        return reference_graph
    if _is_neighbors(reference_graph):
        indices = np.asarray(reference_graph.indices)
        n = indices.shape[0]
        n_ref = int(getattr(reference_graph, "n_reference", n))
        if n_ref != n:
            raise CellMapperInputError(
                f"reference_graph must be the reference's kNN against itself (n_query == n_reference), "
                f"got {n} query rows and n_reference={n_ref}."
            )
        knn = _knn_adjacency(indices, n)
    elif sp.issparse(reference_graph):
        knn = sp.csr_matrix(reference_graph, dtype=np.float32)
        if knn.shape[0] != knn.shape[1]:
            raise CellMapperInputError(
                f"reference_graph must be a square adjacency matrix, got shape {knn.shape}."
            )
        if knn.diagonal().any():
            knn = (knn - sp.diags(knn.diagonal()).tocsr()).tocsr()
            knn.eliminate_zeros()
        if knn.nnz and (knn.data < 0).any():
            raise CellMapperInputError("reference_graph has negative weights; pass a kNN adjacency.")
    else:
        rep = np.asarray(reference_graph)
        if rep.ndim != 2 or rep.dtype.kind not in "fiu":
            raise CellMapperInputError(
                "reference_graph must be a Neighbors result, a square sparse adjacency or a 2-D array of "
                f"reference coordinates; got an array of shape {rep.shape} and dtype {rep.dtype}."
            )
        if not np.isfinite(rep).all():
            raise CellMapperInputError(
                "reference coordinates contain NaN or inf; remove or impute those cells first."
            )
        from napari_cellmapper.core.search.neighbors import search

        k = min(int(n_neighbors) + 1, rep.shape[0])
        rep32 = np.ascontiguousarray(rep, dtype=np.float32)
        nbrs = search(rep32, rep32, k, metric=metric, backend=backend)
        knn = _knn_adjacency(np.asarray(nbrs.indices), rep.shape[0])
    return ReferenceGraph(knn=knn, symmetrize=symmetrize, self_loops=self_loops)


def reference_adjacency(
    reference_graph: Any,
    *,
    n_neighbors: int = 30,
    symmetrize: bool = True,
    self_loops: bool = True,
    metric: str = "euclidean",
    backend: str = "auto",
) -> sp.csr_matrix:
    """Adjacency ``A`` of the reference's own kNN graph, as HNOCA-tools builds it.

    Parameters
    ----------
    reference_graph
        A ``Neighbors`` of the reference against itself (self entries are allowed, ``-1`` skipped),
        a square sparse adjacency (weights kept, diagonal replaced), or a 2-D array of reference
        coordinates in the latent space (then ``search(rep, rep, n_neighbors + 1)`` builds it).
    n_neighbors
        Neighbours per reference cell when ``reference_graph`` is an array of coordinates.
    symmetrize
        Use ``K + K.T`` (HNOCA default).
    self_loops
        Every cell is its own neighbour in ``K`` (weight 1, so 2 after symmetrising), as in HNOCA
        where the kNN query of the reference against itself returns the cell itself.

    Returns
    -------
    Square float32 CSR matrix.
    """
    return reference_graph_operator(
        reference_graph,
        n_neighbors=n_neighbors,
        symmetrize=symmetrize,
        self_loops=self_loops,
        metric=metric,
        backend=backend,
    ).to_adjacency()


def _as_operator(adjacency: Any) -> ReferenceGraph:
    """A ``ReferenceGraph`` as is; an explicit sparse ``A`` is used exactly as given."""
    if isinstance(adjacency, ReferenceGraph):
        return adjacency
    if not sp.issparse(adjacency):
        raise CellMapperInputError("adjacency must be a sparse matrix or a ReferenceGraph.")
    adj = sp.csr_matrix(adjacency, dtype=np.float32)
    if adj.shape[0] != adj.shape[1]:
        raise CellMapperInputError(f"adjacency must be square, got shape {adj.shape}.")
    return ReferenceGraph(knn=adj, symmetrize=False, self_loops=False)


# --------------------------------------------------------------------------------------------
# random walk with restart
# --------------------------------------------------------------------------------------------
def iter_random_walk_with_restart(
    init: np.ndarray,
    adjacency: Any,
    *,
    alpha: float = 0.1,
    max_steps: int = 100,
    tol: float = 1e-6,
) -> Generator[Progress, None, np.ndarray]:
    """Random walk with restart, ``heat = alpha * init + (1 - alpha) * P^T heat``.

    ``P = D^-1 A^T`` (row sums ``D`` of ``A``) as in HNOCA-tools, started from ``heat = init``,
    for ``max_steps`` steps or until every column's relative L1 change is below ``tol``.
    Vectorised over the columns of ``init`` (one per group). Yields one ``Progress`` per step.

    Parameters
    ----------
    init
        (n,) or (n, n_groups) restart vector(s).
    adjacency
        (n, n) sparse adjacency ``A`` (used as given), or a :class:`ReferenceGraph`.

    Returns
    -------
    float32 array with the shape of ``init``.
    """
    if not 0.0 < alpha <= 1.0:
        raise CellMapperInputError(f"alpha must be in (0, 1], got {alpha}.")
    if max_steps < 0:
        raise CellMapperInputError(f"max_steps must be >= 0, got {max_steps}.")
    init = np.asarray(init, dtype=np.float32)
    vector = init.ndim == 1
    h0 = init[:, None] if vector else init
    graph = _as_operator(adjacency)
    if graph.n != h0.shape[0]:
        raise CellMapperInputError(
            f"the graph has {graph.n} cells but init has {h0.shape[0]} rows; they must describe the "
            "same reference cells."
        )
    degree = graph.degree()
    inv_deg = np.zeros_like(degree)
    np.divide(np.float32(1.0), degree, out=inv_deg, where=degree > 0)
    h0 = np.ascontiguousarray(h0)
    restart = np.float32(alpha) * h0
    keep = np.float32(1.0 - alpha)
    inv_deg = inv_deg[:, None]
    heat = h0.copy()
    stage = "presence: random walk"
    for step in range(1, max_steps + 1):
        new = graph.matvec(heat * inv_deg)
        new *= keep
        new += restart
        change = np.abs(new - heat).sum(axis=0)
        scale = np.maximum(np.abs(heat).sum(axis=0), np.finfo(np.float32).tiny)
        heat = new
        if np.all(change / scale < tol):
            yield Progress(stage, max_steps, max_steps)
            break
        yield Progress(stage, step, max_steps)
    return heat[:, 0] if vector else heat


def random_walk_with_restart(
    init: np.ndarray,
    adjacency: Any,
    *,
    alpha: float = 0.1,
    max_steps: int = 100,
    tol: float = 1e-6,
    progress: Any = None,
) -> np.ndarray:
    """Plain wrapper of :func:`iter_random_walk_with_restart` (see there)."""
    steps = iter_random_walk_with_restart(init, adjacency, alpha=alpha, max_steps=max_steps, tol=tol)
    return run_steps(steps, progress)


# --------------------------------------------------------------------------------------------
# normalisation and presence
# --------------------------------------------------------------------------------------------
def normalize_scores(
    values: np.ndarray, *, log: bool = True, clip: tuple[float, float] | None = (1, 99)
) -> np.ndarray:
    """``log1p``, clip to percentiles, min-max to [0, 1], column by column.

    A constant column (or one that is constant after clipping) gives zeros, never NaN.
    """
    x = np.array(values, dtype=np.float64, copy=True)
    vector = x.ndim == 1
    if vector:
        x = x[:, None]
    if log:
        np.log1p(np.maximum(x, 0.0), out=x)
    out = np.zeros(x.shape, dtype=np.float32)
    for j in range(x.shape[1]):
        col = x[:, j]
        if col.size == 0:
            continue
        if clip is not None:
            lo, hi = np.percentile(col, clip)
            col = np.clip(col, lo, hi)
        cmin, cmax = col.min(), col.max()
        span = cmax - cmin
        if span > 0 and np.isfinite(span):
            out[:, j] = (col - cmin) / span
    return out[:, 0] if vector else out


def _group_codes(groups: Any, n_query: int) -> tuple[np.ndarray, list[str]]:
    cat = pd.Categorical(
        np.asarray(groups, dtype=object) if not isinstance(groups, pd.Categorical) else groups
    )
    if len(cat) != n_query:
        raise CellMapperInputError(
            f"groups has {len(cat)} entries but the mapping matrix has {n_query} query rows; pass one group "
            "label per query cell."
        )
    cat = cat.remove_unused_categories()
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def _validate_mapping(mapping: Any) -> sp.csr_matrix:
    if isinstance(mapping, np.ndarray):
        mapping = sp.csr_matrix(mapping)
    if not sp.issparse(mapping) or mapping.ndim != 2:
        raise CellMapperInputError(
            "mapping must be the (n_query, n_reference) sparse mapping matrix "
            "(e.g. CellMapper.mapping_matrix)."
        )
    mapping = sp.csr_matrix(mapping, dtype=np.float32)
    if mapping.nnz and not np.isfinite(mapping.data).all():
        raise CellMapperInputError(
            "mapping matrix contains NaN or inf weights; rebuild it with a valid kernel."
        )
    return mapping


def iter_presence_scores(
    mapping: Any,
    reference_graph: Any,
    *,
    groups: Any = None,
    alpha: float = 0.1,
    max_steps: int = 100,
    tol: float = 1e-6,
    log: bool = True,
    clip: tuple[float, float] | None = (1, 99),
    random_walk: bool = True,
    n_neighbors: int = 30,
    symmetrize: bool = True,
    degree_correction: bool = True,
    reference_index: Any = None,
) -> Generator[Progress, None, pd.DataFrame]:
    """Generator version of :func:`presence_scores`; yields ``Progress`` per random-walk step."""
    mapping = _validate_mapping(mapping)
    n_query, n_ref = mapping.shape
    yield Progress("presence: reference graph", 0, 1)
    graph = reference_graph_operator(reference_graph, n_neighbors=n_neighbors, symmetrize=symmetrize)
    if graph.n != n_ref:
        raise CellMapperInputError(
            f"mapping matrix has {n_ref} reference columns but the reference graph has {graph.n} "
            "cells; build both from the same reference (mapping must be n_query x n_reference)."
        )
    yield Progress("presence: reference graph", 1, 1)
    if groups is None:
        init = np.asarray(mapping.sum(axis=0), dtype=np.float32).reshape(-1, 1)
        names = ["presence_score"]
    else:
        codes, names = _group_codes(groups, n_query)
        onehot = sp.csr_matrix(
            (np.ones(n_query, np.float32), (np.arange(n_query), np.maximum(codes, 0))),
            shape=(n_query, len(names)),
        )
        onehot = onehot.multiply((codes >= 0)[:, None]).tocsr()
        init = np.asarray((mapping.T @ onehot).toarray(), dtype=np.float32)
    if random_walk:
        heat = yield from iter_random_walk_with_restart(
            init, graph, alpha=alpha, max_steps=max_steps, tol=tol
        )
    else:
        heat = init
    if degree_correction:
        degree = graph.degree().reshape(-1, 1)
        heat = heat / np.maximum(degree, np.float32(1e-12))
    scores = normalize_scores(heat, log=log, clip=clip)
    index = pd.RangeIndex(n_ref) if reference_index is None else pd.Index(reference_index)
    frame = pd.DataFrame(scores, columns=names, index=index)
    if groups is not None:
        frame["max"] = scores.max(axis=1) if scores.shape[1] else np.zeros(n_ref, np.float32)
    return frame


def presence_scores(
    mapping: Any,
    reference_graph: Any,
    *,
    groups: Any = None,
    alpha: float = 0.1,
    max_steps: int = 100,
    tol: float = 1e-6,
    log: bool = True,
    clip: tuple[float, float] | None = (1, 99),
    random_walk: bool = True,
    n_neighbors: int = 30,
    symmetrize: bool = True,
    degree_correction: bool = True,
    reference_index: Any = None,
    progress: Any = None,
) -> pd.DataFrame:
    """Presence score of every reference cell in the query (HNOCA-tools definition).

    1. ``init`` = column sums of the mapping weights (per group of query cells if ``groups``).
    2. Random walk with restart on the reference kNN graph: ``A = K + K.T`` (``K`` with self
       loops), ``P = D^-1 A^T``, ``heat = alpha * init + (1 - alpha) * P^T heat`` for up to
       ``max_steps`` steps or until the relative change is below ``tol``.
    3. With ``degree_correction`` (default), divide the heat by the degree ``D`` of the node.
    4. ``log1p``, clip to the ``clip`` percentiles, min-max to [0, 1] (a constant column -> 0).

    Degree correction: the walk conserves mass, so its stationary distribution is proportional to
    the degree, and the column sums themselves follow the degree (hub reference cells are the
    neighbours of many query cells). On kNN graphs in 20-50 latent dimensions this hubness makes
    the 99th percentile several times the typical value, so that fully present cell types score
    ~0.4. Dividing by the degree is the same walk written with the row-stochastic ``D^-1 A`` on
    ``init / D`` (a density relative to the reference's own density) and removes that bias.
    ``degree_correction=False`` reproduces HNOCA-tools' ``estimate_presence_score`` exactly.

    Parameters
    ----------
    mapping
        (n_query, n_reference) sparse mapping matrix, rows summing to 1 (0 for unmapped cells).
    reference_graph
        The reference's kNN against itself (``Neighbors``), a square sparse adjacency, or the
        reference coordinates (then ``n_neighbors`` neighbours are searched).
    groups
        One label per query cell (e.g. sample); gives one column per group plus ``"max"``.
    random_walk
        ``False`` skips the smoothing (column sums only).
    degree_correction
        Divide by the reference graph degree (see above); ``False`` = HNOCA-tools as published.
    reference_index
        Index of the returned frame (e.g. ``reference.obs_names``).
    progress
        ``True`` (tqdm), a callback taking ``Progress``, or ``None``.

    Returns
    -------
    DataFrame (n_reference rows): column ``"presence_score"``, or one column per group and ``"max"``.
    """
    steps = iter_presence_scores(
        mapping,
        reference_graph,
        groups=groups,
        alpha=alpha,
        max_steps=max_steps,
        tol=tol,
        log=log,
        clip=clip,
        random_walk=random_walk,
        n_neighbors=n_neighbors,
        symmetrize=symmetrize,
        degree_correction=degree_correction,
        reference_index=reference_index,
    )
    return run_steps(steps, progress)


def iter_add_presence_scores(
    reference: AnnData,
    mapping: Any,
    reference_graph: Any = None,
    *,
    key: str = "presence_score",
    groups: Any = None,
    use_rep: str | None = None,
    **kwargs: Any,
) -> Generator[Progress, None, pd.DataFrame]:
    """Generator version of :func:`add_presence_scores` (progress per random-walk step)."""
    if reference_graph is None:
        if use_rep is None or use_rep not in reference.obsm:
            raise CellMapperInputError(
                "pass reference_graph (a Neighbors of the reference against itself or an adjacency), or "
                "use_rep naming a reference.obsm embedding to build it from."
            )
        reference_graph = np.asarray(reference.obsm[use_rep], dtype=np.float32)
    frame = yield from iter_presence_scores(
        mapping, reference_graph, groups=groups, reference_index=reference.obs_names, **kwargs
    )
    write_presence_scores(reference, frame, key=key)
    return frame


def write_presence_scores(reference: AnnData, frame: pd.DataFrame, *, key: str = "presence_score") -> None:
    """Store a :func:`presence_scores` table: ``obs[key]``, and per group ``obsm[f"{key}_groups"]``
    (``obs[key]`` is then the best group's score)."""
    if frame.shape[0] != reference.n_obs:
        raise CellMapperInputError(
            f"scores cover {frame.shape[0]} cells but the reference has {reference.n_obs}."
        )
    if "max" not in frame:
        reference.obs[key] = frame["presence_score"].to_numpy()
    else:
        reference.obs[key] = frame["max"].to_numpy()
        reference.obsm[f"{key}_groups"] = frame.drop(columns="max")


def add_presence_scores(
    reference: AnnData,
    mapping: Any,
    reference_graph: Any = None,
    *,
    key: str = "presence_score",
    groups: Any = None,
    use_rep: str | None = None,
    progress: Any = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Write presence scores into ``reference.obs[key]`` (and per group to ``obsm[f"{key}_groups"]``).

    ``reference_graph`` defaults to ``reference.obsm[use_rep]`` (kNN searched); other keyword
    arguments go to :func:`presence_scores`. Returns the score table.
    """
    steps = iter_add_presence_scores(
        reference, mapping, reference_graph, key=key, groups=groups, use_rep=use_rep, **kwargs
    )
    return run_steps(steps, progress)


# --------------------------------------------------------------------------------------------
# query side: mapping quality
# --------------------------------------------------------------------------------------------
def _valid_distances(neighbors: Any, drop_self: bool) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(neighbors.indices)
    dist = np.asarray(neighbors.distances, dtype=np.float64)
    if idx.shape != dist.shape or idx.ndim != 2:
        raise CellMapperInputError(
            f"Neighbors indices {idx.shape} and distances {dist.shape} must be 2-D of the same shape."
        )
    valid = (idx >= 0) & np.isfinite(dist)
    if drop_self:
        valid &= idx != np.arange(idx.shape[0])[:, None]
    return idx, np.where(valid, dist, np.nan)


def _first_k(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the first ``k`` non-NaN entries of each row (rows are sorted ascending)."""
    finite = ~np.isnan(values)
    rank = np.cumsum(finite, axis=1)
    use = finite & (rank <= k)
    count = use.sum(axis=1)
    total = np.where(use, values, 0.0).sum(axis=1)
    out = np.full(values.shape[0], np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def reference_local_scale(reference_neighbors: Any, k: int | None = None) -> np.ndarray:
    """Mean distance of each reference cell to its ``k`` nearest other reference cells."""
    _, dist = _valid_distances(reference_neighbors, drop_self=True)
    k = dist.shape[1] if k is None else k
    return _first_k(dist, k)


def mapping_quality(neighbors: Any, reference_neighbors: Any) -> np.ndarray:
    """Per-query-cell coverage score in [0, 1] (1 = as well covered as a typical reference cell).

    Definition. Let ``s_j`` be the mean distance of reference cell ``j`` to its ``k`` nearest
    other reference cells (its local scale; ``k`` = the smaller of the two neighbour counts).
    For a query cell ``i`` with reference neighbours ``N(i)`` (first ``k`` valid ones),
    ``rho_i = mean_{j in N(i)} d(i, j) / mean_{j in N(i)} s_j``: how far the cell is from its
    neighbours relative to how far they are from each other. The null distribution is the same
    ratio for the reference cells themselves, ``rho_j = s_j / mean_{l in N(j)} s_l``. The score is
    the folded upper-tail probability ``min(1, 2 * P_ref(rho >= rho_i))``: 1 for cells no farther
    than the median reference cell, about 0.05 at the reference's 97.5th percentile, 0 beyond the
    farthest reference cell. It is monotone decreasing in ``rho``. Query cells without any valid
    neighbour score 0.

    Parameters
    ----------
    neighbors
        ``Neighbors`` of the query against the reference.
    reference_neighbors
        ``Neighbors`` of the reference against itself (self entries are dropped).

    Returns
    -------
    float32 array (n_query,).
    """
    q_idx, q_dist = _valid_distances(neighbors, drop_self=False)
    r_idx, r_dist = _valid_distances(reference_neighbors, drop_self=True)
    n_ref = r_idx.shape[0]
    n_ref_declared = int(getattr(neighbors, "n_reference", n_ref))
    if n_ref_declared != n_ref:
        raise CellMapperInputError(
            f"neighbors refer to {n_ref_declared} reference cells but reference_neighbors has {n_ref} rows; "
            "compute both against the same reference."
        )
    if q_idx.size and q_idx.max() >= n_ref:
        raise CellMapperInputError(
            "neighbors contain reference indices beyond reference_neighbors; same reference?"
        )
    k = int(min(q_idx.shape[1], max(r_idx.shape[1] - 1, 1)))
    scale = _first_k(r_dist, k)  # s_j
    scale_ok = np.where(np.isfinite(scale), scale, np.nan)

    def ratio(idx: np.ndarray, dist: np.ndarray) -> np.ndarray:
        finite = ~np.isnan(dist)
        use = finite & (np.cumsum(finite, axis=1) <= k)
        s = np.where(use, scale_ok[np.where(idx >= 0, idx, 0)], np.nan)
        use &= ~np.isnan(s)
        n = use.sum(axis=1)
        d_mean = np.where(use, dist, 0.0).sum(axis=1)
        s_mean = np.where(use, s, 0.0).sum(axis=1)
        out = np.full(idx.shape[0], np.nan)
        ok = (n > 0) & (s_mean > 0)
        out[ok] = d_mean[ok] / s_mean[ok]
        ok0 = (n > 0) & (s_mean == 0)
        out[ok0] = np.where(d_mean[ok0] == 0, 1.0, np.inf)
        return out

    # reference null: rho_j = s_j / mean of its neighbours' s (the same ratio, reference vs itself)
    rho_ref = ratio(r_idx, r_dist)
    rho_ref = np.sort(rho_ref[np.isfinite(rho_ref)])
    rho_q = ratio(q_idx, q_dist)
    if rho_ref.size == 0:
        raise CellMapperInputError(
            "reference_neighbors has no valid neighbour distances; cannot calibrate quality."
        )
    tail = 1.0 - np.searchsorted(rho_ref, rho_q, side="left") / rho_ref.size
    score = np.clip(2.0 * tail, 0.0, 1.0)
    score[np.isnan(rho_q)] = 0.0
    return score.astype(np.float32)
