"""The whole annotation run as one frozen parameter set: mapping, presence, quality, niches.

The CLI and the napari worker both call :func:`iter_annotate`, so they run the same code.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData

from napari_cellmapper.core import validation as val
from napari_cellmapper.core.graph_vote import GRAPH_VOTE
from napari_cellmapper.core.joint_embedding import DEFAULT_N_COMPS, DEFAULT_N_TOP_GENES
from napari_cellmapper.core.label_head import DEFAULT_WEIGHT, SELF_TRAINING
from napari_cellmapper.core.mapper import REFERENCE_GRAPH_K, CellMapper, h5_safe
from napari_cellmapper.core.progress import Progress, Steps, run_steps

QUALITY_KEY = "mapping_quality"
PRESENCE_KEY = "presence_score"


@dataclass(frozen=True)
class MappingParams:
    """Everything that defines one mapping run (hashable, safe to hand to a worker)."""

    use_rep: str | None = None
    obs_keys: tuple[str, ...] = ()
    obsm_keys: tuple[str, ...] = ()
    layer_key: str | None = None
    n_neighbors: int = 30
    kernel: str = "gauss"
    backend: str = "auto"
    metric: str = "euclidean"
    joint: str = "pca"
    n_comps: int = DEFAULT_N_COMPS
    joint_layer: str | None = None
    scaling: str = "dataset"
    normalize: str | bool = "auto"
    n_top_genes: int | None = DEFAULT_N_TOP_GENES
    head: str = "lda"
    head_weight: float = DEFAULT_WEIGHT
    self_training: float | None = SELF_TRAINING
    graph_vote: float | None = GRAPH_VOTE
    calibrate: bool = True
    min_confidence: float = 0.0
    presence: bool = False
    quality: bool = True
    reference_k: int = REFERENCE_GRAPH_K
    n_niches: int = 0
    niche_key: str | None = None
    niche_neighbors: int = 15
    niche_radius: float | None = None
    niche_hops: int = 1
    seed: int = 0
    search_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`CellMapper.iter_fit`."""
        return {
            "use_rep": self.use_rep,
            "obs_keys": list(self.obs_keys),
            "obsm_keys": list(self.obsm_keys),
            "layer_key": self.layer_key,
            "n_neighbors": self.n_neighbors,
            "kernel": self.kernel,
            "backend": self.backend,
            "metric": self.metric,
            "joint": self.joint,
            "n_comps": self.n_comps,
            "joint_layer": self.joint_layer,
            "scaling": self.scaling,
            "normalize": self.normalize,
            "n_top_genes": self.n_top_genes,
            "head": self.head,
            "head_weight": self.head_weight,
            "self_training": self.self_training,
            "graph_vote": self.graph_vote,
            "calibrate": self.calibrate,
            "min_confidence": self.min_confidence,
            "reference_k": self.reference_k,
            **self.search_options,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for provenance)."""
        out = asdict(self)
        out.pop("search_options")
        out["normalize"] = str(self.normalize)
        return out


def _niche_key(params: MappingParams) -> str:
    key = params.niche_key or (params.obs_keys[0] if params.obs_keys else None)
    if key is None:
        raise val.CellMapperInputError(
            "Niches are built from transferred cell-type probabilities: pass an obs key to transfer "
            "(e.g. obs_keys=('cell_type',)) or niche_key=."
        )
    return key


def check_params(query: AnnData, params: MappingParams, coords: np.ndarray | None) -> None:
    """Checks that need no heavy work: the quality's reference graph needs k >= 2, niches need
    coordinates and a label key."""
    if params.quality:
        val.check_positive_int("reference_k", params.reference_k)
        if params.reference_k < 2:
            raise val.CellMapperInputError(
                f"reference_k={params.reference_k} leaves each reference cell no neighbour but itself, "
                "so the mapping quality cannot be calibrated: use reference_k >= 2 (--reference-k 2) "
                "or quality=False."
            )
    if params.n_niches:
        key = _niche_key(params)
        if key not in params.obs_keys:
            raise val.CellMapperInputError(f"niche_key {key!r} must be one of the transferred obs keys.")
        if coords is None:
            raise val.CellMapperInputError(
                "Niches need one spatial coordinate per query cell; pass coords= (e.g. from a "
                "SpatialData query) or set n_niches=0."
            )
        coords = np.asarray(coords)
        if coords.shape != (query.n_obs, 2):
            raise val.CellMapperInputError(
                f"coords must have shape ({query.n_obs}, 2), one (x, y) per query cell; got {coords.shape}."
            )
        if params.n_niches > query.n_obs:
            raise val.CellMapperInputError(
                f"n_niches={params.n_niches} exceeds the number of query cells ({query.n_obs})."
            )


def iter_annotate(
    query: AnnData,
    reference: AnnData,
    params: MappingParams,
    *,
    coords: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
) -> Steps[CellMapper]:
    """Map, then optionally score presence and quality and find niches; returns the CellMapper.

    Writes to ``query`` (predictions, ``mapping_quality``, ``niche``) and, with ``presence``,
    to ``reference.obs["presence_score"]``. Pass copies if the originals must stay untouched.
    """
    check_params(query, params, coords)
    cmap = CellMapper(query, reference)
    needs_graph = params.presence or params.quality
    presence_task = None
    if params.presence:
        from napari_cellmapper.core.presence import presence_scores

        reference_names = reference.obs_names.copy()

        def presence_task(graph: Any, matrix: Any) -> Any:
            # runs beside the transfer, in the reference-graph thread; writes nothing
            return presence_scores(matrix, graph, groups=query_groups, reference_index=reference_names)

    yield from cmap.iter_fit(
        **params.fit_kwargs(), reference_graph=needs_graph, reference_graph_task=presence_task
    )
    if needs_graph:
        ref_graph = cmap.reference_neighbors
        if params.quality and ref_graph.k < 2:
            warnings.warn(
                f"The reference has {ref_graph.k} usable cell: the mapping quality needs at least 2 "
                f"to calibrate, so {QUALITY_KEY!r} is not written.",
                stacklevel=2,
            )
        elif params.quality:
            from napari_cellmapper.core.presence import mapping_quality

            yield Progress("mapping quality", 0, 1)
            query.obs[QUALITY_KEY] = np.asarray(mapping_quality(cmap.neighbors, ref_graph), dtype=np.float32)
            yield Progress("mapping quality", 1, 1)
        if params.presence:
            from napari_cellmapper.core.presence import iter_add_presence_scores, write_presence_scores

            if cmap.reference_graph_result is not None:  # computed beside the transfer
                write_presence_scores(reference, cmap.reference_graph_result, key=PRESENCE_KEY)
            else:
                yield from iter_add_presence_scores(
                    reference, cmap.mapping_matrix, ref_graph, key=PRESENCE_KEY, groups=query_groups
                )
    if params.n_niches:
        from napari_cellmapper.core.niches import add_niches

        key = _niche_key(params)
        yield Progress("niches", 0, 1)
        add_niches(
            query,
            np.asarray(coords, dtype=np.float64),
            proba_key=f"{key}_proba",
            n_niches=params.n_niches,
            n_neighbors=params.niche_neighbors,
            radius=params.niche_radius,
            n_hops=params.niche_hops,
            seed=params.seed,
        )
        yield Progress("niches", 1, 1)
    query.uns["cellmapper"] = {**query.uns.get("cellmapper", {}), "pipeline": h5_safe(params.to_dict())}
    return cmap


def annotate(
    query: AnnData,
    reference: AnnData,
    params: MappingParams,
    *,
    coords: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    progress: Any = True,
) -> CellMapper:
    """Run :func:`iter_annotate` to completion (progress bars on stderr by default)."""
    return run_steps(
        iter_annotate(query, reference, params, coords=coords, query_groups=query_groups), progress
    )
