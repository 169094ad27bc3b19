"""CellMapper: neighbour search -> kernel -> transfer, with results written AnnData-style.

>>> cmap = CellMapper(query, reference).fit(
...     use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X"
... )

The three steps also run one by one: search once with :meth:`CellMapper.compute_neighbors`, then
change the kernel (:meth:`CellMapper.compute_mapping_matrix`) or transfer more keys
(:meth:`CellMapper.transfer`) without searching again. Every step validates its inputs before
heavy work and writes to the query only once all its results are computed, so a failed or
cancelled run leaves the query as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core import calibration, label_head, label_kernels, sparse_product
from napari_cellmapper.core import graph_vote as graph_voting
from napari_cellmapper.core import validation as val
from napari_cellmapper.core.joint_embedding import (
    DEFAULT_N_COMPS,
    DEFAULT_N_TOP_GENES,
    SCALINGS,
    JointEmbedding,
    build_joint_embedding,
    check_n_top_genes,
)
from napari_cellmapper.core.kernels import global_sigma, mapping_matrix, unmapped_rows
from napari_cellmapper.core.normalization import check_normalize
from napari_cellmapper.core.palettes import UNMAPPED_COLOR, colors_for
from napari_cellmapper.core.progress import Progress, Steps, run_steps
from napari_cellmapper.core.search.neighbors import (
    GPU_BACKENDS,
    Neighbors,
    build_index,
    check_backend_options,
    iter_search,
    locality_order,
    prepare_rep,
    resolve_backend,
)
from napari_cellmapper.core.transfer import (
    LabelTransfer,
    category_codes,
    iter_transfer_dense,
    iter_transfer_expression,
    iter_transfer_labels,
    mix_probabilities,
    transfer_numeric,
)

JOINT_KEY = "X_cellmapper_joint"
UNMAPPED_KEY = "cellmapper_unmapped"
#: cupy is published per CUDA major version; whichever is installed is recorded
CUPY_DISTRIBUTIONS = ("cupy-cuda12x", "cupy-cuda13x", "cupy")


def _versions() -> dict[str, str]:
    out = {}
    names = ("napari-cellmapper", "numpy", "scipy", "anndata", "faiss-cpu", *CUPY_DISTRIBUTIONS)
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def h5_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values and make values writable to h5ad/zarr."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = h5_safe(value)
        elif isinstance(value, (list, tuple)):
            out[key] = np.asarray([str(v) for v in value]) if value else np.asarray([], dtype=str)
        else:
            out[key] = value
    return out


#: work on (reference graph, mapping matrix) run where the graph was searched (see ``iter_fit``)
ReferenceGraphTask = Callable[[Neighbors, sparse.csr_matrix], Any]

#: classes assumed when deciding, before the labels are read, whether to load the label kernels
_MANY_CLASSES = 40
#: Neighbours per cell in the reference's own k-NN graph (presence scores, mapping quality).
#: HNOCA-tools gives that graph its own k, independent of the mapping's; 15 is scanpy's default,
#: the graph a reference usually ships with. The hnoca kernel uses the mapping's k instead.
REFERENCE_GRAPH_K = 15


def _to_all_rows(
    found: Neighbors, searched: np.ndarray, reference_rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of the searched query rows (a mask) -> one row per query cell, reference
    indices mapped back through ``reference_rows`` (None: all reference rows were searched).
    Rows not searched get index -1 and distance inf. No copy when everything was searched."""
    idx = found.indices
    if reference_rows is not None:
        idx = np.where(idx >= 0, reference_rows[np.maximum(idx, 0)], -1)
    if searched.all():
        return idx, found.distances
    indices = np.full((searched.size, idx.shape[1]), -1, dtype=np.int64)
    distances = np.full((searched.size, idx.shape[1]), np.inf, dtype=np.float32)
    indices[searched], distances[searched] = idx, found.distances
    return indices, distances


def _iter_until_done(future: Future[Any], stage: str) -> Steps[Any]:
    """``future``'s result, yielding ``stage``'s progress every 0.1 s until it is done."""
    while not future.done():
        yield Progress(stage, 0, 1)
        wait([future], timeout=0.1)
    return future.result()


def _check_joint_options(scaling: str, normalize: object, n_top_genes: object) -> None:
    val.check_choice("scaling", scaling, SCALINGS)
    check_normalize(normalize)
    check_n_top_genes(n_top_genes)


_OFF_HINTS = {"self_training": " (or None: no self-training)", "graph_vote": " (or None: no graph vote)"}


def _check_label_options(
    head: str,
    head_weight: float,
    min_confidence: float,
    self_training: float | None = None,
    graph_vote_share: float | None = None,
) -> None:
    val.check_choice("head", head, label_head.HEADS)
    numbers = [("head_weight", head_weight), ("min_confidence", min_confidence)]
    if self_training is not None:
        numbers.append(("self_training", self_training))
    if graph_vote_share is not None:
        numbers.append(("graph_vote", graph_vote_share))
    for name, value in numbers:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= 1:
            hint = _OFF_HINTS.get(name, "")
            raise val.CellMapperInputError(f"{name} must be a number between 0 and 1{hint}; got {value!r}.")


class _LabelOptions(NamedTuple):
    """How the k-NN class probabilities are refined (see :meth:`CellMapper.iter_transfer`)."""

    head: str
    weight: float
    self_training: float | None
    calibrate: bool
    graph_vote: float | None = None


class CellMapper:
    """k-NN mapping of labels, embeddings and expression from a reference onto a query.

    Parameters
    ----------
    query
        Cells to annotate (e.g. a spatial sample's table).
    reference
        Annotated cells (e.g. a dissociated single-cell atlas).
    """

    def __init__(self, query: AnnData, reference: AnnData) -> None:
        for role, adata in (("query", query), ("reference", reference)):
            if not isinstance(adata, AnnData):
                raise val.CellMapperInputError(
                    f"The {role} must be an AnnData object, got {type(adata).__name__}. "
                    "Read it with anndata.read_h5ad, or take a table from a SpatialData object."
                )
        self.query = query
        self.reference = reference
        self.neighbors: Neighbors | None = None
        self.reference_neighbors: Neighbors | None = None
        self.mapping_matrix: sparse.csr_matrix | None = None
        self.joint: JointEmbedding | None = None
        self.labels: dict[str, LabelTransfer] = {}
        self._query_rep: np.ndarray | None = None
        self._reference_rep: np.ndarray | None = None
        self._reference_usable: np.ndarray | None = None
        self._query_imputed: AnnData | None = None
        self._index: Any = None
        self._device_mapping: tuple[sparse.csr_matrix, Any] | None = None
        #: (reference rows, their neighbours among the other reference cells), for calibration
        self._loo: tuple[np.ndarray, Neighbors] | None = None
        self._search_options: dict[str, Any] = {}
        self._expression: tuple[str, Any] | None = None  # (layer_key, matrix) read into memory
        self.params: dict[str, Any] = {}
        #: what ``iter_fit(reference_graph_task=...)`` returned, or None
        self.reference_graph_result: Any = None
        #: the reference graph being searched in the background while the transfer runs (iter_fit)
        self._pending_graph: Future[Neighbors] | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.mapping_matrix is not None else "not fitted"
        return (
            f"CellMapper(query={self.query.n_obs:,} cells, reference={self.reference.n_obs:,} cells, {state})"
        )

    # ------------------------------------------------------------------ validation
    def _check_common(self) -> None:
        for role, adata in (("query", self.query), ("reference", self.reference)):
            val.check_not_empty(adata, role)
            val.check_unique_obs_names(adata, role)

    def _check_transfer_keys(self, obs_keys: list[str], obsm_keys: list[str], layer_key: str | None) -> None:
        val.check_obs_keys(self.reference, obs_keys)
        val.check_obsm_keys(self.reference, obsm_keys)
        if layer_key is not None:
            val.check_layer(self.reference, layer_key)

    # ------------------------------------------------------------------ step 1: neighbours
    def iter_compute_neighbors(
        self,
        use_rep: str | None = None,
        n_neighbors: int = 30,
        *,
        backend: str = "auto",
        metric: str = "euclidean",
        joint: str = "pca",
        n_comps: int = DEFAULT_N_COMPS,
        joint_layer: str | None = None,
        scaling: str = "dataset",
        normalize: str | bool = "auto",
        n_top_genes: int | None = DEFAULT_N_TOP_GENES,
        chunk_size: int | None = None,
        **search_options: Any,
    ) -> Steps[Neighbors]:
        """Generator version of :meth:`compute_neighbors`."""
        self._check_common()
        _check_joint_options(scaling, normalize, n_top_genes)
        val.check_choice("backend", backend, val.BACKENDS)
        val.check_choice("metric", metric, val.METRICS)
        val.check_choice("joint method", joint, val.JOINT_METHODS)
        val.check_k(n_neighbors, self.reference.n_obs)
        n_neighbors = int(n_neighbors)  # numpy integers pass the check; faiss takes only int
        if use_rep is None:
            yield Progress("joint representation", 0, 1)
            emb = build_joint_embedding(
                self.query,
                self.reference,
                method=joint,
                n_comps=n_comps,
                layer=joint_layer,
                scaling=scaling,
                normalize=normalize,
                n_top_genes=n_top_genes,
            )
            q_rep, r_rep, q_ok, r_ok = emb.query, emb.reference, emb.query_usable, emb.reference_usable
            yield Progress("joint representation", 1, 1)
        else:
            emb = None
            q_rep, r_rep = val.get_rep_pair(self.query, self.reference, use_rep)
            q_ok = np.ones(q_rep.shape[0], bool)
            r_ok = np.ones(r_rep.shape[0], bool)
        val.check_k(n_neighbors, int(r_ok.sum()))
        if metric == "cosine":
            q_ok = q_ok & (np.linalg.norm(q_rep, axis=1) > 0)
        ref_rows = np.flatnonzero(r_ok)
        resolved = resolve_backend(backend, int(q_ok.sum()), ref_rows.size)
        check_backend_options(resolved, search_options)
        all_query, all_reference = bool(q_ok.all()), ref_rows.size == r_rep.shape[0]
        searched_ref = r_rep if all_reference else r_rep[ref_rows]
        index = None
        if resolved != "dask":
            yield Progress("build index", 0, 1)
            index = build_index(prepare_rep(searched_ref, metric), resolved, **search_options)
            yield Progress("build index", 1, 1)
        found = yield from iter_search(
            q_rep if all_query else q_rep[q_ok],
            searched_ref,
            n_neighbors,
            metric=metric,
            backend=resolved,
            chunk_size=chunk_size,
            index=index,
            **({} if index is not None else search_options),
        )
        self._index = index
        indices, distances = _to_all_rows(found, q_ok, None if all_reference else ref_rows)
        neighbors = Neighbors(indices, distances, metric, found.backend, r_rep.shape[0])
        self.joint = emb
        self._search_options = {} if index is not None else dict(search_options)
        self._query_rep, self._reference_rep, self._reference_usable = q_rep, r_rep, r_ok
        self.neighbors = neighbors
        self.reference_neighbors = None
        self._pending_graph = None
        self.mapping_matrix = None
        self._loo = None
        self.params.update(
            use_rep=use_rep if use_rep is not None else f"built from shared genes ({joint})",
            n_neighbors=int(n_neighbors),
            backend=found.backend,
            backend_requested=backend,
            metric=metric,
        )
        for attr in ("nlist", "nprobe", "calibrated_recall"):
            value = getattr(index, attr, None)
            if value is not None:
                self.params[attr] = value
        if emb is not None:
            self.params["joint"] = {
                "method": joint,
                "n_genes": emb.info["n_genes"],
                "n_comps": emb.info["n_comps"],
                "scaling": scaling,
                "gene_selection": emb.info["gene_selection"],
                "normalize": emb.info["normalize"],
                "solver": emb.info["solver"],
            }
        return neighbors

    def compute_neighbors(
        self, use_rep: str | None = None, n_neighbors: int = 30, *, progress: Any = True, **kwargs: Any
    ) -> Neighbors:
        """Find the ``n_neighbors`` nearest reference cells of every query cell.

        Parameters
        ----------
        use_rep
            obsm key of the joint representation present in both objects (``"X"`` for ``X``);
            ``None`` builds one from the shared genes (see ``joint``).
        n_neighbors
            k, the number of reference neighbours per query cell.
        progress
            ``True`` for progress bars on stderr, a callback, or ``False``.
        **kwargs
            ``backend`` (``"auto"``, ``"faiss-exact"``, ``"faiss-ivf"``, ``"cupy"``, ``"cupy-ivf"``,
            ``"dask"``),
            ``metric`` (``"euclidean"``, ``"cosine"``), ``joint`` (``"pca"``, ``"cca"``),
            ``n_comps``, ``joint_layer``, ``scaling`` (``"dataset"``, ``"gene"``), ``normalize``
            (``"auto"``, ``True``, ``False``), ``n_top_genes`` (2000; ``None``: all shared genes),
            ``chunk_size`` and backend options.
        """
        return run_steps(self.iter_compute_neighbors(use_rep, n_neighbors, **kwargs), progress)

    def _reference_k(self, n_neighbors: int | None) -> int:
        if self.neighbors is None or self._reference_rep is None:
            raise val.CellMapperInputError("Call compute_neighbors() (or fit()) first.")
        return int(min(n_neighbors or self.neighbors.k, int(self._reference_usable.sum())))

    def _iter_reference_search(self, k: int) -> Steps[Neighbors]:
        """Search the reference against itself with the index of the query search (no state change)."""
        usable = self._reference_usable
        everyone = bool(usable.all())
        rows = None if everyone else np.flatnonzero(usable)
        rep = self._reference_rep if everyone else self._reference_rep[rows]
        relaxed = getattr(self._index, "relaxed", None)
        found = yield from iter_search(
            rep,
            rep,
            k,
            metric=self.neighbors.metric,
            backend=self.params.get("backend", "auto"),
            index=relaxed() if relaxed is not None else self._index,
            stage="reference neighbour graph",
            **self._search_options,
        )
        n_ref = self._reference_rep.shape[0]
        indices, distances = _to_all_rows(found, usable, rows)
        return Neighbors(indices, distances, found.metric, found.backend, n_ref)

    def iter_compute_reference_neighbors(self, n_neighbors: int | None = None) -> Steps[Neighbors]:
        """The reference's own k-NN graph (for the hnoca kernel, presence scores and quality)."""
        k = self._reference_k(n_neighbors)
        if self.reference_neighbors is not None and self.reference_neighbors.k == k:
            return self.reference_neighbors
        self.reference_neighbors = yield from self._iter_reference_search(k)
        return self.reference_neighbors

    def _start_reference_search(
        self, n_neighbors: int, task: ReferenceGraphTask | None = None
    ) -> Future[tuple[Neighbors, Any]]:
        """Search the reference graph in a background thread (the search releases the GIL), so it
        overlaps the transfer steps; then run ``task(graph, mapping_matrix)`` there too. The graph
        alone is ``self._pending_graph`` as soon as it is found (the graph vote waits for it)."""
        k = self._reference_k(n_neighbors)
        matrix = self.mapping_matrix
        graph_found: Future[Neighbors] = Future()

        def run() -> tuple[Neighbors, Any]:
            try:
                graph = run_steps(self._iter_reference_search(k))
            except BaseException as exc:
                graph_found.set_exception(exc)
                raise
            graph_found.set_result(graph)
            return graph, (None if task is None else task(graph, matrix))

        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellmapper-reference-graph")
        future = executor.submit(run)
        executor.shutdown(wait=False)
        self._pending_graph = graph_found
        return future

    def _iter_vote_graph(self) -> Steps[Neighbors]:
        """The reference graph for the graph vote: the one being searched in the background, the one
        already computed (presence, hnoca kernel), or a search now."""
        if self._pending_graph is not None:
            return (yield from _iter_until_done(self._pending_graph, "reference neighbour graph"))
        if self.reference_neighbors is not None:
            return self.reference_neighbors
        return (yield from self.iter_compute_reference_neighbors(graph_voting.GRAPH_VOTE_K))

    # ------------------------------------------------------------------ step 2: kernel
    def iter_compute_mapping_matrix(
        self, kernel: str = "gauss", *, sigma: float | None = None
    ) -> Steps[sparse.csr_matrix]:
        """Generator version of :meth:`compute_mapping_matrix`."""
        if self.neighbors is None:
            raise val.CellMapperInputError("Call compute_neighbors() (or fit()) before the kernel.")
        val.check_choice("kernel", kernel, val.KERNELS)
        ref_graph = None
        if kernel == "hnoca":
            ref_graph = yield from self.iter_compute_reference_neighbors()
        yield Progress("mapping matrix", 0, 1)
        if kernel == "gauss" and sigma is None:
            sigma = global_sigma(self.neighbors)
        matrix = mapping_matrix(self.neighbors, kernel, reference_neighbors=ref_graph, sigma=sigma)
        yield Progress("mapping matrix", 1, 1)
        self.mapping_matrix = matrix
        self.params["kernel"] = kernel
        if kernel == "gauss":
            self.params["sigma"] = float(sigma)
        return matrix

    def compute_mapping_matrix(
        self, kernel: str = "gauss", *, sigma: float | None = None, progress: Any = False
    ) -> sparse.csr_matrix:
        """Turn neighbour distances into the row-normalised mapping matrix with ``kernel``.

        Kernels: ``gauss``, ``gauss_adaptive``, ``scarches``, ``inverse_distance``, ``equal``,
        ``hnoca`` (see :mod:`napari_cellmapper.core.kernels`). ``sigma`` fixes the ``gauss``
        bandwidth (default: the mean k-NN distance, recorded in ``uns['cellmapper']['sigma']``).
        """
        return run_steps(self.iter_compute_mapping_matrix(kernel, sigma=sigma), progress)

    @property
    def unmapped(self) -> np.ndarray:
        """Query cells without any usable reference neighbour."""
        if self.mapping_matrix is None:
            raise val.CellMapperInputError("No mapping matrix yet; call fit() first.")
        return unmapped_rows(self.mapping_matrix)

    # ------------------------------------------------------------------ step 3: transfer
    def _locality_order(self) -> np.ndarray | None:
        """Query rows grouped by the search index's coarse cells (see :func:`locality_order`)."""
        if self.neighbors is None or self._reference_usable is None:
            return None
        usable = self._reference_usable
        return locality_order(self.neighbors, self._index, None if usable.all() else np.flatnonzero(usable))

    def _on_device(self) -> Any:
        """M on the GPU (:class:`~.transfer_gpu.DeviceMapping`) when the search ran there, else None.

        Uploaded once per mapping matrix; the transfers then run as device products.
        """
        if self.neighbors is None or self.neighbors.backend not in GPU_BACKENDS:
            return None
        held = self._device_mapping
        if held is None or held[0] is not self.mapping_matrix:
            from napari_cellmapper.core.transfer_gpu import DeviceMapping

            device = getattr(self._index, "device", 0)
            held = self._device_mapping = (self.mapping_matrix, DeviceMapping(self.mapping_matrix, device))
        return held[1]

    def iter_transfer(
        self,
        obs_keys: str | list[str] | None = None,
        obsm_keys: str | list[str] | None = None,
        layer_key: str | None = None,
        *,
        prediction_postfix: str = "_pred",
        chunk_size: int | None = None,
        head: str = "lda",
        head_weight: float = label_head.DEFAULT_WEIGHT,
        self_training: float | None = label_head.SELF_TRAINING,
        graph_vote: float | None = graph_voting.GRAPH_VOTE,
        calibrate: bool = True,
        min_confidence: float = 0.0,
    ) -> Steps[CellMapper]:
        """Generator version of :meth:`transfer`."""
        if self.mapping_matrix is None:
            raise val.CellMapperInputError("Call compute_mapping_matrix() (or fit()) before transfer().")
        _check_label_options(head, head_weight, min_confidence, self_training, graph_vote)
        options = _LabelOptions(
            head,
            float(head_weight),
            float(self_training) if self_training else None,
            bool(calibrate),
            float(graph_vote) if graph_vote else None,
        )
        obs_list, obsm_list = val.as_key_list(obs_keys), val.as_key_list(obsm_keys)
        self._check_transfer_keys(obs_list, obsm_list, layer_key)
        chunk = {"chunk_size": chunk_size} if chunk_size else {}
        m = self.mapping_matrix
        gpu = self._on_device()
        obs_new: dict[str, Any] = {}
        obsm_new: dict[str, Any] = {}
        uns_new: dict[str, Any] = {}
        labels: dict[str, LabelTransfer] = {}
        label_info: dict[str, dict[str, Any]] = {}
        votes: dict[str, tuple[LabelTransfer, np.ndarray]] = {}  # k-NN votes, refined below
        for key in obs_list:
            column = self.reference.obs[key]
            if val.is_categorical_like(column):
                if not isinstance(column.dtype, pd.CategoricalDtype):
                    warnings.warn(
                        f"reference.obs[{key!r}] is not categorical; it is treated as categories "
                        "(the reference itself is not changed).",
                        stacklevel=4,
                    )
                codes, cats = category_codes(column)
                self._warn_types_without_usable_cells(key, codes, cats)
                labels_of = gpu.iter_labels if gpu is not None else partial(iter_transfer_labels, m)
                votes[key] = ((yield from labels_of(codes, cats, stage=f"transfer {key}", **chunk)), codes)
            else:
                obs_new[f"{key}{prediction_postfix}"] = transfer_numeric(m, column.to_numpy())
        for key in obsm_list:
            rep = val.get_rep(self.reference, key, "reference")
            dense_of = gpu.iter_dense if gpu is not None else partial(iter_transfer_dense, m)
            stage = f"transfer {key}"
            obsm_new[f"{key}{prediction_postfix}"] = yield from dense_of(rep, stage=stage, **chunk)
        imputed = None
        if layer_key is not None:
            expression = self._reference_layer(layer_key)
            if gpu is not None:
                values = yield from gpu.iter_expression(expression, **chunk)
            else:
                values = yield from iter_transfer_expression(
                    m, expression, row_order=self._locality_order(), **chunk
                )
            imputed = AnnData(X=values, obs=self.query.obs[[]].copy(), var=self.reference.var.copy())
        # the labels last: the graph vote may wait for the reference graph searched in the background
        for key, (res, codes) in votes.items():
            res, label_info[key] = yield from self._iter_refine_labels(res, codes, options)
            labels[key] = res
            cats = res.categories
            pred = res.predictions(min_confidence=min_confidence)
            obs_new[f"{key}{prediction_postfix}"] = pred
            obs_new[f"{key}_conf"] = res.confidence
            obs_new[f"{key}_entropy"] = res.entropy
            obsm_new[f"{key}_proba"] = pd.DataFrame(
                res.probabilities,
                index=self.query.obs_names,
                columns=[val.storable_name(c) for c in cats],
            )
            ref_colors = self.reference.uns.get(f"{key}_colors")
            colors = colors_for(list(cats), None if ref_colors is None else list(ref_colors))
            colors.extend([UNMAPPED_COLOR] * (len(pred.categories) - len(cats)))
            uns_new[f"{key}{prediction_postfix}_colors"] = np.asarray(colors, dtype=object)
        # commit: nothing above touched the query
        unmapped = unmapped_rows(m)
        for name, value in obs_new.items():
            self.query.obs[name] = value
        self.query.obs[UNMAPPED_KEY] = unmapped
        for name, value in obsm_new.items():
            self.query.obsm[name] = value
        self.query.uns.update(uns_new)
        if self.joint is not None:
            self.query.obsm[JOINT_KEY] = self.joint.query
        self.labels.update(labels)
        if imputed is not None:
            self._query_imputed = imputed
        self.params.update(
            obs_keys=obs_list,
            obsm_keys=obsm_list,
            layer_key=layer_key,
            n_query=int(self.query.n_obs),
            n_reference=int(self.reference.n_obs),
            n_unmapped=int(unmapped.sum()),
            labels={
                "head": head,
                "head_weight": float(head_weight),
                "self_training": None if head == "none" else options.self_training,
                "graph_vote": options.graph_vote,
                "calibrate": bool(calibrate),
                "min_confidence": float(min_confidence),
                **label_info,
            },
        )
        self.query.uns["cellmapper"] = self.provenance()
        return self

    def _iter_refine_labels(
        self, res: LabelTransfer, codes: np.ndarray, options: _LabelOptions
    ) -> Steps[tuple[LabelTransfer, dict[str, Any]]]:
        """k-NN class probabilities mixed with the reference graph's vote, combined with the
        classifier head, then calibrated.

        Tall-skinny products only: one BLAS thread (several threads spin for nothing there, and
        on a busy machine cost seconds)."""
        plain = options.head == "none" and not options.calibrate and not options.graph_vote
        if plain or self._query_rep is None or self._reference_rep is None:
            return res, {}
        graph = None
        if options.graph_vote:
            graph = yield from self._iter_vote_graph()
            yield Progress("graph vote", 0, 1)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            refined = self._refine_labels_now(res, codes, options, graph)
        if options.graph_vote:
            yield Progress("graph vote", 1, 1)
        return refined

    def _has_categories(self, obs_keys: str | list[str] | None) -> bool:
        """Whether any of ``obs_keys`` is transferred as categories (labels)."""
        return any(val.is_categorical_like(self.reference.obs[key]) for key in val.as_key_list(obs_keys))

    def _warn_types_without_usable_cells(self, key: str, codes: np.ndarray, categories: pd.Index) -> None:
        """Warn about types all of whose reference cells were left out of the search (no counts
        over the shared genes): their query cells can only get other labels."""
        usable = self._reference_usable
        if usable is None or usable.all():
            return
        labelled = codes >= 0
        present = np.bincount(codes[labelled], minlength=len(categories)) > 0
        placed = np.bincount(codes[labelled & usable], minlength=len(categories)) > 0
        lost = [str(c) for c, p, q in zip(categories, present, placed, strict=True) if p and not q]
        if lost:
            warnings.warn(
                f"{len(lost)} type(s) of {key!r} cannot be transferred: none of their reference cells has "
                f"counts over the shared genes ({', '.join(map(repr, lost[:5]))}), so their query cells get "
                "other labels. Build the joint space from more genes (n_top_genes=0 / --n-top-genes 0, or "
                "another joint_layer) or pass a joint embedding (use_rep).",
                UserWarning,
                stacklevel=2,
            )

    def _refine_labels_now(
        self, res: LabelTransfer, codes: np.ndarray, options: _LabelOptions, graph: Neighbors | None
    ) -> tuple[LabelTransfer, dict[str, Any]]:
        head, weight, self_training, calibrate, share = options
        codes = np.where(self._reference_usable, codes, -1) if self._reference_usable is not None else codes
        n_cat = len(res.categories)
        info: dict[str, Any] = {}
        knn = res.probabilities
        voters, voting = None, None
        if graph is not None and share:
            voters = graph_voting.Voters.build(graph, codes, n_cat)
            info["graph_vote_k"] = min(voters.k, self.neighbors.k)
            # the query's votes (a parallel kernel) beside the head's fit and the calibration sample
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellmapper-graph-vote")
            voting = executor.submit(voters.votes, self.neighbors, row_order=self._locality_order())
            executor.shutdown(wait=False)
        try:
            model = label_head.fit_lda(self._reference_rep, codes, n_cat) if head == "lda" else None
            loo, (truth, rows) = (
                self._reference_leave_one_out(codes, res.categories, voters, share)
                if calibrate
                else (None, (None, None))
            )
        except BaseException:
            if voting is not None:
                wait([voting])  # nothing runs on after a failure
            raise
        if voting is not None:
            knn = graph_voting.blend(knn, voting.result(), share)
        if model is not None and self_training and weight > 0:
            model, info["self_training_cells"] = self._self_train(
                model, knn, codes, weight, float(self_training)
            )
        temperature = 1.0
        if calibrate:
            if loo is not None:
                if model is not None:
                    loo = label_head.combine(loo, model.probabilities(self._reference_rep[rows]), weight)
                temperature = calibration.fit_temperature(loo, truth)
            info["temperature"] = temperature
        head_proba = None if model is None else model.probabilities(self._query_rep)
        return mix_probabilities(knn, head_proba, weight, temperature, res.categories), info

    def _self_train(
        self,
        model: label_head.LinearHead,
        knn: np.ndarray,
        codes: np.ndarray,
        weight: float,
        threshold: float,
    ) -> tuple[label_head.LinearHead, int]:
        """The head fitted again with the query cells the pool labels with confidence ``>= threshold``
        (see :func:`.label_head.self_trained`); and how many query cells it used."""
        categories = pd.RangeIndex(knn.shape[1])
        pooled = mix_probabilities(knn, model.probabilities(self._query_rep), weight, 1.0, categories)
        refitted, chosen = label_head.self_trained(
            self._reference_rep,
            codes,
            self._query_rep,
            pooled.codes,
            pooled.confidence,
            knn.shape[1],
            threshold,
        )
        return (model, 0) if refitted is None else (refitted, chosen)

    def _reference_leave_one_out(
        self,
        codes: np.ndarray,
        categories: pd.Index,
        voters: graph_voting.Voters | None = None,
        share: float | None = None,
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray]]:
        """k-NN class probabilities of a sample of labelled reference cells, each mapped against
        the other reference cells with this mapping's kernel (hnoca: gauss) and mixed with the
        graph vote as the query's are (a cell never votes for itself); and their codes/rows."""
        rows = np.flatnonzero(codes >= 0)
        empty = (np.zeros(0, np.int64), rows[:0])
        if rows.size < 10 or self.neighbors is None:
            return None, empty
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(rows, min(calibration.SAMPLE, rows.size), replace=False))
        if self._loo is None or not np.array_equal(self._loo[0], rows):
            self._loo = (rows, self._search_reference_sample(rows))
        loo = self._loo[1]
        kernel = self.params.get("kernel", "gauss")
        kernel, sigma = ("gauss", None) if kernel == "hnoca" else (kernel, self.params.get("sigma"))
        matrix = mapping_matrix(loo, kernel, sigma=sigma)
        proba = run_steps(iter_transfer_labels(matrix, codes, categories)).probabilities
        if voters is not None and share:
            proba = graph_voting.blend(proba, voters.votes(loo, exclude=rows), share)
        return proba, (codes[rows], rows)

    def _search_reference_sample(self, rows: np.ndarray) -> Neighbors:
        """The k nearest other reference cells of the reference ``rows`` (self excluded)."""
        usable = self._reference_usable
        everyone = bool(usable.all())
        searched = self._reference_rep if everyone else self._reference_rep[usable]
        k = min(self.neighbors.k + 1, searched.shape[0])
        found = run_steps(
            iter_search(
                self._reference_rep[rows],
                searched,
                k,
                metric=self.neighbors.metric,
                backend=self.params.get("backend", "auto"),
                index=self._index,
                **self._search_options,
            )
        )
        idx = (
            found.indices
            if everyone
            else np.where(found.indices >= 0, np.flatnonzero(usable)[np.maximum(found.indices, 0)], -1)
        )
        own = idx == rows[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 1)
        keep = np.ones_like(own)
        keep[np.arange(rows.size), drop] = False
        idx = idx[keep].reshape(rows.size, k - 1)
        dist = found.distances[keep].reshape(rows.size, k - 1)
        return Neighbors(idx, dist, found.metric, found.backend, self._reference_rep.shape[0])

    def transfer(
        self,
        obs_keys: str | list[str] | None = None,
        obsm_keys: str | list[str] | None = None,
        layer_key: str | None = None,
        *,
        progress: Any = True,
        **kwargs: Any,
    ) -> CellMapper:
        """Transfer reference obs columns, obsm embeddings and/or expression to the query.

        Categorical (or string) obs columns give ``{key}_pred`` (categorical, the reference's
        categories, plus ``"unmapped"`` when some cells have no neighbour), ``{key}_conf``,
        ``{key}_entropy`` and ``obsm[f"{key}_proba"]``; numeric columns give a weighted mean in
        ``{key}_pred``; obsm keys give ``obsm[f"{key}_pred"]``; ``layer_key`` (``"X"`` or a layer)
        gives :attr:`query_imputed`.
        """
        return run_steps(self.iter_transfer(obs_keys, obsm_keys, layer_key, **kwargs), progress)

    @property
    def query_imputed(self) -> AnnData | None:
        """Imputed expression: query obs x reference var (sparse in, sparse out)."""
        return self._query_imputed

    def provenance(self) -> dict[str, Any]:
        """Parameters, versions and backend of this mapping (as stored in ``uns['cellmapper']``)."""
        return h5_safe(
            {
                **self.params,
                "versions": _versions(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )

    # ------------------------------------------------------------------ all at once
    def _reference_layer(self, layer_key: str | None) -> Any:
        """The reference expression matrix named by ``layer_key`` ("X" or a layer), or None."""
        if layer_key is None:
            return None
        x = self.reference.X if layer_key == "X" else self.reference.layers[layer_key]
        if sparse.issparse(x) or isinstance(x, np.ndarray):
            return x
        # a backed reference's X is an on-disk dataset: read it once (before the search), keep it
        if self._expression is None or self._expression[0] != layer_key:
            self._expression = (layer_key, x.to_memory() if hasattr(x, "to_memory") else np.asarray(x[()]))
        return self._expression[1]

    def iter_fit(
        self,
        use_rep: str | None = None,
        obs_keys: str | list[str] | None = None,
        obsm_keys: str | list[str] | None = None,
        layer_key: str | None = None,
        *,
        n_neighbors: int = 30,
        kernel: str = "gauss",
        backend: str = "auto",
        metric: str = "euclidean",
        joint: str = "pca",
        n_comps: int = DEFAULT_N_COMPS,
        joint_layer: str | None = None,
        scaling: str = "dataset",
        normalize: str | bool = "auto",
        n_top_genes: int | None = DEFAULT_N_TOP_GENES,
        head: str = "lda",
        head_weight: float = label_head.DEFAULT_WEIGHT,
        self_training: float | None = label_head.SELF_TRAINING,
        graph_vote: float | None = graph_voting.GRAPH_VOTE,
        calibrate: bool = True,
        min_confidence: float = 0.0,
        chunk_size: int | None = None,
        prediction_postfix: str = "_pred",
        reference_graph: bool = False,
        reference_k: int = REFERENCE_GRAPH_K,
        reference_graph_task: ReferenceGraphTask | None = None,
        **search_options: Any,
    ) -> Steps[CellMapper]:
        """Generator version of :meth:`fit` (for napari's generator workers).

        ``reference_graph=True`` also computes the reference's own ``reference_k``-NN graph (for
        presence scores and mapping quality), in a background thread that overlaps the transfer
        steps. With the hnoca kernel, the graph the kernel needed (k = ``n_neighbors``) is kept.
        ``reference_graph_task(graph, mapping_matrix)`` (pure computation: it must not touch the
        AnnData objects) runs in that thread right after the graph, so it overlaps the transfer
        too; its return value is :attr:`reference_graph_result` (None when it did not run, e.g.
        with the hnoca kernel or the dask backend: compute it afterwards then).
        """
        self._check_common()
        val.check_choice("kernel", kernel, val.KERNELS)
        val.check_choice("backend", backend, val.BACKENDS)
        val.check_choice("metric", metric, val.METRICS)
        _check_joint_options(scaling, normalize, n_top_genes)
        _check_label_options(head, head_weight, min_confidence, self_training, graph_vote)
        self._check_transfer_keys(val.as_key_list(obs_keys), val.as_key_list(obsm_keys), layer_key)
        val.check_k(n_neighbors, self.reference.n_obs)
        n_neighbors = int(n_neighbors)  # numpy integers pass the check; faiss takes only int
        if reference_graph:
            val.check_positive_int("reference_k", reference_k)  # capped at the reference's size
            reference_k = int(reference_k)
        if use_rep is not None:
            q_rep, r_rep = val.get_rep_pair(self.query, self.reference, use_rep)
        else:
            val.check_unique_var_names(self.query, "query")
            val.check_unique_var_names(self.reference, "reference")
        if backend in GPU_BACKENDS:
            from napari_cellmapper.core.search.neighbors import resolve_backend

            resolve_backend(backend, self.query.n_obs, self.reference.n_obs)
        expression = self._reference_layer(layer_key)
        if expression is not None:
            val.check_expression_finite(expression, layer_key)
        if expression is not None and sparse_product.uses_kernels(self.query.n_obs * n_neighbors, expression):
            sparse_product.warm_up()  # loads the product's kernels while the search runs
        if obs_keys and self.query.n_obs * _MANY_CLASSES >= label_kernels.SMALL:
            label_kernels.warm_up()  # and the labels' (used from label_kernels.SMALL probabilities)
        yield from self.iter_compute_neighbors(
            use_rep,
            n_neighbors,
            backend=backend,
            metric=metric,
            joint=joint,
            n_comps=n_comps,
            joint_layer=joint_layer,
            scaling=scaling,
            normalize=normalize,
            n_top_genes=n_top_genes,
            chunk_size=chunk_size,
            **search_options,
        )
        yield from self.iter_compute_mapping_matrix(kernel)
        background = None
        # the graph vote needs the reference graph too: searched beside the transfer either way
        wants_graph = reference_graph or bool(graph_vote and self._has_categories(obs_keys))
        if wants_graph and kernel != "hnoca" and self._index is not None:
            k = reference_k if reference_graph else graph_voting.GRAPH_VOTE_K
            background = self._start_reference_search(k, reference_graph_task if reference_graph else None)
        yield from self.iter_transfer(
            obs_keys,
            obsm_keys,
            layer_key,
            prediction_postfix=prediction_postfix,
            chunk_size=chunk_size,
            head=head,
            head_weight=head_weight,
            self_training=self_training,
            graph_vote=graph_vote,
            calibrate=calibrate,
            min_confidence=min_confidence,
        )
        self.reference_graph_result = None
        self._pending_graph = None
        if background is not None:
            found = yield from _iter_until_done(background, "reference neighbour graph")
            self.reference_neighbors, self.reference_graph_result = found
            yield Progress("reference neighbour graph", 1, 1)
        elif reference_graph and (self.reference_neighbors is None or kernel != "hnoca"):
            # the hnoca kernel's own graph is kept; any other is searched again unless it has
            # reference_k neighbours already (the graph vote's has GRAPH_VOTE_K)
            yield from self.iter_compute_reference_neighbors(reference_k)
        return self

    def fit(
        self,
        use_rep: str | None = None,
        obs_keys: str | list[str] | None = None,
        obsm_keys: str | list[str] | None = None,
        layer_key: str | None = None,
        *,
        progress: Any = True,
        **kwargs: Any,
    ) -> CellMapper:
        """Search neighbours, build the mapping matrix and transfer, in one call.

        Parameters
        ----------
        use_rep
            obsm key of the joint representation in both objects; ``None`` builds one from the
            shared genes (normalise, log1p, per-dataset scaling, PCA or CCA).
        obs_keys, obsm_keys, layer_key
            What to transfer (see :meth:`transfer`).
        progress
            ``True`` for progress bars on stderr, a callback taking ``Progress``, or ``False``.
        **kwargs
            ``n_neighbors`` (30), ``kernel`` ("gauss"), ``backend`` ("auto"), ``metric``
            ("euclidean"), ``joint`` ("pca"), ``n_comps`` (50), ``joint_layer``, ``scaling``
            ("dataset" or "gene"), ``normalize`` ("auto", True, False), ``n_top_genes`` (2000;
            None: all shared genes), ``head`` ("lda" or "none": a classifier head in the joint
            space whose probabilities are pooled with the k-NN ones), ``head_weight`` (0.25),
            ``self_training`` (0.9: the head is fitted again with the query cells labelled at least
            this confidently; None or 0: not),
            ``graph_vote`` (0.75: share of the reference graph's vote in the k-NN class
            probabilities, see :mod:`.graph_vote`; None or 0: the k-NN vote alone),
            ``calibrate`` (True: confidence calibrated by a temperature fitted on the reference),
            ``min_confidence`` (0: cells below it are labelled "unassigned"), ``chunk_size``,
            ``prediction_postfix`` ("_pred") and backend options (e.g. ``nprobe``, ``client``).

        Returns
        -------
        The fitted CellMapper (``self``).
        """
        return run_steps(self.iter_fit(use_rep, obs_keys, obsm_keys, layer_key, **kwargs), progress)

    map = fit
