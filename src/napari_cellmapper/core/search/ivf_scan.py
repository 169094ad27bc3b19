"""The inverted-file scan: each query's k nearest rows among the lists it probes (numba).

faiss trains the coarse centroids and picks each query's ``nprobe`` nearest lists
(:mod:`.faiss_index`); this kernel scans those lists. It keeps the k best candidates the way a
partial sort does: candidates closer than the current k-th best are appended to a small buffer,
and when the buffer is full a quickselect keeps the k best and tightens the threshold. With
k = 30 that costs a few selections per query instead of a heap update per accepted candidate,
which made faiss' own IVF scan spend a third of its time in the heap at 100k cells.

Rows are stored sorted by list, so a list is one contiguous block of the ``vectors`` array.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from napari_cellmapper.core import jit
from napari_cellmapper.core.numba_threads import in_background, launch_lock

#: queries per kernel task
_GRAIN = 64
#: candidate buffer, in multiples of k
_BUFFER = 4
#: distance reported for missing neighbours (fewer than k rows in the probed lists)
MISSING = np.float32(np.inf)


@njit(cache=True, nogil=True, fastmath=True)
def _distances(q, vectors, start, size, out):  # pragma: no cover
    """Squared L2 distances from ``q`` to ``vectors[start:start + size]``."""
    d = q.shape[0]
    for t in range(size):
        s = np.float32(0)
        for u in range(d):
            diff = q[u] - vectors[start + t, u]
            s += diff * diff
        out[t] = s


@njit(cache=True, nogil=True, inline="always")
def _swap(dist, ids, a, b):  # pragma: no cover
    dist[a], dist[b] = dist[b], dist[a]
    ids[a], ids[b] = ids[b], ids[a]


@njit(cache=True, nogil=True)
def _select(dist, ids, n, k):  # pragma: no cover
    """Reorder ``dist[:n]`` (and ``ids``) so the k smallest come first; return the k-th smallest."""
    lo, hi, target = 0, n - 1, k - 1
    while hi > lo:
        mid = (lo + hi) >> 1  # median of three, moved to hi as the pivot
        if dist[mid] < dist[lo]:
            _swap(dist, ids, mid, lo)
        if dist[hi] < dist[lo]:
            _swap(dist, ids, hi, lo)
        if dist[mid] < dist[hi]:
            _swap(dist, ids, mid, hi)
        pivot, store = dist[hi], lo
        for t in range(lo, hi):  # Lomuto without branches: always swap, advance if smaller
            d = dist[t]
            _swap(dist, ids, t, store)
            store += d < pivot
        _swap(dist, ids, store, hi)
        if store == target:
            break
        if store < target:
            lo = store + 1
        else:
            hi = store - 1
    kth = dist[0]
    for t in range(1, k):
        kth = max(kth, dist[t])
    return kth


@njit(cache=True, nogil=True)
def _sort(dist, ids, n):  # pragma: no cover
    """Insertion sort of ``dist[:n]`` (and ``ids``): n is k, small."""
    for a in range(1, n):
        d, i, b = dist[a], ids[a], a - 1
        while b >= 0 and dist[b] > d:
            dist[b + 1], ids[b + 1] = dist[b], ids[b]
            b -= 1
        dist[b + 1], ids[b + 1] = d, i


@njit(parallel=True, cache=True, nogil=True)
def _scan(queries, order, probes, offsets, vectors, ids, k, max_list, out_dist, out_ids):  # pragma: no cover
    n = queries.shape[0]
    cap = _BUFFER * k
    for task in prange((n + _GRAIN - 1) // _GRAIN):
        dist = np.empty(cap, np.float32)
        found = np.empty(cap, np.int64)
        block = np.empty(max_list, np.float32)
        for r in range(task * _GRAIN, min(n, (task + 1) * _GRAIN)):
            i = order[r]
            q = queries[i]
            m = 0
            threshold = np.float32(3.0e38)
            for p in range(probes.shape[1]):
                cell = probes[i, p]
                if cell < 0:
                    continue
                start = offsets[cell]
                size = offsets[cell + 1] - start
                _distances(q, vectors, start, size, block)
                for t in range(size):  # append without branching; the buffer has room for one
                    dist[m], found[m] = block[t], ids[start + t]
                    m += block[t] < threshold
                    if m == cap:
                        threshold = _select(dist, found, m, k)
                        m = k
            if m > k:
                _select(dist, found, m, k)
                m = k
            _sort(dist, found, m)
            for t in range(k):
                out_dist[i, t] = dist[t] if t < m else MISSING
                out_ids[i, t] = found[t] if t < m else -1


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _nearest(queries, centroids, out):  # pragma: no cover
    """Per query, the ``out.shape[1]`` nearest centroids (ascending squared L2)."""
    n, n_lists, width = queries.shape[0], centroids.shape[0], out.shape[1]
    for task in prange((n + _GRAIN - 1) // _GRAIN):
        best = np.empty(width, dtype=np.float32)
        dist = np.empty(n_lists, dtype=np.float32)
        for i in range(task * _GRAIN, min(n, (task + 1) * _GRAIN)):
            _distances(queries[i], centroids, 0, n_lists, dist)
            best[:] = np.inf
            lists = out[i]
            lists[:] = -1
            for c in range(n_lists):
                s = dist[c]
                if s < best[width - 1]:
                    j = width - 1
                    while j > 0 and best[j - 1] > s:
                        best[j], lists[j] = best[j - 1], lists[j - 1]
                        j -= 1
                    best[j], lists[j] = s, c


def nearest_lists(queries: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """``(n, nprobe)`` int64: each query's nearest centroids, nearest first. (faiss' flat index
    keeps a heap per query, which cost more than the distances for nprobe = 6 of 632 lists.)"""
    out = np.empty((queries.shape[0], min(int(nprobe), centroids.shape[0])), dtype=np.int64)
    if queries.shape[0]:
        with launch_lock():
            _nearest(queries, centroids, out)
    return out


def scan(
    queries: np.ndarray,
    probes: np.ndarray,
    offsets: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances (ascending) and ids of each query's k nearest rows in its lists.

    Parameters
    ----------
    queries
        ``(n, d)`` float32, C-contiguous.
    probes
        ``(n, nprobe)`` int64 list numbers per query (``-1``: none).
    offsets
        ``(n_lists + 1,)`` int64: list ``c`` is ``vectors[offsets[c]:offsets[c + 1]]``.
    vectors, ids
        ``(n_rows, d)`` float32 rows sorted by list, and the id each row stands for.
    k
        Neighbours per query; missing ones (fewer than k rows probed) get id -1, distance inf.
    """
    n = queries.shape[0]
    out_dist = np.empty((n, k), dtype=np.float32)
    out_ids = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return out_dist, out_ids
    max_list = int(np.diff(offsets).max(initial=0))
    # queries taken grouped by their nearest list: a thread then scans the same lists one query
    # after another and finds them in cache (at 1M cells the lists no longer fit in it)
    order = np.argsort(probes[:, 0], kind="stable")
    with launch_lock():
        _scan(queries, order, probes, offsets, vectors, ids, int(k), max(max_list, 1), out_dist, out_ids)
    return out_dist, out_ids


def load_kernels() -> None:
    """Load (or compile, the first time on a machine) the kernels: a search of two rows."""
    rows = np.zeros((2, 8), dtype=np.float32)
    scan(rows, nearest_lists(rows, rows[:1], 1), np.array([0, 2], np.int64), rows, np.arange(2), 1)


def warm_up() -> threading.Thread | None:
    """Load the kernels in a background thread, when :mod:`.jit` lets them run."""
    return in_background(load_kernels, "cellmapper-ivf-warm-up") if jit.kernels_ready() else None
