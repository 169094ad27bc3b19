"""Centroids of segmentation labels: one blockwise pass over the full-resolution raster, cached.

The exact centroid of every label (mean of its pixel centres, ``i + 0.5``) is accumulated block
by block in a numba loop (pixel count and coordinate sums per label id), so memory stays a few
blocks plus three arrays of the largest label id. Results of dask-backed rasters are cached by the
dask array's name (deterministic for a raster read from a store), so the reader, the command line
and the widget pay for a raster once per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from napari_cellmapper.core.validation import CellMapperInputError

CACHE_SIZE = 8
#: label ids up to this are summed into arrays indexed by id; blocks with larger ids (sparse,
#: hashed ids) are summed per distinct id instead, so memory never follows the largest id
MAX_DENSE_ID = 1 << 24
_cache: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
_cache_lock = threading.Lock()
_computing: dict[tuple, threading.Lock] = {}


@njit(cache=True, nogil=True)
def _accumulate(
    block: np.ndarray, y0: int, x0: int, count: np.ndarray, sy: np.ndarray, sx: np.ndarray
) -> None:
    """Add each positive label's pixel count and pixel-centre sums of one 2-D block."""
    h, w = block.shape
    for i in range(h):
        yc = y0 + i + 0.5
        for j in range(w):
            label = block[i, j]
            if label > 0:
                count[label] += 1.0
                sy[label] += yc
                sx[label] += x0 + j + 0.5


class _Sums:
    """Per-label pixel counts and coordinate sums, grown to the largest label seen."""

    def __init__(self) -> None:
        self.count = np.zeros(1)
        self.sy = np.zeros(1)
        self.sx = np.zeros(1)
        self.sparse: list[pd.DataFrame] = []  # per-id sums of blocks with ids above MAX_DENSE_ID

    def add(self, block: np.ndarray, y0: int, x0: int) -> None:
        if block.size == 0:
            return
        if block.dtype.kind not in "iu":
            raise CellMapperInputError(f"Segmentation labels must be integers, got dtype {block.dtype}.")
        top = int(block.max())
        if top > MAX_DENSE_ID:
            self.sparse.append(_sparse_sums(block, y0, x0))
            return
        if top >= self.count.size:
            size = max(top + 1, 2 * self.count.size)
            for name in ("count", "sy", "sx"):
                grown = np.zeros(size)
                old = getattr(self, name)
                grown[: old.size] = old
                setattr(self, name, grown)
        planes = block.reshape((-1, *block.shape[-2:]))  # 3-D labels: every z plane adds to x, y
        for plane in planes:
            _accumulate(np.ascontiguousarray(plane), y0, x0, self.count, self.sy, self.sx)

    @staticmethod
    def merge(parts: list[_Sums]) -> _Sums:
        out = _Sums()
        out.sparse = [frame for p in parts for frame in p.sparse]
        size = max(p.count.size for p in parts)
        for name in ("count", "sy", "sx"):
            total = np.zeros(size)
            for p in parts:
                values = getattr(p, name)
                total[: values.size] += values
            setattr(out, name, total)
        return out

    def frame(self) -> pd.DataFrame:
        ids = np.flatnonzero(self.count > 0)
        sums = pd.DataFrame({"n": self.count[ids], "sx": self.sx[ids], "sy": self.sy[ids]}, index=ids)
        if self.sparse:
            sums = pd.concat([sums, *self.sparse]).groupby(level=0, sort=True).sum()
        index = pd.Index(sums.index.to_numpy(np.int64), dtype=np.int64)
        n = sums["n"].to_numpy()
        return pd.DataFrame({"x": sums["sx"].to_numpy() / n, "y": sums["sy"].to_numpy() / n}, index=index)


def _sparse_sums(block: np.ndarray, y0: int, x0: int) -> pd.DataFrame:
    """Pixel counts and pixel-centre sums per distinct positive id of a (z,) y, x block."""
    ys = np.broadcast_to((np.arange(block.shape[-2]) + y0 + 0.5)[:, None], block.shape[-2:])
    xs = np.broadcast_to((np.arange(block.shape[-1]) + x0 + 0.5)[None, :], block.shape[-2:])
    planes = block.reshape((-1, *block.shape[-2:]))
    flat = planes.reshape(planes.shape[0], -1)
    keep = flat > 0
    ids, inverse = np.unique(flat[keep], return_inverse=True)
    tiled = keep.nonzero()[1]  # position within the plane of each kept pixel
    return pd.DataFrame(
        {
            "n": np.bincount(inverse, minlength=ids.size).astype(float),
            "sx": np.bincount(inverse, weights=xs.ravel()[tiled], minlength=ids.size),
            "sy": np.bincount(inverse, weights=ys.ravel()[tiled], minlength=ids.size),
        },
        index=ids.astype(np.int64),
    )


def _full_resolution(element: Any) -> Any:
    """The scale0 DataArray of a multiscale raster, or the raster itself."""
    from xarray import DataTree

    if isinstance(element, DataTree):
        scale0 = element["scale0"]
        return next(iter(scale0.values()))
    return element


def _yx_axes(dims: list[str]) -> tuple[int, int]:
    if "y" in dims and "x" in dims:
        return dims.index("y"), dims.index("x")
    return len(dims) - 2, len(dims) - 1


def _compute(data: Any, dims: list[str]) -> pd.DataFrame:
    ay, ax = _yx_axes(dims)
    order = [a for a in range(len(dims)) if a not in (ay, ax)] + [ay, ax]
    sums = _Sums()
    if not hasattr(data, "blocks"):
        sums.add(np.transpose(np.asarray(data), order), 0, 0)
        return sums.frame()
    from concurrent.futures import ThreadPoolExecutor

    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
    indices = list(np.ndindex(*data.numblocks))
    n_threads = max(1, min(os.cpu_count() or 1, len(indices)))
    per_thread = [_Sums() for _ in range(n_threads)]

    def work(t: int) -> None:
        # each thread reads (decompresses) its own blocks and adds them to its own sums
        for idx in indices[t::n_threads]:
            block = np.asarray(data.blocks[idx].compute(scheduler="synchronous"))
            per_thread[t].add(np.transpose(block, order), int(starts[ay][idx[ay]]), int(starts[ax][idx[ax]]))

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(work, range(n_threads)))
    return _Sums.merge(per_thread).frame()


def label_centroids(labels: Any) -> pd.DataFrame:
    """Exact centroids of every positive label, in intrinsic pixel coordinates (pixel centres at ``i + 0.5``).

    Uses the full-resolution scale of multiscale labels; works block by block on dask-backed
    arrays. Returns a DataFrame indexed by label id (int64) with ``x`` and ``y``. Dask-backed
    results are cached (see the module docstring; callers in several threads compute a raster
    once); the returned frame is a copy.
    """
    da = _full_resolution(labels)
    dims = [str(d) for d in da.dims]
    data = da.data
    key = (data.name, tuple(data.shape), str(data.dtype), tuple(dims)) if hasattr(data, "name") else None
    if key is None:
        return _compute(data, dims)
    with _cache_lock:
        key_lock = _computing.setdefault(key, threading.Lock())
    with key_lock:  # a second caller of the same raster waits for the first one's result
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key].copy()
        out = _compute(data, dims)
        with _cache_lock:
            _cache[key] = out
            _computing.pop(key, None)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return out.copy()


def clear_cache() -> None:
    """Forget every cached centroid table."""
    with _cache_lock:
        _cache.clear()
