"""``M · X`` for a sparse mapping matrix and a sparse expression matrix, in parallel.

scipy's sparse product is single-threaded, makes two passes over the data and leaves the column
indices unsorted. Expression transfer is its worst case: every query row sums ``k`` reference rows
whose genes overlap, so the output rows are dense-ish. Here each chunk of query rows is
accumulated into a dense ``(rows, n_genes)`` float32 block by a numba kernel running one thread per
row, then packed into CSR with sorted indices. Only one block exists at a time (at most
:data:`DENSE_BLOCK_ENTRIES` values), so no dense copy of the expression matrix is ever formed.

numba compiles the kernels once per machine (cached on disk); :func:`warm_up` loads them in a
background thread so a fresh process does not pay for it on the critical path.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange
from scipy import sparse

from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds

DENSE_BLOCK_ENTRIES = 1 << 23  # 8M float32 values = 32 MB per dense block
#: below this many multiply-adds scipy's product finishes before numba's kernels would even load
#: in a fresh process (about 0.4 s), so small products stay with scipy
SMALL_PRODUCT = 30_000_000


def uses_kernels(matrix_nnz: int, x: sparse.spmatrix | sparse.sparray) -> bool:
    """Whether a product with ``matrix_nnz`` mapping entries and this ``x`` runs on the kernels."""
    return sparse.issparse(x) and matrix_nnz * x.nnz / max(x.shape[0], 1) >= SMALL_PRODUCT


@njit(parallel=True, cache=True, nogil=True)
def _accumulate(m_indptr, m_indices, m_data, x_indptr, x_indices, x_data, out, counts):  # pragma: no cover
    """Dense rows ``out[r] = sum_p m_data[p] * X[m_indices[p]]`` (overwritten), nonzeros to ``counts``."""
    n_cols = out.shape[1]
    for r in prange(out.shape[0]):
        out[r, :] = 0
        for p in range(m_indptr[r], m_indptr[r + 1]):
            j = m_indices[p]
            w = m_data[p]
            for q in range(x_indptr[j], x_indptr[j + 1]):
                out[r, x_indices[q]] += w * x_data[q]
        c = 0
        for g in range(n_cols):
            if out[r, g] != 0:
                c += 1
        counts[r] = c


@njit(parallel=True, cache=True, nogil=True)
def _pack(out, indptr, indices, data):  # pragma: no cover
    """Nonzeros of the dense block ``out`` into CSR arrays (column indices sorted)."""
    for r in prange(out.shape[0]):
        p = indptr[r]
        for g in range(out.shape[1]):
            v = out[r, g]
            if v != 0:
                indices[p] = g
                data[p] = v
                p += 1


def _index_dtype(*sizes: int) -> type:
    return np.int32 if max(sizes, default=0) < np.iinfo(np.int32).max else np.int64


def block_rows(n_cols: int, chunk_size: int) -> int:
    """Query rows per dense block: ``chunk_size`` at most, and at most ``DENSE_BLOCK_ENTRIES`` values."""
    return max(1, min(chunk_size, DENSE_BLOCK_ENTRIES // max(n_cols, 1)))


def iter_product(
    matrix: sparse.csr_matrix, x: sparse.spmatrix | sparse.sparray, chunk_size: int, stage: str
) -> Steps[sparse.csr_matrix]:
    """``matrix @ x`` as CSR float32 with sorted indices; yields ``Progress(stage, rows done, n)``.

    ``matrix`` is ``(n_query, n_reference)`` CSR, ``x`` is ``(n_reference, n_genes)`` sparse (any
    order or duplicates). Products of :data:`SMALL_PRODUCT` multiply-adds or more run on the numba
    kernels.
    """
    matrix, x = sparse.csr_matrix(matrix), sparse.csr_matrix(x, dtype=np.float32)
    yield Progress(stage, 0, matrix.shape[0])
    if uses_kernels(matrix.nnz, x):
        return (yield from _iter_kernel_product(matrix, x, chunk_size, stage))
    return (yield from _iter_scipy_product(matrix, x, chunk_size, stage))


def _iter_kernel_product(
    matrix: sparse.csr_matrix, x: sparse.csr_matrix, chunk_size: int, stage: str
) -> Steps[sparse.csr_matrix]:
    """The kernels' product. Each dense block is packed straight into the output arrays, which
    grow (rarely) from an estimate taken on the first block, so the output is never held twice."""
    n_query, n_cols = matrix.shape[0], x.shape[1]
    itype = _index_dtype(matrix.nnz, matrix.shape[1], x.nnz, n_cols)
    m_indptr = matrix.indptr.astype(itype, copy=False)
    m_indices = matrix.indices.astype(itype, copy=False)
    m_data = matrix.data.astype(np.float32, copy=False)
    x_indptr = x.indptr.astype(itype, copy=False)
    x_indices = x.indices.astype(itype, copy=False)
    x_data = x.data.astype(np.float32, copy=False)
    out_itype = _index_dtype(n_query * n_cols)
    indptr = np.zeros(n_query + 1, dtype=np.int64)
    indices = np.empty(0, dtype=out_itype)
    data = np.empty(0, dtype=np.float32)
    step = block_rows(n_cols, chunk_size)
    buffer = np.empty((min(step, n_query), n_cols), dtype=np.float32)  # reused: no page faults
    counts_buffer = np.empty(min(step, n_query), dtype=np.int64)
    for start, stop in chunk_bounds(n_query, step):
        block, counts = buffer[: stop - start], counts_buffer[: stop - start]
        rows = m_indptr[start : stop + 1]  # absolute offsets into m_indices / m_data
        _accumulate(rows, m_indices, m_data, x_indptr, x_indices, x_data, block, counts)
        np.cumsum(counts, out=indptr[start + 1 : stop + 1])
        indptr[start + 1 : stop + 1] += indptr[start]
        need = int(indptr[stop])
        if need > len(indices):  # first block, or the estimate was short: grow
            estimate = max(need, int(need / stop * n_query * 1.05) + 1)
            indices, data = _grown(indices, estimate), _grown(data, estimate)
        _pack(block, indptr[start : stop + 1], indices, data)
        yield Progress(stage, stop, n_query)
    nnz = int(indptr[-1])
    indices, data = _trimmed(indices, nnz), _trimmed(data, nnz)
    out = sparse.csr_matrix((data, indices, indptr.astype(out_itype)), shape=(n_query, n_cols), copy=False)
    out.has_sorted_indices = True
    return out


def _iter_scipy_product(
    matrix: sparse.csr_matrix, x: sparse.csr_matrix, chunk_size: int, stage: str
) -> Steps[sparse.csr_matrix]:
    blocks = []
    for start, stop in chunk_bounds(matrix.shape[0], chunk_size):
        block = sparse.csr_matrix(matrix[start:stop] @ x, dtype=np.float32)
        block.sort_indices()
        blocks.append(block)
        yield Progress(stage, stop, matrix.shape[0])
    if not blocks:
        return sparse.csr_matrix(matrix.shape[:1] + x.shape[1:], dtype=np.float32)
    return sparse.csr_matrix(sparse.vstack(blocks, format="csr"), dtype=np.float32)


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    out = np.empty(size, dtype=values.dtype)
    out[: len(values)] = values
    return out


def _trimmed(values: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` values, copied only when that frees much memory."""
    return values[:size].copy() if len(values) > 1.2 * size + 1024 else values[:size]


def warm_up() -> threading.Thread:
    """Load (or compile, the first time on a machine) the kernels in a background thread."""

    def run() -> None:
        eye = sparse.csr_matrix(np.eye(2, dtype=np.float32))
        for _ in _iter_kernel_product(eye, eye, 1, "warm-up"):
            pass

    thread = threading.Thread(target=run, name="cellmapper-numba-warm-up", daemon=True)
    thread.start()
    return thread
