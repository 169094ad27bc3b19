"""GPU brute-force k-nearest-neighbour search in tiles (matrix product plus top-k), with cupy.

The reference stays on the device with its squared norms; queries stream through in tiles. For a
query tile ``Q`` and a reference tile ``R`` the ranking key is ``|r|^2 - 2 q.r`` (``|q|^2`` is
constant per row and is added to the k winners only, then negatives are clamped to 0). The k
smallest keys of each row are selected exactly, and merged with the running best k of the earlier
reference tiles; ties always resolve to the lower reference row.

Three tile steps (``CupyIndex(select=...)``):

``"warp"`` (default for k <= :data:`WARP_MAX_K`)
    one cuBLAS GEMM into ``Q R^T``, then one raw kernel in which a warp scans one query row (32
    consecutive reference rows per load, coalesced) and keeps its k best in registers, one entry
    per lane: a ballot finds the keys below the current k-th best, and each is inserted with one
    more ballot and a shuffle. Lanes never diverge, and the list starts from the running best of
    the earlier reference tiles, so after the first tile almost every key is rejected by one
    compare: the step runs at the speed of reading the product matrix.
``"fused"`` (default for :data:`WARP_MAX_K` < k <= :data:`FUSED_MAX_K`)
    one cuBLAS GEMM into ``R Q^T`` (so a warp reads consecutive query rows), then a raw kernel in
    which each thread keeps the k smallest keys of one query row over one reference segment by
    insertion (one read of the product matrix, keys computed on the fly), then a raw kernel that
    merges the segments' lists with the running best. ``cupy.argpartition`` is avoided: it is a
    full sort in cupy.
``"threshold"``
    written once against an array module ``xp`` (cupy or numpy) and run on the CPU by
    :func:`_tiled_topk_numpy` for the tests: key matrix (GEMM plus one elementwise pass),
    ``tau`` = k-th smallest key per row (``xp.partition``, a real partition kernel in cupy), one
    pass collecting the columns with key ``< tau`` (at most k - 1) and enough with key ``== tau``
    (an atomic-append kernel on the GPU, an equivalent NumPy emulation on the CPU), then stable
    sorts of k and 2k columns for order and merge. Several passes over each tile, but simple.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from napari_cellmapper.core.validation import CellMapperInputError

#: fraction of free device memory given to one query tile x reference tile step
TILE_MEMORY_FRACTION = 0.4
#: device bytes per tile element: keys/products (4) + partition copy (4, threshold step) + slack (4)
_BYTES_PER_PAIR = 12
_MAX_QUERY_TILE = 65_536
_MIN_TILE = 1_024
_TILE_QUANTUM = 256
#: faiss' distance for "no neighbour" (``to_true_distances`` maps it to inf)
_MISSING = np.float32(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- shared tile logic


def _is_numpy(xp: ModuleType) -> bool:
    return xp is np


def _stable_argsort(xp: ModuleType, a: Any) -> Any:
    """Row-wise stable argsort (cupy's argsort is always stable and takes no ``kind``)."""
    return xp.argsort(a, axis=1, kind="stable") if _is_numpy(xp) else xp.argsort(a, axis=1)


def _squared_norms(xp: ModuleType, x: Any) -> Any:
    """``(n,)`` float32 squared row norms."""
    return (x * x).sum(axis=1, dtype=xp.float32)


def _keys_numpy(query: np.ndarray, ref: np.ndarray, ref_sq: np.ndarray) -> np.ndarray:
    """``|r|^2 - 2 q.r`` for a tile pair (NumPy)."""
    keys = query @ ref.T
    keys *= np.float32(-2)
    keys += ref_sq[None, :]
    return keys


def _compact_numpy(keys: np.ndarray, tau: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU emulation of the GPU compaction kernel, same outputs (columns in ascending order).

    Returns ``lt_idx`` (columns with key < tau, first ``lt_cnt`` of each row valid), ``lt_cnt`` and
    ``eq_idx`` (columns with key == tau, at least ``k - lt_cnt`` valid per row).
    """
    lt = keys < tau[:, None]
    eq = keys == tau[:, None]
    rank = np.where(lt, 0, np.where(eq, 1, 2)).astype(np.int8)
    order = np.argsort(rank, axis=1, kind="stable").astype(np.int32)
    lt_cnt = lt.sum(axis=1).astype(np.int32)
    eq_pos = np.minimum(lt_cnt[:, None] + np.arange(k, dtype=np.int32), keys.shape[1] - 1)
    return order[:, :k], lt_cnt, np.take_along_axis(order, eq_pos, axis=1)


def _select(xp: ModuleType, keys: Any, k: int, compact: Callable) -> tuple[Any, Any]:
    """The k smallest keys of each row and their columns, ordered by (key, column)."""
    m, n = keys.shape
    if k >= n:
        cols = xp.broadcast_to(xp.arange(n, dtype=xp.int64), (m, n)).copy()
        vals = keys
    else:
        tau = xp.partition(keys, k - 1, axis=1)[:, k - 1].copy()
        lt_idx, lt_cnt, eq_idx = compact(keys, tau, k)
        slot = xp.arange(k, dtype=xp.int32)[None, :]
        n_lt = lt_cnt.astype(xp.int32)[:, None]
        eq_pick = xp.take_along_axis(eq_idx, xp.clip(slot - n_lt, 0, k - 1), axis=1)
        cols = xp.where(slot < n_lt, lt_idx, eq_pick).astype(xp.int64)
        cols = xp.sort(cols, axis=1)
        vals = xp.take_along_axis(keys, cols, axis=1)
    order = _stable_argsort(xp, vals)
    return xp.take_along_axis(vals, order, axis=1), xp.take_along_axis(cols, order, axis=1)


def _merge(xp: ModuleType, best: tuple[Any, Any], new: tuple[Any, Any], k: int) -> tuple[Any, Any]:
    """Keep the k smallest of the running best and a later tile's winners (ties: earlier first)."""
    vals = xp.concatenate([best[0], new[0]], axis=1)
    cols = xp.concatenate([best[1], new[1]], axis=1)
    order = _stable_argsort(xp, vals)[:, :k]
    return xp.take_along_axis(vals, order, axis=1), xp.take_along_axis(cols, order, axis=1)


def _threshold_step(keys_fn: Callable, compact: Callable) -> Callable:
    """Tile step "keys, threshold selection, merge" (the path shared with the NumPy reference)."""

    def step(
        xp: ModuleType, query: Any, ref: Any, ref_sq: Any, k: int, r0: int, best: Any
    ) -> tuple[Any, Any]:
        keys = keys_fn(query, ref, ref_sq)
        vals, cols = _select(xp, keys, k, compact)
        del keys
        cols += r0
        return (vals, cols) if best is None else _merge(xp, best, (vals, cols), k)

    return step


def _query_tile_topk(
    xp: ModuleType, query: Any, reference: Any, ref_sq: Any, k: int, ref_tile: int, step: Callable
) -> tuple[Any, Any]:
    """Squared L2 distances and indices of the k nearest reference rows of one query tile."""
    best = None
    for r0 in range(0, reference.shape[0], ref_tile):
        r1 = min(r0 + ref_tile, reference.shape[0])
        best = step(xp, query, reference[r0:r1], ref_sq[r0:r1], k, r0, best)
    assert best is not None
    d2 = best[0] + _squared_norms(xp, query)[:, None]
    return xp.maximum(d2, 0, out=d2), best[1]


def _tiled_topk(
    xp: ModuleType,
    query: np.ndarray,
    reference: Any,
    ref_sq: Any,
    k: int,
    query_tile: int,
    ref_tile: int,
    step: Callable,
) -> tuple[np.ndarray, np.ndarray]:
    """All query tiles; host ``(n_query, k)`` float32 squared distances and int64 indices.

    Like faiss, rows shorter than k (a reference with fewer than k rows) are padded with index
    ``-1`` and distance ``float32 max``.
    """
    n_query, n_ref = query.shape[0], reference.shape[0]
    distances = np.full((n_query, k), _MISSING, dtype=np.float32)
    indices = np.full((n_query, k), -1, dtype=np.int64)
    kk = min(k, n_ref)
    if kk == 0 or n_query == 0:
        return distances, indices
    for q0 in range(0, n_query, query_tile):
        q1 = min(q0 + query_tile, n_query)
        q = xp.asarray(query[q0:q1])
        d2, idx = _query_tile_topk(xp, q, reference, ref_sq, kk, ref_tile, step)
        distances[q0:q1, :kk] = d2 if _is_numpy(xp) else xp.asnumpy(d2)
        indices[q0:q1, :kk] = idx if _is_numpy(xp) else xp.asnumpy(idx)
    return distances, indices


def _tiled_topk_numpy(
    query: np.ndarray, reference: np.ndarray, k: int, tile: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The GPU algorithm run on the CPU with NumPy (for tests): squared L2 and indices like faiss.

    ``tile`` is the edge of a square tile, or ``(query_tile, reference_tile)``.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    tq, tr = (tile, tile) if isinstance(tile, (int, np.integer)) else tile
    return _tiled_topk(
        np,
        query,
        reference,
        _squared_norms(np, reference),
        k,
        int(tq),
        int(tr),
        _threshold_step(_keys_numpy, _compact_numpy),
    )


# --------------------------------------------------------------------------- cupy primitives


@cache
def _cupy_kernels() -> tuple[Any, Any]:
    """(keys, compact) elementwise kernels, compiled on first use."""
    import cupy

    keys = cupy.ElementwiseKernel(
        "raw float32 ref_sq, int64 n_cols",
        "float32 x",
        "x = ref_sq[i % n_cols] - 2.0f * x",
        "cellmapper_knn_keys",
    )
    compact = cupy.ElementwiseKernel(
        "float32 key, raw float32 tau, int64 n_cols, int32 k",
        "raw int32 lt_idx, raw int32 lt_cnt, raw int32 eq_idx, raw int32 eq_cnt",
        """
        const long long row = (long long)i / n_cols;
        const int col = (int)((long long)i - row * n_cols);
        const float t = tau[row];
        if (key < t) {
            const int p = atomicAdd(&lt_cnt[row], 1);
            if (p < k) lt_idx[row * k + p] = col;
        } else if (key == t) {
            const int p = atomicAdd(&eq_cnt[row], 1);
            if (p < k) eq_idx[row * k + p] = col;
        }
        """,
        "cellmapper_knn_compact",
    )
    return keys, compact


def _keys_cupy(query: Any, ref: Any, ref_sq: Any) -> Any:
    """``|r|^2 - 2 q.r`` for a tile pair: cuBLAS GEMM, then one fused in-place pass."""
    keys_kernel, _ = _cupy_kernels()
    keys = query @ ref.T
    keys_kernel(ref_sq, ref.shape[0], keys)
    return keys


def _compact_cupy(keys: Any, tau: Any, k: int) -> tuple[Any, Any, Any]:
    """One pass over the tile: columns with key < tau and (up to k) with key == tau, per row."""
    import cupy

    _, compact_kernel = _cupy_kernels()
    m, n = keys.shape
    lt_idx = cupy.zeros((m, k), dtype=cupy.int32)
    eq_idx = cupy.zeros((m, k), dtype=cupy.int32)
    lt_cnt = cupy.zeros(m, dtype=cupy.int32)
    eq_cnt = cupy.zeros(m, dtype=cupy.int32)
    compact_kernel(keys, tau, n, k, lt_idx, lt_cnt, eq_idx, eq_cnt)
    return lt_idx, lt_cnt, eq_idx


#: ``select`` choices of :class:`CupyIndex`
SELECTIONS = ("auto", "warp", "fused", "threshold")
#: largest k the fused kernels handle (per-thread top-k lists live in local memory)
FUSED_MAX_K = 256
#: the fused scan aims for about this many threads per tile pair (row x segment)
_FUSED_THREADS = 1 << 19
_FUSED_BLOCK = 128

_FUSED_SOURCE = r"""
#define CELLMAPPER_INF __int_as_float(0x7f800000)
// Top-k per query row over one reference tile, straight from the transposed inner products.
// ip is (n_cols, m) row-major: ip[j * m + t] = q_t . r_j, so a warp reads 32 consecutive query
// rows of one reference row (coalesced). Thread (t, s) scans reference rows j of segment s and
// keeps its k smallest keys |r_j|^2 - 2 q_t . r_j by insertion, ties keeping the lower j.
extern "C" __global__ void cellmapper_knn_scan(
        const float* __restrict__ ip, const float* __restrict__ ref_sq,
        const int m, const int n_cols, const int seg_len, const long long r0,
        float* __restrict__ out_d, long long* __restrict__ out_i) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    if (t >= m) return;
    const int j0 = s * seg_len;
    const int j1 = min(j0 + seg_len, n_cols);
    float bd[KMAX];
    int bj[KMAX];
    int cnt = 0;
    float worst = CELLMAPPER_INF;
    for (int j = j0; j < j1; ++j) {
        const float key = ref_sq[j] - 2.0f * ip[(long long)j * m + t];
        if (cnt == KMAX && !(key < worst)) continue;
        int p = (cnt < KMAX) ? cnt++ : KMAX - 1;
        while (p > 0 && bd[p - 1] > key) { bd[p] = bd[p - 1]; bj[p] = bj[p - 1]; --p; }
        bd[p] = key; bj[p] = j;
        if (cnt == KMAX) worst = bd[KMAX - 1];
    }
    const long long base = ((long long)t * gridDim.y + s) * KMAX;
    for (int p = 0; p < KMAX; ++p) {
        out_d[base + p] = (p < cnt) ? bd[p] : CELLMAPPER_INF;
        out_i[base + p] = (p < cnt) ? r0 + bj[p] : -1LL;
    }
}

#if KMAX <= 32
#define CELLMAPPER_FULL 0xffffffffu
// Top-k per query row, one warp per (row, segment), from the inner products ip (m, n_cols)
// row-major (ip[t * n_cols + j] = q_t . r_j): lane p holds entry p of the row's sorted list, which
// starts from init (the running best, or +inf). Each step the warp loads 32 consecutive keys; the
// keys below the k-th best are inserted in column order (ties keep the earlier entry).
extern "C" __global__ void cellmapper_knn_warp(
        const float* __restrict__ ip, const float* __restrict__ ref_sq,
        const int m, const int n_cols, const int seg_len, const long long r0,
        const float* __restrict__ init_d, const long long* __restrict__ init_i,
        float* __restrict__ out_d, long long* __restrict__ out_i) {
    const int lane = threadIdx.x & 31;
    const long long t = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (t >= m) return;  // the whole warp: one row per warp
    const int s = blockIdx.y;
    const int j0 = s * seg_len;
    const int j1 = min(j0 + seg_len, n_cols);
    float my_d = CELLMAPPER_INF;
    long long my_i = -1LL;
    if (lane < KMAX) {
        my_i = init_i[t * KMAX + lane];
        my_d = (my_i < 0) ? CELLMAPPER_INF : init_d[t * KMAX + lane];
    }
    float worst = __shfl_sync(CELLMAPPER_FULL, my_d, KMAX - 1);
    const float* row = ip + t * n_cols;
    for (int base = j0; base < j1; base += 32) {
        const int j = base + lane;
        const float key = (j < j1) ? ref_sq[j] - 2.0f * row[j] : CELLMAPPER_INF;
        unsigned mask = __ballot_sync(CELLMAPPER_FULL, key < worst);
        while (mask) {
            const int src = __ffs(mask) - 1;
            const float ck = __shfl_sync(CELLMAPPER_FULL, key, src);
            const int pos = __popc(__ballot_sync(CELLMAPPER_FULL, lane < KMAX && my_d <= ck));
            const float up_d = __shfl_up_sync(CELLMAPPER_FULL, my_d, 1);
            const long long up_i = __shfl_up_sync(CELLMAPPER_FULL, my_i, 1);
            if (lane == pos) {
                my_d = ck;
                my_i = r0 + base + src;
            } else if (lane > pos && lane < KMAX) {
                my_d = up_d;
                my_i = up_i;
            }
            worst = __shfl_sync(CELLMAPPER_FULL, my_d, KMAX - 1);
            mask &= __ballot_sync(CELLMAPPER_FULL, key < worst) & ~(1u << src);
        }
    }
    if (lane < KMAX) {
        const long long o = (t * gridDim.y + s) * KMAX + lane;
        out_d[o] = my_d;
        out_i[o] = (my_d < CELLMAPPER_INF) ? my_i : -1LL;
    }
}
#endif

// New running best per query row: the k smallest of [best (k), candidates (n_cand)], scanned in
// that order with the same insertion rule, so ties keep the lower reference row.
extern "C" __global__ void cellmapper_knn_merge(
        const float* __restrict__ best_d, const long long* __restrict__ best_i,
        const float* __restrict__ cand_d, const long long* __restrict__ cand_i,
        const int m, const int n_best, const int n_cand,
        float* __restrict__ out_d, long long* __restrict__ out_i) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= m) return;
    float bd[KMAX];
    long long bi[KMAX];
    int cnt = 0;
    float worst = CELLMAPPER_INF;
    for (int c = 0; c < n_best + n_cand; ++c) {
        const bool from_best = c < n_best;
        const long long off = from_best ? (long long)t * n_best + c : (long long)t * n_cand + (c - n_best);
        const long long idx = from_best ? best_i[off] : cand_i[off];
        if (idx < 0) continue;
        const float key = from_best ? best_d[off] : cand_d[off];
        if (cnt == KMAX && !(key < worst)) continue;
        int p = (cnt < KMAX) ? cnt++ : KMAX - 1;
        while (p > 0 && bd[p - 1] > key) { bd[p] = bd[p - 1]; bi[p] = bi[p - 1]; --p; }
        bd[p] = key; bi[p] = idx;
        if (cnt == KMAX) worst = bd[KMAX - 1];
    }
    for (int p = 0; p < KMAX; ++p) {
        out_d[(long long)t * KMAX + p] = (p < cnt) ? bd[p] : CELLMAPPER_INF;
        out_i[(long long)t * KMAX + p] = (p < cnt) ? bi[p] : -1LL;
    }
}
"""


@cache
def _fused_kernels(k: int, device: int) -> tuple[Any, Any, Any]:
    """(scan, merge, warp) raw kernels compiled for this k (``KMAX``) and device, on first use.

    ``warp`` is None for k > :data:`WARP_MAX_K`.
    """
    import cupy

    module = cupy.RawModule(code=_FUSED_SOURCE, options=(f"-DKMAX={int(k)}",))
    warp = module.get_function("cellmapper_knn_warp") if k <= WARP_MAX_K else None
    return module.get_function("cellmapper_knn_scan"), module.get_function("cellmapper_knn_merge"), warp


def _fused_segments(m: int, n: int, k: int) -> int:
    """Segments per reference tile: enough threads, each scanning at least 8k reference rows."""
    wanted = -(-_FUSED_THREADS // max(m, 1))
    return int(max(1, min(wanted, n // (8 * k))))


def _fused_step(
    xp: ModuleType, query: Any, ref: Any, ref_sq: Any, k: int, r0: int, best: Any
) -> tuple[Any, Any]:
    """Tile step on the GPU: one GEMM, one scan kernel, one merge kernel (no key matrix pass)."""
    scan, merge, _ = _fused_kernels(k, xp.cuda.Device().id)
    m, n = query.shape[0], ref.shape[0]
    ip = xp.ascontiguousarray(ref @ query.T)  # (n, m): a warp reads consecutive query rows
    n_seg = _fused_segments(m, n, k)
    seg_len = -(-n // n_seg)
    cand_d = xp.empty((m, n_seg * k), dtype=xp.float32)
    cand_i = xp.empty((m, n_seg * k), dtype=xp.int64)
    grid = (-(-m // _FUSED_BLOCK), n_seg)
    scan_args = (ip, ref_sq, np.int32(m), np.int32(n), np.int32(seg_len), np.int64(r0), cand_d, cand_i)
    scan(grid, (_FUSED_BLOCK,), scan_args)
    del ip
    return _merge_candidates(xp, merge, best, cand_d, cand_i, k)


def _empty_best(xp: ModuleType, m: int, k: int) -> tuple[Any, Any]:
    """A running best with no neighbour yet (+inf, -1)."""
    return xp.full((m, k), np.inf, dtype=xp.float32), xp.full((m, k), -1, dtype=xp.int64)


def _merge_candidates(
    xp: ModuleType, merge: Any, best: Any, cand_d: Any, cand_i: Any, k: int
) -> tuple[Any, Any]:
    """The merge kernel: the k best of the running best (None: empty) and ``(m, c)`` candidates."""
    m = cand_d.shape[0]
    best = _empty_best(xp, m, k) if best is None else best
    out_d = xp.empty((m, k), dtype=xp.float32)
    out_i = xp.empty((m, k), dtype=xp.int64)
    merge(
        (-(-m // _FUSED_BLOCK),),
        (_FUSED_BLOCK,),
        (best[0], best[1], cand_d, cand_i, np.int32(m), np.int32(k), np.int32(cand_d.shape[1]), out_d, out_i),
    )
    return out_d, out_i


#: largest k of the warp kernel (one list entry per lane)
WARP_MAX_K = 32
#: the warp scan aims for at least this many warps per launch (an H200 holds 132 x 64 at once)
_WARP_TARGET = 16_384
#: warps (query rows) per block
_WARP_ROWS = 4
#: shortest reference segment one warp scans when a tile has few query rows
_WARP_MIN_SEGMENT = 2_048


def _warp_segments(m: int, n: int) -> int:
    """Segments per reference tile: one when the query tile alone fills the device."""
    wanted = -(-_WARP_TARGET // max(m, 1))
    return int(max(1, min(wanted, n // _WARP_MIN_SEGMENT)))


def _warp_step(
    xp: ModuleType, query: Any, ref: Any, ref_sq: Any, k: int, r0: int, best: Any
) -> tuple[Any, Any]:
    """Tile step on the GPU: one GEMM and one warp-per-row kernel that starts from the running best.

    With several segments per row (few query rows), each segment starts empty and one merge
    kernel combines them with the running best.
    """
    _, merge, warp = _fused_kernels(k, xp.cuda.Device().id)
    m, n = query.shape[0], ref.shape[0]
    ip = xp.ascontiguousarray(query @ ref.T)  # (m, n): a warp reads consecutive reference rows
    n_seg = _warp_segments(m, n)
    seg_len = -(-n // n_seg)
    init = best if n_seg == 1 and best is not None else _empty_best(xp, m, k)
    out_d = xp.empty((m, n_seg * k), dtype=xp.float32)
    out_i = xp.empty((m, n_seg * k), dtype=xp.int64)
    grid = (-(-m // _WARP_ROWS), n_seg)
    args = (ip, ref_sq, np.int32(m), np.int32(n), np.int32(seg_len), np.int64(r0), *init, out_d, out_i)
    warp(grid, (32 * _WARP_ROWS,), args)
    del ip
    if n_seg == 1:
        return out_d, out_i
    return _merge_candidates(xp, merge, best, out_d, out_i, k)


def scan_step(k: int) -> Callable:
    """The fastest raw-kernel tile step for k neighbours (warp for k <= 32, else fused)."""
    return _warp_step if k <= WARP_MAX_K else _fused_step


# --------------------------------------------------------------------------- the index


class CupyIndex:
    """Exact k-NN on one NVIDIA GPU: the reference stays on the device, queries stream in tiles.

    Parameters
    ----------
    reference
        ``(n, d)`` rows, already float32 and (for cosine) L2-normalised by the caller.
    tile_size
        Rows per query tile and per reference tile; default: from free device memory
        (``TILE_MEMORY_FRACTION`` of it for one tile pair, query tiles of at most 65,536 rows).
    device
        CUDA device number.
    dtype
        Storage and compute type; only ``"float32"`` is supported.
    select
        Top-k selection per tile. ``"warp"`` (k <= 32): GEMM into ``Q R^T`` then one raw kernel,
        a warp per query row keeping its k best in registers, starting from the running best.
        ``"fused"`` (k <= 256): GEMM into ``R Q^T`` then two small raw kernels (per-thread
        insertion top-k over reference segments, then a merge with the running best). Both read
        the product matrix once. ``"threshold"``: the path shared with the NumPy reference (key
        pass, ``cupy.partition`` threshold, atomic compaction, stable sorts), several passes.
        ``"auto"``: ``"warp"`` for ``k <= WARP_MAX_K``, ``"fused"`` up to ``FUSED_MAX_K``, else
        ``"threshold"``; ``"threshold"`` (with a warning) if the raw kernels fail to compile.

    Notes
    -----
    ``search`` returns NumPy arrays (squared L2 float32, int64 indices), rows sorted ascending
    with ties in reference order, like ``faiss.IndexFlatL2.search``. Plain device allocations
    from cupy's default memory pool are used (no managed memory).
    """

    backend = "cupy"

    def __init__(
        self,
        reference: np.ndarray,
        *,
        tile_size: int | None = None,
        device: int = 0,
        dtype: Any = "float32",
        select: str = "auto",
    ) -> None:
        if select not in SELECTIONS:
            raise CellMapperInputError(f"select must be one of {SELECTIONS}, got {select!r}.")
        if np.dtype(dtype) != np.float32:
            raise CellMapperInputError(f"CupyIndex supports dtype='float32' only, got {dtype!r}.")
        if tile_size is not None and (
            not isinstance(tile_size, (int, np.integer)) or isinstance(tile_size, bool) or tile_size < 1
        ):
            raise CellMapperInputError(f"tile_size must be a positive integer or None, got {tile_size!r}.")
        try:
            import cupy
        except ImportError as err:
            raise CellMapperInputError(
                "backend='cupy' needs cupy and an NVIDIA GPU. Install the 'gpu' extra "
                "(`pip install 'napari-cellmapper[gpu]'`) on a GPU machine, or use another backend."
            ) from err
        reference = np.asarray(reference)
        if reference.ndim != 2:
            raise CellMapperInputError(f"the reference must be 2-D, got shape {reference.shape}.")
        self._cupy = cupy
        self.device = int(device)
        self.select = select
        self.tile_size = None if tile_size is None else int(tile_size)
        self.n_reference, self.dim = reference.shape
        with cupy.cuda.Device(self.device):
            self._ref = cupy.asarray(np.ascontiguousarray(reference, dtype=np.float32))
            self._ref_sq = _squared_norms(cupy, self._ref)
        #: (query tile, reference tile) and selection used by the last search
        self.last_tiles: tuple[int, int] | None = None
        self.last_select: str | None = None

    def tiles(self, n_query: int) -> tuple[int, int]:
        """(query rows, reference rows) per tile for a query of ``n_query`` rows."""
        n_ref = max(self.n_reference, 1)
        if self.tile_size is not None:
            return max(1, min(self.tile_size, n_query)), min(self.tile_size, n_ref)
        cupy = self._cupy
        with cupy.cuda.Device(self.device):
            free, _ = cupy.cuda.runtime.memGetInfo()
            free += cupy.get_default_memory_pool().free_bytes()  # cached blocks are reusable
        pairs = max(TILE_MEMORY_FRACTION * free / _BYTES_PER_PAIR, float(_MIN_TILE * _MIN_TILE))
        edge = int(math.sqrt(pairs))
        tq = max(1, min(n_query, _MAX_QUERY_TILE, max(edge, _MIN_TILE)))
        tr = int(pairs // tq) // _TILE_QUANTUM * _TILE_QUANTUM
        return tq, max(1, min(n_ref, max(tr, _MIN_TILE)))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances (float32) and indices (int64) of the k nearest reference rows.

        Rows are sorted ascending; the call returns after the device work finished (host arrays),
        so it can be timed directly.
        """
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise CellMapperInputError(
                f"query must be (n, {self.dim}) to match the reference, got shape {query.shape}."
            )
        if k < 1:
            raise CellMapperInputError(f"k must be a positive integer, got {k!r}.")
        cupy = self._cupy
        k = int(k)
        with cupy.cuda.Device(self.device):
            tq, tr = self.last_tiles = self.tiles(query.shape[0])
            step = self._step(min(k, self.n_reference))
            return _tiled_topk(cupy, query, self._ref, self._ref_sq, k, tq, tr, step)

    def _step(self, k: int) -> Callable:
        """The tile step for this search (see ``select``)."""
        if self.select == "threshold" or (self.select == "auto" and k > FUSED_MAX_K):
            self.last_select = "threshold"
            return _threshold_step(_keys_cupy, _compact_cupy)
        limits = {"fused": FUSED_MAX_K, "warp": WARP_MAX_K}
        limit = limits.get(self.select, k)
        if k > limit:
            raise CellMapperInputError(f"select={self.select!r} supports k <= {limit}, got k={k}.")
        try:
            _fused_kernels(k, self.device)
        except Exception as err:  # noqa: BLE001 - NVRTC/driver errors: the generic path still works
            if self.select != "auto":
                raise
            warnings.warn(
                f"cupy fused top-k kernels unavailable ({err}); using the slower threshold selection.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.select = "threshold"
            return self._step(k)
        if self.select == "fused" or (self.select == "auto" and k > WARP_MAX_K):
            self.last_select = "fused"
            return _fused_step
        self.last_select = "warp"
        return _warp_step
