"""The label transfer's per-cell arithmetic as numba kernels: one pass per query row, in parallel.

Three steps of a label transfer touch every query cell's class probabilities:

* the class vote, ``M · onehot(labels)`` divided by each row's total (:func:`class_probabilities`);
* the reference graph's vote (:func:`graph_votes`, see :mod:`.graph_vote`);
* the pooling with the classifier head and the calibration (:func:`mix_rows`: the log-linear pool of
  :func:`.label_head.pool`, the temperature, then confidence, prediction and entropy).

In NumPy each is a dozen whole-array passes over float64 temporaries on one core (at 1M cells and 20
types: 2-3 s of a label transfer). Here each query row is read once and its results written once,
rows spread over the cores; the arithmetic is the same, in float64 (results equal NumPy's to float32
rounding: ``tests/test_label_kernels.py``).

The kernels run once compiled (see :mod:`.jit`: until then, and for small inputs, the NumPy steps of
:mod:`.transfer` run); :func:`warm_up` loads them in a background thread.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from napari_cellmapper.core import jit
from napari_cellmapper.core.label_head import HEAD_FLOOR, KNN_FLOOR
from napari_cellmapper.core.numba_threads import in_background, launch_lock

#: below this many probabilities (rows x classes) NumPy finishes before the kernels would load in a
#: fresh process (about 0.2 s)
SMALL = 2_000_000
#: query rows per kernel task
_GRAIN = 512
#: most tasks of the graph vote (each allocates a count per reference cell)
_GRAPH_TASKS = 64


def use_kernels(n_rows: int, n_classes: int) -> bool:
    """Whether ``n_rows`` x ``n_classes`` probabilities go through the kernels (large enough, and
    the kernels compiled: see :mod:`.jit`)."""
    return n_rows * max(n_classes, 1) >= SMALL and jit.use_kernels()


@njit(parallel=True, cache=True, nogil=True)
def _class_probabilities(indptr, indices, data, codes, out):  # pragma: no cover - compiled
    n, n_cat = out.shape
    for task in prange((n + _GRAIN - 1) // _GRAIN):
        sums = np.empty(n_cat, np.float64)
        for r in range(task * _GRAIN, min(n, (task + 1) * _GRAIN)):
            sums[:] = 0.0
            total = 0.0
            for j in range(indptr[r], indptr[r + 1]):
                c = codes[indices[j]]
                if c >= 0:
                    w = np.float64(data[j])
                    sums[c] += w
                    total += w
            if total > 0:
                for c in range(n_cat):
                    out[r, c] += sums[c] / total


def class_probabilities(indptr, indices, data, codes, out) -> None:
    """``out[r]`` += row ``r`` of M's weights summed per class of the reference cells (``codes``,
    -1: no label, ignored), divided by their total; ``indptr`` holds the rows' global offsets into
    ``indices`` / ``data`` (a slice of a CSR matrix's ``indptr``). Same as
    ``transfer._class_probabilities``."""
    # one compiled signature per index width (the background compile makes both: see load_kernels)
    wide = np.int64 in (np.asarray(indptr).dtype, np.asarray(indices).dtype)
    itype = np.int64 if wide else np.int32
    with launch_lock():
        _class_probabilities(
            np.ascontiguousarray(indptr, itype),
            np.ascontiguousarray(indices, itype),
            np.ascontiguousarray(data, np.float32),
            np.ascontiguousarray(codes, np.int64),
            out,
        )


@njit(parallel=True, cache=True, nogil=True)
def _mix_rows(
    knn, head, weight, inv_t, floor, log_norm, knn_floor, head_floor, proba, confidence, codes, entropy
):  # pragma: no cover - compiled
    n, n_cat = knn.shape
    floor_powered = floor**inv_t
    for task in prange((n + _GRAIN - 1) // _GRAIN):
        v = np.empty(n_cat, np.float64)
        for r in range(task * _GRAIN, min(n, (task + 1) * _GRAIN)):
            mapped = False
            for c in range(n_cat):
                if knn[r, c] > 0:
                    mapped = True
                    break
            if not mapped:
                for c in range(n_cat):
                    proba[r, c] = 0.0
                confidence[r], codes[r], entropy[r] = 0.0, -1, 1.0
                continue
            if weight <= 0:  # label_head.pool: the k-NN vote itself
                for c in range(n_cat):
                    v[c] = np.float64(knn[r, c])
            else:  # label_head.pool: log-linear, renormalised
                top = -np.inf
                for c in range(n_cat):
                    v[c] = (1 - weight) * np.log(np.float64(knn[r, c]) + knn_floor) + weight * np.log(
                        max(np.float64(head[r, c]), head_floor)
                    )
                    top = max(top, v[c])
                total = 0.0
                for c in range(n_cat):
                    v[c] = 0.0 if knn[r, c] <= 0 and head[r, c] <= 0 else np.exp(v[c] - top)
                    total += v[c]
                for c in range(n_cat):
                    v[c] = v[c] / total if total > 0 else 0.0
            if inv_t != 1:  # calibration.apply_temperature
                for c in range(n_cat):
                    if v[c] > 0:
                        v[c] = floor_powered if v[c] <= floor else np.exp(inv_t * np.log(v[c]))
            total = 0.0
            for c in range(n_cat):
                total += v[c]
            best, best_c, h = -1.0, 0, 0.0
            for c in range(n_cat):
                p = v[c] / total if total > 0 else 0.0
                proba[r, c] = p
                if p > best:
                    best, best_c = p, c
                if p > 0:
                    h -= p * np.log(p)
            confidence[r], codes[r] = best, best_c
            entropy[r] = min(max(h / log_norm, 0.0), 1.0)


def mix_rows(knn, head, weight, inv_t, floor, log_norm, proba, confidence, codes, entropy) -> None:
    """``transfer._mix_rows`` (same arguments: the pooled, calibrated probabilities and their
    summary) in one pass per row; ``head`` may be ``knn`` itself when ``weight`` is 0."""
    knn = np.ascontiguousarray(knn, np.float32)
    head = np.ascontiguousarray(head, np.float32)
    with launch_lock():
        _mix_rows(
            knn, head, float(weight), float(inv_t), float(floor), float(log_norm), KNN_FLOOR, HEAD_FLOOR,
            proba, confidence, codes, entropy,
        )  # fmt: skip


@njit(parallel=True, cache=True, nogil=True)
def _graph_votes(mine, rev_ptr, rev_idx, meta, order, exclude, out):  # pragma: no cover - compiled
    n, k = mine.shape
    n_ref = rev_ptr.size - 1
    n_cat = out.shape[1]
    # at most _GRAPH_TASKS tasks: each zeroes a count per reference cell once
    n_tasks = min((n + _GRAIN - 1) // _GRAIN, _GRAPH_TASKS)
    grain = (n + n_tasks - 1) // n_tasks
    for task in prange(n_tasks):
        shared = np.zeros(n_ref, np.uint8)  # counts (<= k <= 255), back to 0 after each row
        sums = np.empty(n_cat, np.float64)
        for position in range(task * grain, min(n, (task + 1) * grain)):
            q = order[position]
            skip = exclude[q]
            mine_size = 0
            for a in range(k):  # count: each candidate once per neighbour of mine it holds
                r = mine[q, a]
                if r >= 0:
                    mine_size += 1
                    for j in range(rev_ptr[r], rev_ptr[r + 1]):
                        shared[rev_idx[j]] += 1
            sums[:] = 0.0
            total = 0.0
            for a in range(k):  # vote: walk the same lists, each candidate once (then reset)
                r = mine[q, a]
                if r < 0:
                    continue
                for j in range(rev_ptr[r], rev_ptr[r + 1]):
                    t = rev_idx[j]
                    s = np.float64(shared[t])
                    if s == 0:
                        continue
                    shared[t] = 0
                    if t == skip:
                        continue
                    both = meta[t]  # class * 256 + neighbour count: one load
                    jac = s / max(mine_size + (both & 255) - s, 1.0)
                    sums[both >> 8] += jac * jac
                    total += jac * jac
            if total > 0:
                for c in range(n_cat):
                    out[q, c] = sums[c] / total


def graph_votes(mine, rev_ptr, rev_idx, codes, their_sizes, out, order=None, exclude=None) -> None:
    """:func:`.graph_vote.graph_vote`'s class probabilities (``out``, float32, zeros on entry), each
    query row's lists walked twice (count, then vote and reset): ``mine`` the query's neighbours
    (``-1``: none); ``rev_ptr`` / ``rev_idx`` the reference graph's reverse lists (CSR: for each
    reference cell, the labelled cells whose neighbourhood holds it); per reference cell its class
    (``codes``) and neighbour count (``their_sizes``); rows taken in ``order`` (all of them once; rows
    with neighbours close together in turn keep the counts in cache); ``exclude``: per row, a
    reference cell that does not vote (-1: none)."""
    order = np.arange(len(mine)) if order is None else order
    exclude = np.full(len(mine), -1, np.int32) if exclude is None else exclude
    if len(their_sizes) >= 2**31 or (len(codes) and int(np.max(codes)) >= 2**23):
        raise ValueError("graph_votes takes fewer than 2^31 reference cells and 2^23 classes.")
    # each voter's class and neighbour count in one int32 (one load per candidate; codes >= 0 here)
    meta = (np.maximum(np.asarray(codes, np.int32), 0) * 256 + np.minimum(their_sizes, 255)).astype(np.int32)
    with launch_lock():
        _graph_votes(
            np.ascontiguousarray(mine, np.int32),  # reference rows: int32 (fewer cache lines)
            np.ascontiguousarray(rev_ptr, np.int64),
            np.ascontiguousarray(rev_idx, np.int32),
            meta,
            np.ascontiguousarray(order, np.int64),
            np.ascontiguousarray(exclude, np.int32),
            out,
        )


def summary_arrays(n_rows: int, n_classes: int) -> tuple[np.ndarray, ...]:
    """Empty outputs of :func:`mix_rows`: probabilities, confidence, codes, entropy."""
    return (
        np.empty((n_rows, n_classes), np.float32),
        np.empty(n_rows, np.float32),
        np.empty(n_rows, np.int64),
        np.empty(n_rows, np.float32),
    )


def load_kernels() -> None:
    """Load (or compile, the first time on a machine) the kernels on a 2 x 2 case."""
    out = np.zeros((2, 2), np.float32)
    for itype in (np.int32, np.int64):
        indptr, indices = np.array([0, 1, 2], itype), np.array([0, 1], itype)
        class_probabilities(indptr, indices, np.ones(2, np.float32), np.array([0, 1]), out)
    mix_rows(out, out, 0.5, 0.5, 1e-6, np.log(2.0), *summary_arrays(2, 2))
    pair = np.array([[0, 1], [1, 0]])
    graph_votes(pair, np.array([0, 1, 2]), np.array([0, 1]), np.array([0, 1]), np.array([2, 2]), out)


def warm_up() -> threading.Thread | None:
    """:func:`load_kernels` in a background thread, when :mod:`.jit` lets the kernels run."""
    return in_background(load_kernels, "cellmapper-label-kernels-warm-up") if jit.kernels_ready() else None
