"""The frozen job a mapping run receives, the frozen result it returns, and the worker body.

The worker never touches the user's objects: it maps *detached copies* (new AnnData containers
that share the read-only matrices) and returns only the additions (new obs columns, obsm
entries, uns entries, reference obs columns, neighbours, niches). The controller applies them on
the main thread. No Qt and no napari here, so this module is testable on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core import validation
from napari_cellmapper.core.pipeline import PRESENCE_KEY, QUALITY_KEY, MappingParams, iter_annotate
from napari_cellmapper.core.progress import Progress
from napari_cellmapper.viewer.cell_values import dense_column

_JOB_IDS = itertools.count(1)

#: Backend choices offered in the widget: label -> core backend name.
BACKENDS: dict[str, str] = {
    "Automatic": "auto",
    "CPU exact (faiss flat)": "faiss-exact",
    "CPU approximate (faiss IVF)": "faiss-ivf",
    "GPU (cupy)": "cupy",
}
KERNELS = validation.KERNELS
BUILD_FROM_GENES = "build from shared genes"


def next_job_id() -> int:
    """A process-wide increasing job id."""
    return next(_JOB_IDS)


@dataclass(frozen=True, eq=False)
class MappingJob:
    """Everything a mapping run needs, fixed when Run is clicked.

    ``query`` is the full SpatialData table; ``rows`` are the table rows to map (the element's
    cells, restricted to a drawn region if any) and ``coords_yx`` their positions (for niches);
    ``params`` are the core's parameters, the same the command line builds (``n_niches=0``: none).
    """

    reference: AnnData
    query: AnnData
    rows: np.ndarray
    coords_yx: np.ndarray | None = None
    params: MappingParams = field(default_factory=MappingParams)
    groups: np.ndarray | None = None  # the sample (region) of each row: presence per sample
    job_id: int = field(default_factory=next_job_id)


@dataclass(frozen=True, eq=False)
class MappingResult:
    """Additions a run produced, aligned to the full query table (rows not mapped are missing)."""

    job_id: int
    rows: np.ndarray
    obs: pd.DataFrame  # new query obs columns, index = full table obs_names
    obsm: Mapping[str, Any]  # new query obsm entries, full length (NaN rows where unmapped)
    uns: Mapping[str, Any]  # new query uns entries (colours, parameters)
    reference_obs: pd.DataFrame  # new reference obs columns (e.g. presence_score)
    neighbor_indices: np.ndarray  # (len(rows), k) reference row numbers, -1 for none
    obs_keys: tuple[str, ...] = ()
    obsm_keys: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    imputed: AnnData | None = None  # imputed expression of the mapped rows (reference genes)
    mapping: sparse.csr_matrix | None = None  # (len(rows), n_reference) row-normalised weights M

    def imputed_gene(self, gene: str, n_obs: int, reference: AnnData | None = None) -> np.ndarray:
        """Imputed expression of one gene for every table row (NaN where not mapped): from the
        imputed matrix when the run made one, else ``M · x`` for that gene's column ``x`` of
        ``reference.X`` alone (never the whole imputed matrix)."""
        if self.imputed is not None and gene in self.imputed.var_names:
            values = dense_column(self.imputed[:, gene].X)
        elif self.mapping is not None and reference is not None and gene in reference.var_names:
            if not reference.obs_names.equals(self.reference_obs.index):
                raise KeyError("The reference changed since the run: run the mapping again to impute.")
            values = self.mapping @ dense_column(reference[:, gene].X)
        else:
            raise KeyError(f"{gene!r} is not a reference gene")
        out = np.full(n_obs, np.nan)
        out[self.rows] = values
        return out

    @property
    def color_keys(self) -> list[str]:
        """obs columns worth colouring the cells by, most useful first."""
        keys: list[str] = []
        for key in self.obs_keys:
            keys += [c for c in (f"{key}_pred", f"{key}_conf", f"{key}_entropy") if c in self.obs]
        keys += [c for c in self.obs.columns if c not in keys and c != "cellmapper_unmapped"]
        return keys

    @classmethod
    def from_table(cls, table: AnnData) -> MappingResult | None:
        """The result an earlier run (widget or command line) left in ``table``, read back from
        its columns and ``uns["cellmapper"]["pipeline"]``, so that a re-opened export shows its
        colours, legends, cell information and QC without a new run. None when there is none.
        Neighbours and the mapping matrix are not stored: the cells' reference neighbours and
        on-demand imputation need a new run."""
        pipeline = (table.uns.get("cellmapper") or {}).get("pipeline")
        if not isinstance(pipeline, Mapping):
            return None
        obs_keys = tuple(str(k) for k in np.atleast_1d(pipeline.get("obs_keys", [])))
        obsm_keys = tuple(str(k) for k in np.atleast_1d(pipeline.get("obsm_keys", [])))
        names = _output_names(obs_keys, obsm_keys)
        obs_columns = [c for c in names["obs"] if c in table.obs.columns]
        if not obs_columns and not any(k in table.obsm for k in names["obsm"]):
            return None
        mapped = np.ones(table.n_obs, dtype=bool)
        if "cellmapper_unmapped" in table.obs:
            mapped &= ~table.obs["cellmapper_unmapped"].fillna(True).to_numpy(dtype=bool)
        for key in obs_keys:
            if f"{key}_pred" in table.obs:
                mapped &= table.obs[f"{key}_pred"].notna().to_numpy()
        return cls(
            job_id=0,
            rows=np.flatnonzero(mapped),
            obs=table.obs[obs_columns].copy(),
            obsm={k: table.obsm[k] for k in names["obsm"] if k in table.obsm},
            uns={k: table.uns[k] for k in (*names["uns"], "cellmapper") if k in table.uns},
            reference_obs=pd.DataFrame(),
            neighbor_indices=np.empty((int(mapped.sum()), 0), dtype=np.int64),
            obs_keys=obs_keys,
            obsm_keys=obsm_keys,
        )

    def apply_to(self, table: AnnData) -> None:
        """Write the additions into ``table`` (main thread only; the table must be the job's query)."""
        for column in self.obs.columns:
            table.obs[column] = (
                self.obs[column].to_numpy()
                if not isinstance(self.obs[column].dtype, pd.CategoricalDtype)
                else self.obs[column].values
            )
        for key, value in self.obsm.items():
            table.obsm[key] = value
        for key, value in self.uns.items():
            table.uns[key] = value

    def annotated(self, table: AnnData) -> AnnData:
        """A copy of ``table`` with the additions (for export without touching the original)."""
        out = table.copy()
        self.apply_to(out)
        return out


def detached(adata: AnnData, rows: np.ndarray | None = None, *, keep_graphs: bool = False) -> AnnData:
    """New AnnData containers over ``adata`` (optionally a row subset) safe for the worker to mutate.

    obs/var/uns and the obsm mapping are copied; large matrices are shared (rows: sliced copies),
    so writing new columns or keys never reaches the original object.
    """
    take = slice(None) if rows is None else np.asarray(rows)

    def rows_of(value: Any) -> Any:
        if rows is None:
            return value
        return value.iloc[take] if isinstance(value, pd.DataFrame) else value[take]

    obs = adata.obs.copy() if rows is None else adata.obs.iloc[take].copy()
    out = AnnData(
        X=rows_of(adata.X) if adata.X is not None else None,
        obs=obs,
        var=adata.var.copy(),
        obsm={k: rows_of(v) for k, v in adata.obsm.items()},
        layers={k: rows_of(v) for k, v in adata.layers.items() if k is not None},
        uns=copy.deepcopy(dict(adata.uns)),
    )
    if keep_graphs and rows is None:
        for key, value in adata.obsp.items():
            out.obsp[key] = value
    return out


def _full_length(values: Any, rows: np.ndarray, n: int, index: pd.Index) -> Any:
    """Scatter per-mapped-row values back to a full-length array/frame (NaN elsewhere)."""
    if isinstance(values, pd.DataFrame):
        frame = pd.DataFrame(np.nan, index=index, columns=values.columns, dtype=float)
        frame.iloc[rows] = values.to_numpy(dtype=float)
        return frame
    values = np.asarray(values)
    out = np.full((n, *values.shape[1:]), np.nan, dtype=np.result_type(values.dtype, np.float32))
    out[rows] = values
    return out


def _full_obs(sub_obs: pd.DataFrame, columns: list[str], rows: np.ndarray, index: pd.Index) -> pd.DataFrame:
    out = pd.DataFrame(index=index)
    for column in columns:
        series = sub_obs[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            codes = np.full(len(index), -1, dtype=np.int64)
            codes[rows] = series.cat.codes.to_numpy()
            out[column] = pd.Categorical.from_codes(codes, categories=series.cat.categories)
        elif series.dtype.kind == "b":
            full = np.zeros(len(index), dtype=bool) if len(rows) == len(index) else np.ones(len(index), bool)
            full[rows] = series.to_numpy()
            out[column] = full
        else:
            full = np.full(len(index), np.nan)
            full[rows] = series.to_numpy(dtype=float)
            out[column] = full
    return out


NICHE_OUTPUTS = {"obs": ("niche",), "obsm": ("niche_features",), "uns": ("niche_colors", "niche_composition")}


def _output_names(obs_keys: tuple[str, ...], obsm_keys: tuple[str, ...]) -> dict[str, list[str]]:
    """The obs, obsm and uns keys a run transferring these keys writes into the query."""
    obs = [f"{key}_{part}" for key in obs_keys for part in ("pred", "conf", "entropy")]
    obs += [QUALITY_KEY, *NICHE_OUTPUTS["obs"], "cellmapper_unmapped"]
    obsm = [f"{key}_proba" for key in obs_keys]
    obsm += [f"{key}_pred" for key in obsm_keys] + list(NICHE_OUTPUTS["obsm"])
    uns = [f"{key}_pred_colors" for key in obs_keys] + list(NICHE_OUTPUTS["uns"])
    return {"obs": obs, "obsm": obsm, "uns": uns}


def strip_previous_outputs(query: AnnData, job: MappingJob) -> None:
    """Remove what an earlier run wrote (same keys), so this run's additions are recognised as new."""
    names = _output_names(job.params.obs_keys, job.params.obsm_keys)
    query.obs = query.obs.drop(columns=[c for c in names["obs"] if c in query.obs.columns])
    for key in names["obsm"]:
        query.obsm.pop(key, None)
    for key in names["uns"]:
        query.uns.pop(key, None)


def run_mapping(job: MappingJob) -> Generator[Progress, None, MappingResult]:
    """Worker body: map the job's rows, yield progress between chunks, return the additions."""
    rows = np.asarray(job.rows, dtype=np.int64)
    full_rows = len(rows) == job.query.n_obs and np.array_equal(rows, np.arange(job.query.n_obs))
    query = detached(job.query, None if full_rows else rows)
    reference = detached(job.reference, keep_graphs=True)
    strip_previous_outputs(query, job)
    obs_before = set(query.obs.columns)
    obsm_before = set(query.obsm.keys())
    uns_before = set(query.uns.keys())
    coords = None if job.coords_yx is None else np.asarray(job.coords_yx, dtype=np.float64)[:, ::-1]
    params = job.params
    warnings: list[str] = []
    if params.n_niches and not (params.obs_keys and coords is not None):
        warnings.append("Niches need transferred cell-type probabilities (an obs key to transfer).")
        params = dataclasses.replace(params, n_niches=0)
    groups = None if job.groups is None else np.asarray(job.groups)
    cmap = yield from iter_annotate(query, reference, params, coords=coords, query_groups=groups)
    reference_obs = pd.DataFrame(index=job.reference.obs_names)
    if params.presence:
        reference_obs[PRESENCE_KEY] = reference.obs[PRESENCE_KEY].to_numpy()
    new_obs = [c for c in query.obs.columns if c not in obs_before]
    index = job.query.obs_names
    obs = _full_obs(query.obs, new_obs, rows, index)
    if not full_rows and "cellmapper_unmapped" in obs:
        outside = np.ones(len(index), bool)
        outside[rows] = False
        obs.loc[outside, "cellmapper_unmapped"] = True
    n = job.query.n_obs
    obsm: dict[str, Any] = {}
    for key in query.obsm.keys():
        if key in obsm_before:
            continue
        value = query.obsm[key]
        if isinstance(value, pd.DataFrame) and full_rows:
            obsm[key] = value.set_axis(index)
        else:
            obsm[key] = value if full_rows else _full_length(value, rows, n, index)
    uns = {k: query.uns[k] for k in query.uns.keys() if k not in uns_before or k == "cellmapper"}
    neighbors = getattr(cmap, "neighbors", None)
    indices = np.asarray(neighbors.indices) if neighbors is not None else np.empty((len(rows), 0), np.int64)
    return MappingResult(
        job_id=job.job_id,
        rows=rows,
        obs=obs,
        obsm=obsm,
        uns=uns,
        reference_obs=reference_obs,
        neighbor_indices=indices,
        obs_keys=params.obs_keys,
        obsm_keys=params.obsm_keys,
        warnings=tuple(warnings),
        imputed=getattr(cmap, "query_imputed", None) if params.layer_key is not None else None,
        mapping=getattr(cmap, "mapping_matrix", None),
    )
