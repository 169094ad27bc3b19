"""Query chunks searched in parallel on a dask cluster against a reference index shipped once.

The driver prepares the reference (float32, L2-normalised rows for cosine) and, for
``index_backend="faiss-ivf"``, trains the IVF index and calibrates ``nprobe`` once. It then
scatters one payload to every worker (``broadcast=True``): the prepared reference for exact search,
the trained IVF index (pickled) otherwise. Each worker builds the faiss index (or takes the IVF
index) once per reference token and keeps it in a small per-process cache, so query chunks only
carry query rows. One task per query chunk; :class:`~napari_cellmapper.core.progress.Progress` is
yielded as tasks complete and the result is assembled in query order.

Determinism: every chunk runs the same search call as the single-process path would on the same
rows (same chunk bounds for the same ``chunk_size``; the same trained IVF index and ``nprobe``).
faiss' BLAS kernels (exact search, the IVF's choice of lists) round differently for different
query-batch shapes and, for batches of a few thousand rows or more, different BLAS thread counts;
results are bit-identical to
``search(..., backend="faiss-exact"/"faiss-ivf")`` when both use the same ``chunk_size`` and
BLAS does not multithread the batch (chunks up to ~2,000 rows, or equal faiss thread counts), and
otherwise agree to float32 rounding (same neighbours except exact near-ties).
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np

from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds
from napari_cellmapper.core.search.neighbors import (
    DEFAULT_CHUNK_SIZE,
    Neighbors,
    prepare_rep,
    to_true_distances,
)
from napari_cellmapper.core.validation import (
    METRICS,
    CellMapperInputError,
    check_choice,
    check_finite,
    check_k,
)

#: indexes the workers can build from a scattered payload
INDEX_BACKENDS = ("faiss-exact", "faiss-ivf")
_IVF_OPTIONS = ("nlist", "nprobe", "seed")
#: default chunks: about this many tasks per worker thread, rows a multiple of _CHUNK_QUANTUM
_TASKS_PER_THREAD = 4
_CHUNK_QUANTUM = 1024
#: number of distinct references whose index a worker process keeps
_WORKER_CACHE_SIZE = 2
_LOCAL_WORKERS = 2

# worker-side state (one copy per worker process; the driver's copy stays empty)
_WORKER_LOCK = threading.Lock()
_WORKER_INDEXES: OrderedDict[str, Any] = OrderedDict()
_WORKER_BUILDS: dict[str, int] = {}


def _require_distributed() -> Any:
    """The ``distributed`` module, or a :class:`CellMapperInputError` saying how to install it."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as err:
        raise CellMapperInputError(
            "backend='dask' needs dask and distributed, which are not installed. "
            "Install them with `pip install 'napari-cellmapper[dask]'`, or use another backend."
        ) from err
    return distributed


# --------------------------------------------------------------------------- worker side


def _build_worker_index(payload: Any, kind: str) -> Any:
    if kind == "faiss-exact":
        from napari_cellmapper.core.search.faiss_index import FlatIndex

        return FlatIndex(payload)
    return payload  # the trained, calibrated IVFIndex itself, unpickled once by dask


def _worker_index(payload: Any, token: str, kind: str) -> Any:
    """The worker's index for ``token``, built on first use (once per worker process)."""
    with _WORKER_LOCK:
        index = _WORKER_INDEXES.get(token)
        if index is None:
            index = _build_worker_index(payload, kind)
            _WORKER_INDEXES[token] = index
            _WORKER_BUILDS[token] = _WORKER_BUILDS.get(token, 0) + 1
            while len(_WORKER_INDEXES) > _WORKER_CACHE_SIZE:
                _WORKER_INDEXES.popitem(last=False)
        else:
            _WORKER_INDEXES.move_to_end(token)
    return index


def _search_chunk(
    block: np.ndarray, payload: Any, spec: tuple[str, str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Task body: squared distances and indices of one prepared query chunk."""
    token, kind = spec
    return _worker_index(payload, token, kind).search(block, k)


def worker_build_counts() -> dict[str, int]:
    """{reference token: times this process built its index}; run it with ``client.run``."""
    with _WORKER_LOCK:
        return dict(_WORKER_BUILDS)


def clear_worker_cache() -> int:
    """Drop this process' cached indexes (``client.run(clear_worker_cache)``); returns how many."""
    with _WORKER_LOCK:
        n = len(_WORKER_INDEXES)
        _WORKER_INDEXES.clear()
        return n


# --------------------------------------------------------------------------- driver side


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is None:
        return
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise CellMapperInputError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")


def _check_inputs(query: Any, reference: Any, k: int, metric: str, index_backend: str) -> None:
    check_choice("metric", metric, METRICS)
    check_choice("index_backend", index_backend, INDEX_BACKENDS)
    for name, rep in (("query", query), ("reference", reference)):
        if rep.ndim != 2:
            raise CellMapperInputError(f"the {name} embedding must be 2-D, got shape {rep.shape}.")
        if not np.issubdtype(rep.dtype, np.number):
            raise CellMapperInputError(f"the {name} embedding must be numeric, got dtype {rep.dtype}.")
    check_k(k, reference.shape[0])
    if query.shape[1] != reference.shape[1]:
        raise CellMapperInputError(
            f"query has {query.shape[1]} dimensions but the reference {reference.shape[1]}."
        )
    check_finite(query, "the query embedding")
    check_finite(reference, "the reference embedding")


def _payload(
    ref: np.ndarray,
    query: np.ndarray,
    k: int,
    metric: str,
    index_backend: str,
    chunk_size: int | None,
    options: dict[str, Any],
) -> tuple[Any, tuple[str, str]]:
    """What to scatter once, and the (token, kind) spec every task carries (the IVF index carries
    its calibrated nprobe itself)."""
    from dask.base import tokenize

    if index_backend == "faiss-exact":
        if options:
            raise CellMapperInputError(
                f"index_backend='faiss-exact' takes no options, got {sorted(options)}."
            )
        return ref, (tokenize(ref, "faiss-exact"), "faiss-exact")
    unknown = sorted(set(options) - set(_IVF_OPTIONS))
    if unknown:
        raise CellMapperInputError(
            f"Unknown option(s) {unknown} for index_backend='faiss-ivf'; use {list(_IVF_OPTIONS)}."
        )
    from napari_cellmapper.core.search.faiss_index import IVFIndex

    ivf = IVFIndex(ref, **options)
    if ivf.nprobe is None:
        # the single-process path calibrates on its first query chunk: do the same, once, here
        first = prepare_rep(query[: chunk_size or DEFAULT_CHUNK_SIZE], metric)
        ivf.calibrate(first, k)
    token = tokenize(ref, "faiss-ivf", options, ivf.nprobe)
    return ivf, (token, "faiss-ivf")


def _default_chunk_size(n_query: int, n_threads: int) -> int:
    """About ``_TASKS_PER_THREAD`` tasks per worker thread, a multiple of ``_CHUNK_QUANTUM`` rows."""
    per_task = math.ceil(n_query / max(1, n_threads * _TASKS_PER_THREAD))
    per_task = _CHUNK_QUANTUM * math.ceil(per_task / _CHUNK_QUANTUM)
    return int(min(DEFAULT_CHUNK_SIZE, max(_CHUNK_QUANTUM, per_task)))


def iter_dask_search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    stage: str = "neighbour search",
    client: Any = None,
    index_backend: str = "faiss-exact",
    **index_options: Any,
) -> Steps[Neighbors]:
    """Search query chunks in parallel on a dask cluster; yields :class:`Progress` per chunk.

    Parameters
    ----------
    query, reference
        ``(n, d)`` embeddings in the same space.
    k
        Neighbours per query cell (at most the reference size).
    metric
        ``"euclidean"`` or ``"cosine"``.
    chunk_size
        Query rows per task; default: about four tasks per worker thread (multiples of 1,024 rows,
        at most :data:`~napari_cellmapper.core.search.neighbors.DEFAULT_CHUNK_SIZE`).
    stage
        Name of the progress stage.
    client
        A ``distributed.Client``. ``None``: the current default client if there is one, else a
        two-process ``LocalCluster`` started for this call and closed afterwards.
    index_backend
        ``"faiss-exact"`` or ``"faiss-ivf"`` (trained and calibrated once on the driver).
    **index_options
        ``nlist``, ``nprobe``, ``seed`` for ``"faiss-ivf"``.

    Returns
    -------
    Neighbors
        ``backend="dask"``; rows in query order, true distances.
    """
    distributed = _require_distributed()
    query = np.asarray(query)
    reference = np.asarray(reference)
    _check_inputs(query, reference, k, metric, index_backend)
    k = int(k)  # numpy integers pass the check; faiss takes only int
    _check_chunk_size(chunk_size)
    n_query, n_reference = query.shape[0], reference.shape[0]
    yield Progress(stage, 0, n_query)
    ref = prepare_rep(reference, metric)
    payload, spec = _payload(ref, query, k, metric, index_backend, chunk_size, dict(index_options))
    del ref

    own_cluster = own_client = None
    if client is None:
        try:
            client = distributed.get_client()
        except ValueError:
            own_cluster = distributed.LocalCluster(
                n_workers=_LOCAL_WORKERS,
                threads_per_worker=max(1, (os.cpu_count() or 2) // _LOCAL_WORKERS),
                processes=True,
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": ":0"},  # no dashboard, no clash on :8787
            )
            client = own_client = distributed.Client(own_cluster)
    futures: dict[Any, tuple[int, int]] = {}
    try:
        n_threads = sum(client.nthreads().values()) or 1
        size = chunk_size or _default_chunk_size(n_query, n_threads)
        bounds = chunk_bounds(n_query, size)
        indices = np.empty((n_query, k), dtype=np.int64)
        distances = np.empty((n_query, k), dtype=np.float32)
        ref_future = client.scatter(payload, broadcast=True, hash=False)
        del payload
        blocks = [prepare_rep(query[start:stop], metric) for start, stop in bounds]
        block_futures = client.scatter(blocks, hash=False)
        del blocks
        run = uuid.uuid4().hex[:12]
        for pos, ((start, stop), block) in enumerate(zip(bounds, block_futures, strict=True)):
            future = client.submit(
                _search_chunk, block, ref_future, spec, k, key=f"cellmapper-knn-{run}-{pos}", pure=False
            )
            futures[future] = (start, stop)
        del block_futures
        done = 0
        for future in distributed.as_completed(list(futures)):
            sq, idx = future.result()
            if not sq.flags.writeable:  # received buffers can be read-only; converted in place below
                sq = sq.copy()
            start, stop = futures.pop(future)
            indices[start:stop] = idx
            distances[start:stop] = to_true_distances(sq, idx, metric)
            done += stop - start
            yield Progress(stage, done, n_query)
        return Neighbors(indices, distances, metric, "dask", n_reference)
    finally:
        if futures:  # closed or failed part-way: drop the remaining work
            client.cancel(list(futures))
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
