"""``M · X`` for a sparse mapping matrix and a sparse expression matrix, in parallel.

scipy's sparse product is single-threaded, makes two passes over the data and leaves the column
indices unsorted. Expression transfer is its worst case: every query row sums ``k`` reference rows
whose genes overlap, so the output rows are dense-ish. Here numba kernels run one thread per
group of query rows, each with one accumulator row of ``n_genes`` values (it stays in cache):

1. a counting pass marks the genes each query row touches (it reads column indices only), which
   sizes the output once;
2. a filling pass sums each row and writes its nonzeros, column indices sorted, straight into the
   output arrays (sums that cancel to exactly zero are dropped and their slots closed up).

So nothing but the output is allocated: no dense block, no copy of the expression matrix. The
time goes into fetching the reference rows of each query row's neighbours, so rows are best
processed in an order that keeps neighbouring query cells together (``row_order``, e.g. by the
coarse cell of the search index): their reference rows are then reused from cache. The order
changes the speed only, never the result.

numba compiles the kernels once per machine (cached on disk; until then scipy's product runs, see
:mod:`.jit`); :func:`warm_up` loads them in a background thread so a fresh process does not pay
for loading them on the critical path.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import get_num_threads, njit, prange
from scipy import sparse

from napari_cellmapper.core import jit
from napari_cellmapper.core.numba_threads import in_background, launch_lock
from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds

#: below this many multiply-adds scipy's product finishes before numba's kernels would even load
#: in a fresh process (about 0.4 s), so small products stay with scipy
SMALL_PRODUCT = 30_000_000
#: scipy's product runs in blocks of at least this many rows (one per thread at a time)
_MIN_SCIPY_BLOCK = 4096
#: query rows per kernel task (one accumulator row per task)
_GRAIN = 256
#: the accumulator is scanned whole (no per-entry bookkeeping) unless the genes outnumber the
#: entries a row can touch by this factor; then the touched columns are tracked and sorted
_SCAN_FACTOR = 8


def uses_kernels(matrix_nnz: int, x: sparse.spmatrix | sparse.sparray) -> bool:
    """Whether a product with ``matrix_nnz`` mapping entries and this ``x`` runs on the kernels
    (large enough, and the kernels compiled: see :mod:`.jit`)."""
    large = sparse.issparse(x) and matrix_nnz * x.nnz / max(x.shape[0], 1) >= SMALL_PRODUCT
    return large and jit.use_kernels()


@njit(cache=True, nogil=True, inline="always")
def _first_touch(mark, g, r):  # pragma: no cover
    """Whether row ``r`` touches column ``g`` for the first time (then marks it)."""
    if mark[g] == r:
        return False
    mark[g] = r
    return True


@njit(parallel=True, cache=True, nogil=True)
def _count(order, m_indptr, m_indices, x_indptr, x_indices, n_cols, scan, counts):  # pragma: no cover
    """``counts[r]``: the columns row ``r`` of ``M · X`` touches (its nonzeros, unless some sum to
    zero), for the rows in ``order``. Symbolic: reads only the column indices."""
    n_rows = order.shape[0]
    for task in prange((n_rows + _GRAIN - 1) // _GRAIN):
        seen = np.zeros(n_cols if scan else 0, np.uint8)
        mark = np.full(0 if scan else n_cols, -1, np.int64)
        for i in range(task * _GRAIN, min(n_rows, (task + 1) * _GRAIN)):
            r = order[i]
            c = 0
            for p in range(m_indptr[r], m_indptr[r + 1]):
                j = m_indices[p]
                if scan:
                    for q in range(x_indptr[j], x_indptr[j + 1]):
                        seen[x_indices[q]] = 1
                else:
                    for q in range(x_indptr[j], x_indptr[j + 1]):
                        c += _first_touch(mark, x_indices[q], r)
            if scan:
                for g in range(n_cols):
                    c += seen[g]
                    seen[g] = 0
            counts[r] = c


@njit(parallel=True, cache=True, nogil=True)
def _fill(  # pragma: no cover
    order,
    m_indptr,
    m_indices,
    m_data,
    x_indptr,
    x_indices,
    x_data,
    n_cols,
    scan,
    indptr,
    indices,
    data,
    written,
):
    """Sum the rows in ``order`` of ``M · X`` and write their nonzeros from ``indptr[r]`` on,
    columns sorted; ``written[r]``: how many (fewer than counted where sums cancel to zero)."""
    n_rows = order.shape[0]
    for task in prange((n_rows + _GRAIN - 1) // _GRAIN):
        acc = np.zeros(n_cols, np.float32)
        touched = np.empty(0 if scan else n_cols, np.int64)
        mark = np.full(0 if scan else n_cols, -1, np.int64)
        for i in range(task * _GRAIN, min(n_rows, (task + 1) * _GRAIN)):
            r = order[i]
            n = 0
            for p in range(m_indptr[r], m_indptr[r + 1]):
                j = m_indices[p]
                w = m_data[p]
                if scan:
                    for q in range(x_indptr[j], x_indptr[j + 1]):
                        acc[x_indices[q]] += w * x_data[q]
                else:
                    for q in range(x_indptr[j], x_indptr[j + 1]):
                        g = x_indices[q]
                        if _first_touch(mark, g, r):
                            touched[n] = g
                            n += 1
                        acc[g] += w * x_data[q]
            p = indptr[r]
            if scan:
                for g in range(n_cols):
                    v = acc[g]
                    if v != 0:
                        indices[p] = g
                        data[p] = v
                        p += 1
                        acc[g] = 0
            else:
                touched[:n].sort()
                for t in range(n):
                    g = touched[t]
                    v = acc[g]
                    if v != 0:
                        indices[p] = g
                        data[p] = v
                        p += 1
                    acc[g] = 0
            written[r] = p - indptr[r]


@njit(cache=True, nogil=True)
def _close_gaps(indptr, written, indices, data):  # pragma: no cover
    """Move every row's ``written`` entries left so the rows are contiguous; the new indptr."""
    new = np.zeros_like(indptr)
    for r in range(written.shape[0]):
        src, dst, n = indptr[r], new[r], written[r]
        for t in range(n):
            indices[dst + t] = indices[src + t]
            data[dst + t] = data[src + t]
        new[r + 1] = dst + n
    return new


def _index_dtype(*sizes: int) -> type:
    return np.int32 if max(sizes, default=0) < np.iinfo(np.int32).max else np.int64


def scans_whole_rows(matrix: sparse.csr_matrix, x: sparse.csr_matrix) -> bool:
    """Whether the kernels scan the whole accumulator row (genes few compared with the entries a
    row touches) rather than track the touched columns."""
    touches = matrix.nnz / max(matrix.shape[0], 1) * x.nnz / max(x.shape[0], 1)
    return x.shape[1] <= _SCAN_FACTOR * max(touches, 1.0)


def iter_product(
    matrix: sparse.csr_matrix,
    x: sparse.spmatrix | sparse.sparray,
    chunk_size: int,
    stage: str,
    *,
    row_order: np.ndarray | None = None,
) -> Steps[sparse.csr_matrix]:
    """``matrix @ x`` as CSR float32; yields ``Progress(stage, done, total)``.

    ``matrix`` is ``(n_query, n_reference)`` CSR, ``x`` is ``(n_reference, n_genes)`` sparse (any
    order or duplicates). Products of :data:`SMALL_PRODUCT` multiply-adds or more run on the numba
    kernels, in two passes over the rows (``total`` is twice the number of rows), in
    ``row_order`` (a permutation of the rows) when given; their column indices come out sorted.
    Other products run on scipy, whose column indices may come out unsorted (the same values:
    every scipy.sparse operation and anndata accept both).
    """
    matrix, x = sparse.csr_matrix(matrix), sparse.csr_matrix(x, dtype=np.float32)
    if row_order is not None:
        row_order = np.asarray(row_order)
        n = matrix.shape[0]
        is_permutation = row_order.shape == (n,) and (
            n == 0
            or (
                row_order.min() >= 0
                and row_order.max() < n
                and np.bincount(row_order, minlength=n).max() == 1
            )
        )
        if not is_permutation:
            raise ValueError(f"row_order must hold each of the {n} rows once.")
    if uses_kernels(matrix.nnz, x):
        return (yield from _iter_kernel_product(matrix, x, chunk_size, stage, row_order))
    return (yield from _iter_scipy_product(matrix, x, chunk_size, stage, row_order))


def _iter_kernel_product(
    matrix: sparse.csr_matrix, x: sparse.csr_matrix, chunk_size: int, stage: str, row_order: np.ndarray | None
) -> Steps[sparse.csr_matrix]:
    """The kernels' product: count every row, allocate the output once, fill every row."""
    n_query, n_cols = matrix.shape[0], x.shape[1]
    itype = _index_dtype(matrix.nnz, matrix.shape[1], x.nnz, n_cols)
    m_indptr, m_indices = matrix.indptr.astype(itype, copy=False), matrix.indices.astype(itype, copy=False)
    x_indptr, x_indices = x.indptr.astype(itype, copy=False), x.indices.astype(itype, copy=False)
    m_data, x_data = matrix.data.astype(np.float32, copy=False), x.data.astype(np.float32, copy=False)
    scan = scans_whole_rows(matrix, x)
    if row_order is None:
        order = np.arange(n_query, dtype=np.int64)
    else:
        order = row_order.astype(np.int64, copy=False)
    bounds = chunk_bounds(n_query, chunk_size)
    yield Progress(stage, 0, 2 * n_query)
    counts = np.empty(n_query, dtype=np.int64)
    for start, stop in bounds:
        with launch_lock():
            _count(order[start:stop], m_indptr, m_indices, x_indptr, x_indices, n_cols, scan, counts)
        yield Progress(stage, stop, 2 * n_query)
    indptr = np.zeros(n_query + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    written = counts  # reused: the fill overwrites each row's count with what it wrote
    out_itype = _index_dtype(int(indptr[-1]), n_cols)
    indices, data = np.empty(int(indptr[-1]), dtype=out_itype), np.empty(int(indptr[-1]), dtype=np.float32)
    for start, stop in bounds:
        with launch_lock():
            _fill(
                order[start:stop], m_indptr, m_indices, m_data, x_indptr, x_indices, x_data, n_cols, scan,
                indptr, indices, data, written,
            )  # fmt: skip
        yield Progress(stage, n_query + stop, 2 * n_query)
    if written.sum() < indptr[-1]:  # some sums cancelled to zero: close the gaps they left
        indptr = _close_gaps(indptr, written, indices, data)
        indices, data = _trimmed(indices, int(indptr[-1])), _trimmed(data, int(indptr[-1]))
    out = sparse.csr_matrix((data, indices, indptr.astype(out_itype)), shape=(n_query, n_cols), copy=False)
    out.has_sorted_indices = True
    return out


def _trimmed(values: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` values, copied only when that frees much memory."""
    return values[:size].copy() if len(values) > 1.2 * size + 1024 else values[:size]


def _iter_scipy_product(
    matrix: sparse.csr_matrix,
    x: sparse.csr_matrix,
    chunk_size: int,
    stage: str,
    row_order: np.ndarray | None = None,
) -> Steps[sparse.csr_matrix]:
    """scipy's product, block by block, blocks in parallel threads (scipy releases the GIL in
    its product), rows in ``row_order`` (put back at the end: still faster, as neighbouring
    rows reuse the same reference rows from cache). Column indices are left as scipy writes them
    (unsorted): sorting them cost more than the product itself at 100k cells, and this path runs
    only until the kernels are compiled (:mod:`.jit`) or for small products; the values are the
    same."""
    if row_order is not None:
        matrix = matrix[row_order]
    n_query = matrix.shape[0]
    yield Progress(stage, 0, n_query)
    n_threads = get_num_threads()
    # blocks of at most chunk_size rows, and enough of them to keep every thread busy
    rows = min(chunk_size, max(_MIN_SCIPY_BLOCK, -(-n_query // (4 * n_threads))))
    bounds = chunk_bounds(n_query, rows)
    if not bounds:
        return sparse.csr_matrix((n_query, x.shape[1]), dtype=np.float32)

    def block(bound: tuple[int, int]) -> sparse.csr_matrix:
        return sparse.csr_matrix(matrix[bound[0] : bound[1]] @ x, dtype=np.float32)

    blocks = []
    with ThreadPoolExecutor(min(n_threads, len(bounds)), thread_name_prefix="cellmapper-product") as pool:
        futures = [pool.submit(block, bound) for bound in bounds]
        try:
            for future, bound in zip(futures, bounds, strict=True):
                blocks.append(future.result())
                yield Progress(stage, bound[1], n_query)
        finally:  # cancelled or failed: start no further block
            for future in futures:
                future.cancel()
    out = sparse.csr_matrix(sparse.vstack(blocks, format="csr"), dtype=np.float32)
    if row_order is not None:
        inverse = np.empty_like(row_order)
        inverse[row_order] = np.arange(n_query, dtype=row_order.dtype)
        out = out[inverse]
    return out


def load_kernels() -> None:
    """Load (or compile, the first time on a machine) the kernels: a product of two 2 x 2 matrices."""
    eye = sparse.csr_matrix(np.eye(2, dtype=np.float32))
    for _ in _iter_kernel_product(eye, eye, 1, "warm-up", None):
        pass


def warm_up() -> threading.Thread | None:
    """:func:`load_kernels` in a background thread, when :mod:`.jit` lets the kernels run."""
    return in_background(load_kernels, "cellmapper-numba-warm-up") if jit.kernels_ready() else None
