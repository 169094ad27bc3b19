"""Indexes on the CPU: exact (faiss' flat index) and approximate (IVF with calibrated nprobe).

Indexes answer ``search(query, k) -> (squared_l2, indices)``; the caller turns squared L2 into true
Euclidean or cosine distances (see :mod:`napari_cellmapper.core.search.neighbors`).
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod

import numpy as np

from napari_cellmapper.core import jit
from napari_cellmapper.core.search.ivf_scan import nearest_lists, scan, warm_up

#: recall@k that the IVF calibration aims for on a query sample (the guarantee asked of it is 0.95)
IVF_TARGET_RECALL = 0.965
_CALIBRATION_QUERIES = 512
NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _faiss():
    import faiss

    return faiss


class FlatIndex:
    """Exact brute-force L2 search (``faiss.IndexFlatL2``)."""

    backend = "faiss-exact"

    def __init__(self, reference: np.ndarray) -> None:
        faiss = _faiss()
        self.index = faiss.IndexFlatL2(reference.shape[1])
        self.index.add(reference)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and indices of the k nearest reference rows."""
        return self.index.search(query, k)


def ivf_nlist(n_reference: int) -> int:
    """Number of IVF lists for a reference of this size (2 sqrt(n), >= 39 points per list).

    Measured on the scale benchmark: 2 sqrt(n) lists searched 35% faster than sqrt(n) at 100k
    cells and 12% faster at 1M, for the same recall; 4 sqrt(n) cost more in training than it saved.
    """
    nlist = int(round(2 * math.sqrt(n_reference)))
    return int(max(1, min(nlist, n_reference // 39)))


class ProbedIndex(ABC):
    """An inverted-file index (CPU or GPU) whose ``nprobe`` is calibrated on its first query."""

    backend: str
    nprobe: int | None

    @abstractmethod
    def calibrate(self, query: np.ndarray, k: int) -> int:
        """Set and return the smallest ``nprobe`` that reaches the target recall on ``query``."""

    @abstractmethod
    def search_with(self, query: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and indices, probing ``nprobe`` lists (the index is not changed)."""

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and indices of (approximately) the k nearest reference rows."""
        if self.nprobe is None:
            self.calibrate(query, k)
        return self.search_with(query, k, self.nprobe)

    def relaxed(self) -> ProbeView:
        """The same index searched with half the calibrated probes (thread-safe per call).

        Used for the reference's own k-NN graph, which only smooths presence scores and sets the
        baseline of mapping quality: HNOCA-tools builds that graph approximately too.
        """
        return ProbeView(self, max(1, (self.nprobe or 2) // 2))


class IVFIndex(ProbedIndex):
    """Approximate L2 search with an inverted file.

    faiss trains ``nlist`` coarse centroids (k-means); :mod:`.ivf_scan` finds each query's
    ``nprobe`` nearest ones and scans the lists behind them. ``nlist`` follows from the
    reference size; ``nprobe`` is calibrated on a sample of the query against exact search until
    recall@k reaches ``target_recall`` (unless given). The index holds the reference rows once,
    sorted by list, and plain arrays only (dask pickles it to its workers).
    """

    backend = "faiss-ivf"

    def __init__(
        self,
        reference: np.ndarray,
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        warm_up()  # loads the scan kernel while k-means trains
        faiss = _faiss()
        n, dim = reference.shape
        self.nlist = int(nlist or ivf_nlist(n))
        n_train = min(n, max(self.nlist * 40, 10_000))
        if n_train < n:
            rng = np.random.default_rng(seed)
            train = reference[np.sort(rng.choice(n, n_train, replace=False))]
        else:
            train = reference
        params = faiss.ClusteringParameters()
        params.niter, params.seed = 10, seed
        quantizer = faiss.IndexFlatL2(dim)
        faiss.Clustering(dim, self.nlist, params).train(np.ascontiguousarray(train), quantizer)
        self._centroids = quantizer.reconstruct_n(0, self.nlist)
        self._cells = quantizer.assign(reference, 1).ravel().astype(np.int64)
        self._ids = np.argsort(self._cells, kind="stable")
        self._vectors = np.ascontiguousarray(reference[self._ids])
        self._offsets = np.zeros(self.nlist + 1, dtype=np.int64)
        np.cumsum(np.bincount(self._cells, minlength=self.nlist), out=self._offsets[1:])
        self.nprobe = nprobe
        self.calibrated_recall: float | None = None
        self._faiss_index = None
        self._faiss_lock = threading.Lock()

    def calibrate(
        self, query: np.ndarray, k: int, target_recall: float = IVF_TARGET_RECALL, seed: int = 0
    ) -> int:
        """Choose the smallest nprobe whose recall@k on a query sample reaches ``target_recall``."""
        rng = np.random.default_rng(seed)
        # fewer calibration queries against very large references keep the exact pass cheap
        budget = _CALIBRATION_QUERIES if self._ids.size <= 200_000 else _CALIBRATION_QUERIES // 2
        n_sample = min(budget, query.shape[0])
        sample = query[np.sort(rng.choice(query.shape[0], n_sample, replace=False))]
        exact = self._ids[_faiss().knn(sample, self._vectors, min(k, self._ids.size))[1]]
        recall, nprobe = 0.0, 1
        for nprobe in NPROBE_LADDER:
            nprobe = min(nprobe, self.nlist)
            recall = recall_at_k(self.search_with(sample, k, nprobe)[1], exact)
            if recall >= target_recall or nprobe == self.nlist:
                break
        self.nprobe = int(nprobe)
        self.calibrated_recall = recall
        return self.nprobe

    def search_with(self, query: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` probing ``nprobe`` lists (does not change the index; thread-safe)."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if not jit.use_kernels():
            return self._faiss_search(query, k, nprobe)
        probes = nearest_lists(query, self._centroids, nprobe)
        return scan(query, probes, self._offsets, self._vectors, self._ids, k)

    def _faiss_search(self, query: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The same search on faiss' own IVF scan (same lists, same rows), while the kernels are
        not compiled; missing neighbours get id -1 and distance inf, as from :func:`.ivf_scan.scan`."""
        faiss = _faiss()
        with self._faiss_lock:
            if self._faiss_index is None:
                dim = self._vectors.shape[1]
                quantizer = faiss.IndexFlatL2(dim)
                quantizer.add(self._centroids)
                index = faiss.IndexIVFFlat(quantizer, dim, self.nlist)
                index.is_trained = True
                # the rows are already sorted by list: hand each list its block (no re-assignment)
                ids, codes = np.ascontiguousarray(self._ids, dtype=np.int64), self._vectors.view(np.uint8)
                for cell in np.flatnonzero(np.diff(self._offsets)):
                    lo, hi = int(self._offsets[cell]), int(self._offsets[cell + 1])
                    index.invlists.add_entries(
                        int(cell), hi - lo, faiss.swig_ptr(ids[lo:hi]), faiss.swig_ptr(codes[lo:hi])
                    )
                index.ntotal = len(ids)
                self._faiss_index = (index, quantizer)  # the index does not own its quantizer (lists: copied)
        index = self._faiss_index[0]
        distances, ids = index.search(query, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        distances[ids < 0] = np.inf
        return distances, ids.astype(np.int64, copy=False)

    def __getstate__(self) -> dict:
        # plain arrays only (dask pickles the index); the faiss fallback is rebuilt where needed
        return {**self.__dict__, "_faiss_index": None, "_faiss_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _faiss_lock=threading.Lock())

    def reference_cells(self) -> np.ndarray:
        """The coarse cell (inverted list) of each indexed reference row, int64."""
        return self._cells


class ProbeView:
    """An IVF index (CPU or GPU) searched with a fixed number of probes, without changing it."""

    def __init__(self, parent: ProbedIndex, nprobe: int) -> None:
        self.parent, self.nprobe = parent, nprobe
        self.backend = parent.backend

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.parent.search_with(query, k, self.nprobe)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k neighbours that the approximate search found."""
    k = exact.shape[1]
    offset = (np.arange(exact.shape[0], dtype=np.int64) * (int(max(exact.max(), approx.max())) + 2))[:, None]
    hits = np.isin(approx + offset, exact + offset)
    return float(hits.sum() / (exact.shape[0] * k))
