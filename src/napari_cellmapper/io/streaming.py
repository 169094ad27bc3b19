"""Map query sets larger than memory: query chunks in, annotated zarr out, written as it goes.

The reference index is built once; each query chunk is searched, weighted and transferred, and its
results are appended to one AnnData zarr store. Peak memory depends on the reference and the chunk
size, not on the number of query cells. The store reads back with ``anndata.read_zarr`` (or lazily
with ``anndata.experimental.read_lazy``).

Differences from :class:`~napari_cellmapper.CellMapper`: predictions always carry the
``"unmapped"`` category (the categories must be fixed before the first chunk is written), and
class probabilities are stored as an array in ``obsm[f"{key}_proba"]`` with their column names in
``uns[f"{key}_proba_columns"]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core import validation as val
from napari_cellmapper.core.kernels import global_sigma, mapping_matrix, unmapped_rows
from napari_cellmapper.core.palettes import UNMAPPED_COLOR, colors_for
from napari_cellmapper.core.progress import Progress, Steps, run_steps
from napari_cellmapper.core.search.neighbors import (
    build_index,
    iter_search,
    locality_order,
    prepare_rep,
    resolve_backend,
)
from napari_cellmapper.core.transfer import (
    UNMAPPED,
    category_codes,
    iter_transfer_dense,
    iter_transfer_expression,
    iter_transfer_labels,
)
from napari_cellmapper.io.atomic import (
    TargetChangedError,
    commit,
    release_staging,
    remove_stale_staging,
    staging_path,
)

DEFAULT_STREAM_CHUNK = 200_000


def iter_rep_chunks(
    path: str | Path, use_rep: str, chunk_size: int = DEFAULT_STREAM_CHUNK
) -> Iterator[tuple[pd.Index, np.ndarray]]:
    """(obs_names, embedding rows) of an on-disk AnnData (.h5ad or .zarr), chunk by chunk.

    ``chunk_size`` is checked here, when called, not at the first chunk."""
    val.check_positive_int("chunk_size", chunk_size)
    return _iter_rep_chunks(Path(path), use_rep, int(chunk_size))


def _iter_rep_chunks(path: Path, use_rep: str, chunk_size: int) -> Iterator[tuple[pd.Index, np.ndarray]]:
    import anndata as ad

    if path.suffix == ".h5ad":
        import h5py

        handle = h5py.File(path, "r")
        group = handle
    else:
        import zarr

        handle = None
        group = zarr.open_group(path, mode="r")
    try:
        if use_rep not in group["obsm"]:
            raise val.CellMapperInputError(f"use_rep={use_rep!r} is not in the obsm of {path}.")
        rep = group["obsm"][use_rep]
        index_key = group["obs"].attrs.get("_index", "_index")
        names = ad.io.read_elem(group["obs"][index_key])
        for start in range(0, rep.shape[0], chunk_size):
            stop = min(start + chunk_size, rep.shape[0])
            yield pd.Index(np.asarray(names[start:stop]).astype(str)), np.asarray(rep[start:stop])
    finally:
        if handle is not None:
            handle.close()


def _append_tree(dst_group, src_group) -> None:
    """Append every array under ``src_group`` to its twin under ``dst_group`` (same layout)."""
    import zarr

    for name, member in src_group.members():
        if isinstance(member, zarr.Group):
            _append_tree(dst_group[name], member)
        elif name != "categories":
            dst_group[name].append(member[...])


class _ZarrAppender:
    """Writes the first chunk with anndata, appends later chunks array by array."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_written = 0

    def write(self, chunk: AnnData) -> None:
        import zarr
        from anndata.io import sparse_dataset

        if self.n_written == 0:
            chunk.write_zarr(self.path)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=".chunk-", dir=self.path))  # inside the staging
            try:
                chunk.write_zarr(tmp / "c.zarr")
                src = zarr.open_group(tmp / "c.zarr", mode="r")
                dst = zarr.open_group(self.path, mode="r+", use_consolidated=False)
                for part in ("obs", "obsm"):
                    _append_tree(dst[part], src[part])
                if sparse.issparse(chunk.X):
                    sparse_dataset(dst["X"]).append(sparse.csr_matrix(chunk.X))
                elif chunk.X is not None:
                    dst["X"].append(np.asarray(chunk.X))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.n_written += chunk.n_obs

    def finish(self) -> None:
        import zarr

        zarr.consolidate_metadata(str(self.path))


def iter_map_stream(
    reference: AnnData,
    query_chunks: Iterable[tuple[pd.Index, np.ndarray]],
    out: str | Path,
    *,
    use_rep: str,
    obs_keys: str | list[str] | None = None,
    obsm_keys: str | list[str] | None = None,
    layer_key: str | None = None,
    n_neighbors: int = 30,
    kernel: str = "gauss",
    backend: str = "auto",
    metric: str = "euclidean",
    sigma: float | None = None,
    n_query: int | None = None,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
    **search_options: Any,
) -> Steps[Path]:
    """Generator version of :func:`map_stream`; one progress unit per query cell."""
    out = Path(out).expanduser().absolute()
    _check_out(out, overwrite, protect)
    if kernel == "hnoca":
        raise val.CellMapperInputError("kernel='hnoca' is not available when streaming; use 'gauss'.")
    val.check_not_empty(reference, "reference")
    obs_list, obsm_list = val.as_key_list(obs_keys), val.as_key_list(obsm_keys)
    val.check_obs_keys(reference, obs_list)
    val.check_obsm_keys(reference, obsm_list)
    if layer_key is not None:
        val.check_layer(reference, layer_key)
    val.check_choice("kernel", kernel, val.KERNELS)
    ref_rep = val.get_rep(reference, use_rep, "reference")
    val.check_finite(ref_rep, f"reference.obsm[{use_rep!r}]")
    val.check_k(n_neighbors, reference.n_obs)
    n_neighbors = int(n_neighbors)  # numpy integers pass the check; faiss takes only int
    resolved = resolve_backend(backend, n_query or reference.n_obs, reference.n_obs)
    if resolved == "dask":
        raise val.CellMapperInputError("Streaming builds one in-process index; use a faiss or cupy backend.")
    labels = {key: category_codes(reference.obs[key]) for key in obs_list}
    embeddings = {key: val.get_rep(reference, key, "reference") for key in obsm_list}
    expression = None
    if layer_key is not None:
        expression = reference.X if layer_key == "X" else reference.layers[layer_key]
        val.check_expression_finite(expression, layer_key)
    yield Progress("build index", 0, 1)
    index = build_index(prepare_rep(ref_rep, metric), resolved, **search_options)
    yield Progress("build index", 1, 1)
    remove_stale_staging(out)
    staging = staging_path(out)
    writer = _ZarrAppender(staging)
    total = n_query or 0
    try:
        for names, rep in query_chunks:
            rep = np.asarray(rep)
            if rep.shape[1] != ref_rep.shape[1]:
                raise val.CellMapperInputError(
                    f"query chunk has {rep.shape[1]} dimensions, the reference {ref_rep.shape[1]}."
                )
            done = writer.n_written
            nb = yield from _silent(
                iter_search(rep, ref_rep, n_neighbors, metric=metric, backend=resolved, index=index)
            )
            if kernel == "gauss" and sigma is None:
                sigma = global_sigma(nb)  # fixed by the first chunk for the whole stream
            m = mapping_matrix(nb, kernel, sigma=sigma)
            chunk = AnnData(
                obs=pd.DataFrame(index=names),
                X=(
                    yield from _silent(
                        iter_transfer_expression(m, expression, row_order=locality_order(nb, index))
                    )
                )
                if expression is not None
                else None,
                var=reference.var[[]].copy() if expression is not None else None,
            )
            for key, (codes, cats) in labels.items():
                res = yield from _silent(iter_transfer_labels(m, codes, cats))
                categories = [*map(str, cats), UNMAPPED]
                chunk.obs[f"{key}_pred"] = pd.Categorical.from_codes(
                    np.where(res.codes < 0, len(cats), res.codes), categories=categories
                )
                chunk.obs[f"{key}_conf"] = res.confidence
                chunk.obs[f"{key}_entropy"] = res.entropy
                chunk.obsm[f"{key}_proba"] = res.probabilities
            for key, values in embeddings.items():
                chunk.obsm[f"{key}_pred"] = yield from _silent(iter_transfer_dense(m, values))
            chunk.obs["cellmapper_unmapped"] = unmapped_rows(m)
            writer.write(chunk)
            total = max(total, writer.n_written)
            yield Progress("map query chunks", done + chunk.n_obs, total)
        if writer.n_written == 0:
            raise val.CellMapperInputError("The query stream was empty; nothing was mapped.")
        _write_uns(staging, reference, labels, n_neighbors, kernel, metric, sigma, index, use_rep)
        writer.finish()
        try:
            commit(staging, out, replace=overwrite, replaceable=_refusal)
        except TargetChangedError as err:
            raise val.CellMapperInputError(f"{err} Nothing was replaced; choose another path.") from err
    finally:
        release_staging(staging)
    return out


def _refusal(out: Path) -> str | None:
    """Why ``out`` may not be replaced by a streamed store (None: it is a zarr store)."""
    if out.is_symlink() or not out.is_dir():
        return f"{str(out)!r} is not a zarr store (a file or a link); refusing to replace it."
    if not any((out / name).is_file() for name in ("zarr.json", ".zgroup")):
        return (
            f"{str(out)!r} exists and is not a zarr store; refusing to replace it. "
            "Choose a new path or remove it yourself."
        )
    return None


def _check_out(out: Path, overwrite: bool, protect: Iterable[str | Path]) -> None:
    """Refuse an ``out`` that exists (without overwrite), is no zarr store, or is an input."""
    for path in protect:
        path = Path(path).expanduser()
        if path.exists() and (out == path.resolve() or (out.exists() and os.path.samefile(out, path))):
            raise val.CellMapperInputError(
                f"`out` {str(out)!r} is an input of this run ({str(path)!r}); choose another path."
            )
        if path.resolve() in out.resolve().parents:
            raise val.CellMapperInputError(
                f"`out` {str(out)!r} is inside an input of this run ({str(path)!r}); choose another path."
            )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise val.CellMapperInputError(f"{out} exists; pass overwrite=True or choose another path.")
        reason = _refusal(out)
        if reason is not None:
            raise val.CellMapperInputError(reason)
    if not out.parent.is_dir():
        raise val.CellMapperInputError(f"The folder of {str(out)!r} does not exist; create it first.")


def _silent(steps: Steps[Any]) -> Steps[Any]:
    """Run a sub-step without forwarding its per-chunk progress (the stream reports per chunk)."""
    return run_steps(steps)
    yield  # pragma: no cover - makes this a generator


def _write_uns(
    path: Path, reference: AnnData, labels, n_neighbors, kernel, metric, sigma, index, use_rep
) -> None:
    import zarr
    from anndata.io import write_elem

    from napari_cellmapper.core.mapper import _versions, h5_safe

    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    uns: dict[str, Any] = {}
    for key, (_, cats) in labels.items():
        ref_colors = reference.uns.get(f"{key}_colors")
        colors = colors_for(list(cats), None if ref_colors is None else list(ref_colors))
        uns[f"{key}_pred_colors"] = np.asarray([*colors, UNMAPPED_COLOR], dtype=object)
        uns[f"{key}_proba_columns"] = np.asarray([val.storable_name(c) for c in cats], dtype=object)
    uns["cellmapper"] = h5_safe(
        {
            "use_rep": use_rep,
            "n_neighbors": n_neighbors,
            "kernel": kernel,
            "metric": metric,
            "sigma": sigma,
            "backend": index.backend,
            "nprobe": getattr(index, "nprobe", None),
            "streamed": True,
            "versions": _versions(),
        }
    )
    write_elem(group, "uns", uns)


def map_stream(
    reference: AnnData,
    query_chunks: Iterable[tuple[pd.Index, np.ndarray]],
    out: str | Path,
    *,
    progress: Any = True,
    **kwargs: Any,
) -> Path:
    """Map a stream of query chunks onto ``reference`` and write one annotated AnnData zarr.

    Parameters
    ----------
    reference
        The reference AnnData (in memory), with ``obsm[use_rep]``.
    query_chunks
        Iterable of ``(obs_names, embedding)`` pairs, e.g. :func:`iter_rep_chunks`.
    out
        Target ``.zarr`` path; written in a staging folder of this run and committed atomically
        (:mod:`napari_cellmapper.io.atomic`); an existing one is replaced only with ``overwrite``
        and only when it is a zarr store, never when it is one of the ``protect`` paths.
    progress
        ``True`` for a progress bar on stderr, a callback, or ``False``.
    **kwargs
        ``use_rep`` (required), ``obs_keys``, ``obsm_keys``, ``layer_key``, ``n_neighbors``,
        ``kernel``, ``backend``, ``metric``, ``sigma`` (the ``gauss`` bandwidth; default: estimated
        on the first chunk and kept for all), ``n_query`` (for the progress total), ``overwrite``,
        ``protect`` (input paths).
    """
    return run_steps(iter_map_stream(reference, query_chunks, out, **kwargs), progress)
