"""k-nearest-neighbour search from query cells to reference cells, behind one interface.

Backends (``backend=``):

``"faiss-exact"``
    flat index, exact.
``"faiss-ivf"``
    inverted file (faiss trains the centroids, :mod:`.ivf_scan` scans the lists); ``nlist`` from
    the reference size, ``nprobe`` calibrated on a query sample so that recall@k against exact
    search reaches 0.965 on a sample (0.95 is guaranteed by tests).
``"cupy"``
    GPU brute force in tiles (matrix product plus top-k), see :mod:`.cupy_index`.
``"cupy-ivf"``
    GPU inverted file (k-means lists, nprobe calibrated to recall@k >= 0.99), see
    :mod:`.cupy_ivf`.
``"dask"``
    query chunks searched in parallel on a dask cluster, see :mod:`.dask_map`.
``"auto"``
    the GPU when cupy finds one, else the CPU; on either, exact search for small problems and
    the inverted file for large ones (``AUTO_GPU_EXACT_MAX_PAIRS``, ``AUTO_EXACT_MAX_PAIRS``).

Distances are always true distances: Euclidean, or cosine distance ``1 - cos``; never squared.
The query is searched in chunks, so memory beyond the (n_query, k) result stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds, run_steps
from napari_cellmapper.core.validation import (
    BACKENDS,
    METRICS,
    CellMapperInputError,
    check_choice,
    check_finite,
    check_k,
)

#: above this many query x reference pairs, ``backend="auto"`` uses IVF instead of exact search
AUTO_EXACT_MAX_PAIRS = 2_000_000_000
#: the same on a GPU: measured on an H200 (benchmarks/README.md, "GPU"), exact search takes 0.12 s
#: at 100k x 100k and 5.9 s at 1M x 1M, the inverted file 0.34 s and 1.8 s (recall@30 >= 0.993)
AUTO_GPU_EXACT_MAX_PAIRS = 100_000_000_000
#: query rows per search call: progress (and cancel) every second or so at a million cells; the
#: IVF scan takes a chunk's queries grouped by list, and in chunks of 65k rather than 16k it finds
#: more of a 1M reference's lists in cache (20% faster there)
DEFAULT_CHUNK_SIZE = 65_536
#: options each backend accepts (anything else is a typo and raises)
BACKEND_OPTIONS = {
    "faiss-exact": set(),
    "faiss-ivf": {"nlist", "nprobe", "seed"},
    "cupy": {"tile_size", "device", "dtype", "select"},
    "cupy-ivf": {"nlist", "nprobe", "seed", "device", "target_recall"},
    "dask": {"client", "index_backend", "nlist", "nprobe", "seed"},
}


def check_backend_options(backend: str, options: dict[str, Any]) -> None:
    """Raise on options the resolved backend does not take."""
    unknown = sorted(set(options) - BACKEND_OPTIONS.get(backend, set()))
    if unknown:
        accepted = ", ".join(sorted(BACKEND_OPTIONS.get(backend, ()))) or "none"
        raise CellMapperInputError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for backend {backend!r} "
            f"(it accepts: {accepted})."
        )


@dataclass(frozen=True)
class Neighbors:
    """The k nearest reference cells of each query cell.

    Attributes
    ----------
    indices
        ``(n_query, k)`` int64 reference row numbers, ``-1`` where there is no neighbour.
    distances
        ``(n_query, k)`` float32 true distances, sorted ascending, ``inf`` where there is none.
    metric
        ``"euclidean"`` or ``"cosine"``.
    backend
        The backend that ran the search.
    n_reference
        Number of reference cells (columns of the graph).
    """

    indices: np.ndarray
    distances: np.ndarray
    metric: str
    backend: str
    n_reference: int

    @property
    def n_query(self) -> int:
        """Number of query cells."""
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        """Neighbours per query cell."""
        return self.indices.shape[1]

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of usable edges (a neighbour exists and its distance is finite)."""
        return (self.indices >= 0) & np.isfinite(self.distances)

    def subset(self, rows: np.ndarray) -> Neighbors:
        """The neighbours of a subset of query cells."""
        return Neighbors(
            self.indices[rows], self.distances[rows], self.metric, self.backend, self.n_reference
        )

    def adjacency(self) -> sparse.csr_matrix:
        """Binary (n_query, n_reference) CSR adjacency of the usable edges."""
        valid = self.valid
        rows = np.repeat(np.arange(self.n_query, dtype=np.int64), self.k)[valid.ravel()]
        cols = self.indices[valid]
        data = np.ones(rows.size, dtype=np.float32)
        return sparse.csr_matrix((data, (rows, cols)), shape=(self.n_query, self.n_reference))


class NeighborIndex(Protocol):
    """A searchable reference: ``search`` returns squared L2 distances and indices."""

    backend: str

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@cache
def gpu_available() -> bool:
    """Whether cupy is importable and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any import or driver failure means no usable GPU
        return False


def preload() -> bool:
    """Import faiss now, on the calling thread; whether it is installed.

    Imported for the first time inside a mapping's worker thread, faiss' SWIG module kept the
    interface thread from running for 0.25-0.3 s of a napari session's first run
    (``benchmarks/widget_stall.py``: 243-360 ms, 45-50 ms once faiss was imported before); on the
    interface thread while the widget is built it costs about 40 ms.
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


#: backends that run on an NVIDIA GPU through cupy
GPU_BACKENDS = ("cupy", "cupy-ivf")


def resolve_backend(backend: str, n_query: int, n_reference: int) -> str:
    """The concrete backend that ``backend`` (possibly ``"auto"``) stands for."""
    check_choice("backend", backend, BACKENDS)
    if backend in GPU_BACKENDS and not gpu_available():
        raise CellMapperInputError(
            f"backend={backend!r} needs an NVIDIA GPU and cupy, and none is available here. "
            "Install the 'gpu' extra on a GPU machine, or use backend='auto' or 'faiss-exact'."
        )
    if backend != "auto":
        return backend
    if gpu_available():
        return "cupy-ivf" if n_query * n_reference > AUTO_GPU_EXACT_MAX_PAIRS else "cupy"
    if n_query * n_reference > AUTO_EXACT_MAX_PAIRS:
        return "faiss-ivf"
    return "faiss-exact"


#: rows are zero-padded to a multiple of this width: faiss' SIMD distance loops run without tails
#: (about 15% faster at 30 dimensions); distances are unchanged
PAD_TO = 8


def prepare_rep(rep: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, zero-padded to a multiple of 8 columns; L2-normalised for cosine."""
    rep = np.asarray(rep, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(rep, axis=1, keepdims=True)
        rep = np.divide(rep, norms, out=np.zeros_like(rep), where=norms > 0)
    width = -(-rep.shape[1] // PAD_TO) * PAD_TO
    if width != rep.shape[1]:
        padded = np.zeros((rep.shape[0], width), dtype=np.float32)
        padded[:, : rep.shape[1]] = rep
        return padded
    return np.ascontiguousarray(rep)


def build_index(reference: np.ndarray, backend: str, **options: Any) -> NeighborIndex:
    """A searchable index over prepared (float32, metric-normalised) reference rows."""
    if backend == "faiss-exact":
        from napari_cellmapper.core.search.faiss_index import FlatIndex

        return FlatIndex(reference)
    if backend == "faiss-ivf":
        from napari_cellmapper.core.search.faiss_index import IVFIndex

        return IVFIndex(reference, **options)
    if backend == "cupy":
        from napari_cellmapper.core.search.cupy_index import CupyIndex

        return CupyIndex(reference, **options)
    if backend == "cupy-ivf":
        from napari_cellmapper.core.search.cupy_ivf import CupyIVFIndex

        return CupyIVFIndex(reference, **options)
    raise CellMapperInputError(f"backend {backend!r} has no in-process index; use search() instead.")


def locality_order(
    neighbors: Neighbors, index: Any, indexed_rows: np.ndarray | None = None
) -> np.ndarray | None:
    """Query rows grouped by the coarse cell of the index that their nearest neighbour lies in,
    or None when the index has no cells (exact search).

    Work over the reference rows of each query row's neighbours (the expression product) then
    finds them in cache. ``indexed_rows``: the reference rows the index holds, in its order (None:
    all). Rows without a neighbour come last.
    """
    cells_of = getattr(index, "reference_cells", None)
    if cells_of is None:
        return None
    cells = np.full(neighbors.n_reference + 1, np.iinfo(np.int64).max, dtype=np.int64)
    cells[slice(None, -1) if indexed_rows is None else indexed_rows] = cells_of()
    return np.argsort(cells[neighbors.indices[:, 0]], kind="stable")  # index -1 reads the last


def to_true_distances(squared: np.ndarray, indices: np.ndarray, metric: str) -> np.ndarray:
    """Squared L2 (on normalised rows for cosine) -> Euclidean or cosine distance; inf where none."""
    squared = np.maximum(squared, 0, out=np.asarray(squared, dtype=np.float32))
    dist = squared * np.float32(0.5) if metric == "cosine" else np.sqrt(squared, out=squared)
    dist[(indices < 0) | (squared >= np.float32(1e37))] = np.inf
    return dist


def iter_search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    backend: str = "auto",
    chunk_size: int | None = None,
    stage: str = "neighbour search",
    index: NeighborIndex | None = None,
    **options: Any,
) -> Steps[Neighbors]:
    """Generator version of :func:`search`: yields :class:`Progress` per query chunk.

    ``index`` reuses an index built over the same (prepared) reference, e.g. to search the
    reference against itself after the query without building it again.
    """
    check_choice("metric", metric, METRICS)
    n_query, n_reference = query.shape[0], reference.shape[0]
    check_k(k, n_reference)
    k = int(k)  # numpy integers pass the check; faiss and cupy take only int
    if query.shape[1] != reference.shape[1]:
        raise CellMapperInputError(
            f"query has {query.shape[1]} dimensions but the reference {reference.shape[1]}."
        )
    check_finite(query, "the query embedding")
    check_finite(reference, "the reference embedding")
    resolved = resolve_backend(backend, n_query, n_reference)
    check_backend_options(resolved, options)
    if resolved == "dask":
        from napari_cellmapper.core.search.dask_map import iter_dask_search

        return (
            yield from iter_dask_search(
                query, reference, k, metric=metric, chunk_size=chunk_size, stage=stage, **options
            )
        )
    yield Progress(stage, 0, n_query)
    if index is None:
        index = build_index(prepare_rep(reference, metric), resolved, **options)
    elif index.backend != resolved and backend != "auto":
        raise CellMapperInputError(f"index was built with {index.backend!r}, not {resolved!r}.")
    indices = np.empty((n_query, k), dtype=np.int64)
    distances = np.empty((n_query, k), dtype=np.float32)
    for start, stop in chunk_bounds(n_query, chunk_size or getattr(index, "chunk_rows", DEFAULT_CHUNK_SIZE)):
        block = prepare_rep(query[start:stop], metric)
        sq, idx = index.search(block, k)
        indices[start:stop] = idx
        distances[start:stop] = to_true_distances(sq, idx, metric)
        yield Progress(stage, stop, n_query)
    return Neighbors(indices, distances, metric, index.backend, n_reference)


def search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    backend: str = "auto",
    chunk_size: int | None = None,
    progress: Any = None,
    **options: Any,
) -> Neighbors:
    """The ``k`` nearest reference rows of every query row.

    Parameters
    ----------
    query, reference
        ``(n, d)`` embeddings in the same space.
    k
        Neighbours per query cell (at most the reference size).
    metric
        ``"euclidean"`` or ``"cosine"``.
    backend
        ``"auto"``, ``"faiss-exact"``, ``"faiss-ivf"``, ``"cupy"``, ``"cupy-ivf"`` or ``"dask"``.
    chunk_size
        Query rows per chunk (memory and progress granularity).
    progress
        ``True`` for a progress bar on stderr, or a callback taking :class:`Progress`.
    **options
        Backend options, e.g. ``nprobe``/``nlist`` for IVF, ``client`` for dask.
    """
    steps = iter_search(query, reference, k, metric=metric, backend=backend, chunk_size=chunk_size, **options)
    return run_steps(steps, progress)
