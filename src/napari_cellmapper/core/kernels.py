"""Kernels: k-NN distances -> a row-normalised sparse mapping matrix.

``M[i, j]`` is the weight of reference cell ``j`` for query cell ``i``; every row sums to 1, or to 0
when query cell ``i`` has no usable neighbour (it is then *unmapped*). Kernels:

``gauss``
    ``exp(-d^2 / (2 sigma^2))`` with one global ``sigma``: the mean of all k-NN distances.
``gauss_adaptive``
    the same with a per-query-cell ``sigma_i``: the mean of that cell's k-NN distances.
``scarches``
    scArches' weighted kNN: ``exp(-d / s_i)`` with ``s_i = (2 / std_i)^2`` from the spread of that
    cell's distances.
``inverse_distance``
    ``1 / (d + eps)``.
``equal``
    every usable neighbour weighs the same.
``hnoca``
    HNOCA-tools' ``jaccard_square``: for the edge (query i, reference j), ``s`` = the number of
    reference cells that are both among i's k reference neighbours and among j's own reference
    neighbours; weight ``(s / (|N_i| + |N_j| - s))^2``. Needs the reference's own k-NN graph and is
    evaluated only on the k query-to-reference edges, in chunks.

Gaussian weights are computed relative to each row's nearest neighbour, which leaves the
normalised row unchanged and avoids underflow to an all-zero row for distant cells.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from napari_cellmapper.core.progress import chunk_bounds
from napari_cellmapper.core.search.neighbors import Neighbors
from napari_cellmapper.core.validation import KERNELS, CellMapperInputError, check_choice

_EPS = np.float32(1e-8)
_HNOCA_CHUNK = 8192
#: rows per block of the gauss pass (bounded temporaries)
_ROWS = 65_536


def _masked(distances: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 distances with unusable edges set to NaN (for nan-aware row statistics)."""
    return np.where(valid, distances, np.float32(np.nan)).astype(np.float32, copy=False)


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    counts = np.sum(~np.isnan(values), axis=1)
    sums = np.nansum(values, axis=1)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _gaussian(d: np.ndarray, valid: np.ndarray, sigma: np.ndarray | np.float32) -> np.ndarray:
    d2 = np.square(d)
    d2_min = np.nanmin(np.where(valid, d2, np.inf), axis=1, keepdims=True)
    d2_min[~np.isfinite(d2_min)] = 0
    two_sigma2 = 2 * np.square(np.asarray(sigma, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (d2 - d2_min) / two_sigma2
    # sigma == 0 (all distances equal) -> every neighbour weighs the same
    scaled = np.where(np.isfinite(scaled), scaled, 0)
    return np.exp(-scaled, dtype=np.float32)


def global_sigma(neighbors: Neighbors) -> float:
    """Bandwidth of the ``gauss`` kernel: the mean of all usable k-NN distances (float64 sum)."""
    total, count = 0.0, 0
    for start, stop in chunk_bounds(neighbors.indices.shape[0], _ROWS):
        d = neighbors.distances[start:stop]
        usable = (neighbors.indices[start:stop] >= 0) & np.isfinite(d)
        total += float(d[usable].sum(dtype=np.float64))
        count += int(usable.sum())
    return total / count if count else 1.0


def _gauss_rows(indices: np.ndarray, distances: np.ndarray, sigma: float, out: np.ndarray) -> None:
    """Row-normalised ``gauss`` weights into ``out``, a block of rows at a time, the same as
    ``normalise_rows(_gaussian(...))``: relative to the row's nearest neighbour, every usable
    neighbour weighs 1 when sigma is 0."""
    two_sigma2 = np.float32(2) * np.float32(sigma) * np.float32(sigma)
    for start, stop in chunk_bounds(indices.shape[0], _ROWS):
        d = distances[start:stop]
        usable = (indices[start:stop] >= 0) & np.isfinite(d)
        d2 = np.where(usable, np.square(d, dtype=np.float32), np.float32(np.inf))
        d2_min = d2.min(axis=1, keepdims=True)
        if two_sigma2 > 0:
            with np.errstate(invalid="ignore", over="ignore"):
                scaled = (d2 - d2_min) / two_sigma2
                w = np.where(np.isfinite(scaled), np.exp(-scaled), np.float32(1))
            w = np.where(usable, w, np.float32(0)).astype(np.float32, copy=False)
        else:
            w = usable.astype(np.float32)
        total = w.sum(axis=1, dtype=np.float64, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = np.where(total > 0, w / total, 0)


def kernel_weights(
    neighbors: Neighbors,
    kernel: str = "gauss",
    *,
    reference_neighbors: Neighbors | None = None,
    sigma: float | None = None,
) -> np.ndarray:
    """Un-normalised ``(n_query, k)`` float32 weights; 0 on unusable edges.

    ``sigma`` fixes the ``gauss`` bandwidth (default: :func:`global_sigma`), e.g. to map query
    chunks with the bandwidth of a whole run.
    """
    check_choice("kernel", kernel, KERNELS)
    valid = neighbors.valid
    d = _masked(neighbors.distances, valid)
    if kernel == "gauss":
        w = _gaussian(d, valid, np.float32(global_sigma(neighbors) if sigma is None else sigma))
    elif kernel == "gauss_adaptive":
        w = _gaussian(d, valid, _row_nanmean(d)[:, None])
    elif kernel == "scarches":
        # two-pass population std in float64 (large distances would lose it in float32)
        d64 = d.astype(np.float64)
        centred = d64 - _row_nanmean(d64)[:, None]
        std = np.sqrt(_row_nanmean(np.square(centred)))
        # exp(-d / (2/std)^2) == exp(-d * std^2 / 4); shift by the row minimum for stability
        rate = (np.square(std) / 4)[:, None]
        d_min = np.nanmin(np.where(valid, d64, np.inf), axis=1, keepdims=True)
        d_min[~np.isfinite(d_min)] = 0
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.exp(-(np.nan_to_num(d64, nan=0.0) - d_min) * rate)
        w = np.where(np.isfinite(w), w, 0).astype(np.float32)
    elif kernel == "inverse_distance":
        w = 1 / (np.nan_to_num(d, nan=0.0) + _EPS)
    elif kernel == "equal":
        w = np.ones_like(d)
    else:  # hnoca
        if reference_neighbors is None:
            raise CellMapperInputError(
                "kernel='hnoca' needs the reference's own k-NN graph (reference_neighbors=); "
                "CellMapper computes it for you."
            )
        w = hnoca_weights(neighbors, reference_neighbors)
    w = np.where(valid, w, 0).astype(np.float32, copy=False)
    return w


def hnoca_weights(neighbors: Neighbors, reference_neighbors: Neighbors) -> np.ndarray:
    """HNOCA-tools' jaccard-square weight of each query-to-reference edge, chunked."""
    if reference_neighbors.n_query != neighbors.n_reference:
        raise CellMapperInputError(
            "reference_neighbors must be the reference's k-NN graph over itself "
            f"({neighbors.n_reference} rows), got {reference_neighbors.n_query} rows."
        )
    n_query, k = neighbors.indices.shape
    n_ref = neighbors.n_reference
    sentinel = n_ref  # never a real reference row
    ref_idx = np.where(reference_neighbors.valid, reference_neighbors.indices, sentinel)
    ref_idx = np.vstack([ref_idx, np.full((1, ref_idx.shape[1]), sentinel, dtype=ref_idx.dtype)])
    ref_sizes = np.append((ref_idx[:-1] != sentinel).sum(axis=1), 0)
    weights = np.zeros((n_query, k), dtype=np.float32)
    stride = np.int64(n_ref + 1)
    for start, stop in chunk_bounds(n_query, _HNOCA_CHUNK):
        q_idx = np.where(neighbors.valid[start:stop], neighbors.indices[start:stop], sentinel)
        rows = np.arange(stop - start, dtype=np.int64)[:, None]
        q_sorted = np.sort(q_idx, axis=1) + rows * stride  # globally sorted when flattened
        flat = q_sorted.ravel()
        their = ref_idx[q_idx]  # (c, k, k_ref): neighbours of each of my neighbours
        keys = their + rows[:, :, None] * stride
        pos = np.minimum(np.searchsorted(flat, keys.ravel()), flat.size - 1)
        hit = (flat[pos] == keys.ravel()).reshape(their.shape) & (their != sentinel)
        shared = hit.sum(axis=2).astype(np.float32)
        mine = (q_idx != sentinel).sum(axis=1, keepdims=True)
        union = mine + ref_sizes[q_idx] - shared
        with np.errstate(divide="ignore", invalid="ignore"):
            jaccard = np.where(union > 0, shared / union, 0)
        weights[start:stop] = np.square(jaccard)
    return weights


def normalise_rows(weights: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; all-zero rows stay zero."""
    totals = weights.sum(axis=1, keepdims=True, dtype=np.float64)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0).astype(np.float32)


def weights_to_csr(neighbors: Neighbors, weights: np.ndarray) -> sparse.csr_matrix:
    """(n_query, n_reference) CSR from per-edge weights, dropping zero-weight edges."""
    n_query, k = weights.shape
    keep = weights > 0
    if keep.all():
        indptr = np.arange(0, n_query * k + 1, k, dtype=np.int64)
        return sparse.csr_matrix(
            (weights.ravel(), neighbors.indices.ravel(), indptr), shape=(n_query, neighbors.n_reference)
        )
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1), dtype=np.int64)])
    return sparse.csr_matrix(
        (weights[keep], neighbors.indices[keep], indptr), shape=(n_query, neighbors.n_reference)
    )


def mapping_matrix(
    neighbors: Neighbors,
    kernel: str = "gauss",
    *,
    reference_neighbors: Neighbors | None = None,
    sigma: float | None = None,
) -> sparse.csr_matrix:
    """Row-normalised float32 CSR mapping matrix (n_query, n_reference).

    Rows of unmapped query cells (no usable neighbour) are all zero; see :func:`unmapped_rows`.
    """
    if kernel == "gauss":  # the default: normalised in the same pass, temporaries bounded by blocks
        weights = np.empty(neighbors.indices.shape, dtype=np.float32)
        sigma = global_sigma(neighbors) if sigma is None else sigma
        _gauss_rows(neighbors.indices, neighbors.distances, sigma, weights)
        return weights_to_csr(neighbors, weights)
    weights = kernel_weights(neighbors, kernel, reference_neighbors=reference_neighbors, sigma=sigma)
    return weights_to_csr(neighbors, normalise_rows(weights))


def unmapped_rows(matrix: sparse.csr_matrix) -> np.ndarray:
    """Boolean mask of query cells whose row carries no weight."""
    return np.diff(matrix.indptr) == 0
