"""Write the annotated query back as SpatialData zarr, atomically.

:func:`export_annotated` writes the source table with the mapping results added (obs columns
such as ``cell_type_pred``/``_conf``/``_entropy``, ``mapping_quality``, ``niche``; obsm entries;
``uns`` colours and ``uns["cellmapper"]`` provenance) either to a new store or in place.
Categories that no cell has are left out of the written table, with their colours (see
:func:`without_unused_categories`).

What is atomic
--------------
Nothing is written inside the source store, ever. All writing happens in a hidden staging
directory next to the target (``.<name>.cellmapper-tmp-<id>``, same file system):

1. the new table is written there first (fails fast on unserialisable data);
2. the rest of the store is cloned there: byte copies for a new path; hard links for in-place
   (no data copied; the root ``zarr.json`` is always a real copy, and zarr replaces files
   rather than rewriting them, so the source's inodes are never written to);
3. the cloned ``tables/<name>`` is replaced by the new table and the consolidated metadata in
   the staged root ``zarr.json`` is rebuilt;
4. commit, the only step that touches the target path:

   * new path that does not exist: one ``rename(staging, out)``, atomic;
   * in place, or ``overwrite=True``: ``renameat2(RENAME_EXCHANGE)`` swaps the staged and the
     existing store in one atomic step (Linux; ext4, xfs, btrfs, tmpfs...), then the old tree
     (now at the staging path) is deleted. Where the exchange is not supported the swap is two
     renames (``target -> <target>.cellmapper-backup``, ``staging -> target``); a crash
     between them leaves the complete old store at the ``.cellmapper-backup`` path, and
     :func:`napari_cellmapper.io.spatial.open_spatial` tells the user to rename it back.

So an exception or a killed process at any point before the commit leaves the source (and any
existing target) readable and byte-for-byte unchanged; the only debris is the hidden staging
directory, which is removed on exceptions (not on SIGKILL; it is safe to delete). After the
commit the target is complete; a crash during the final clean-up can leave the old tree at the
hidden staging path. In place, the files of every other element are the same files (same
bytes, hard-linked), only ``tables/<name>`` and the root ``zarr.json`` change.
Durability against power loss is not guaranteed beyond an ``fsync`` of the parent directory.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import atomic
from napari_cellmapper.io.spatial import (
    ATTRS_KEY,
    BACKUP_SUFFIX,
    _check_table_name,
    check_spatialdata_path,
    is_spatialdata_zarr,
    open_spatial,
)

STAGING_MARK = atomic.STAGING_MARK
_ROOT_METADATA = frozenset({"zarr.json", ".zmetadata", ".zattrs", ".zgroup"})
_TABLE_TMP = "__cellmapper_table__"

# Test hook: called with the name of each stage of the write (see _checkpoint).
_hook: Callable[[str], None] | None = None


def _checkpoint(stage: str) -> None:
    if _hook is not None:
        _hook(stage)


# --------------------------------------------------------------------------------------------
# the table to write


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("napari-cellmapper", "spatialdata", "anndata", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _plain(value: Any) -> Any:
    """Make a value writable by anndata: tuples/sets -> lists, paths -> str, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, set, frozenset)):
        value = list(value) if not isinstance(value, (set, frozenset)) else sorted(value, key=str)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _names_within(names: pd.Index, known: pd.Index) -> bool:
    """Every one of ``names`` is in ``known``; through a set, as pandas' ``isin`` took 2-3.7 s for
    300k string names (object or Arrow-backed) where this takes 0.07 s."""
    return set(np.asarray(known, dtype=object)).issuperset(np.asarray(names, dtype=object))


def _aligned(source: AnnData, annotated: AnnData, table_name: str) -> AnnData:
    if annotated.obs_names.equals(source.obs_names):  # the usual case, and a fast one
        return annotated
    if annotated.n_obs != source.n_obs or not _names_within(annotated.obs_names, source.obs_names):
        raise CellMapperInputError(
            f"The annotated table has {annotated.n_obs} cells but table {table_name!r} has {source.n_obs}, "
            "or their obs names differ. Pass the query table returned by `query_table()` for this table, "
            "annotated (same cells; subsetting or renaming cells is not supported)."
        )
    if not annotated.obs_names.is_unique:
        raise CellMapperInputError("The annotated table has duplicate obs names. Make them unique first.")
    if annotated.obs_names.equals(source.obs_names):
        return annotated
    return annotated[source.obs_names]


def _category_use(table: AnnData) -> dict[str, np.ndarray]:
    """{column: which of its categories some cell has}, for the categorical obs columns that have
    categories no cell has (the region and instance columns are left out)."""
    attrs = table.uns.get(ATTRS_KEY) or {}
    protected = {attrs.get("region_key"), attrs.get("instance_key")} - {None}
    out = {}
    for col in table.obs.columns:
        values = table.obs[col]
        if col in protected or not isinstance(values.dtype, pd.CategoricalDtype):
            continue
        codes = values.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories)) > 0
        if not used.all():
            out[col] = used
    return out


def _drop_unused_categories(table: AnnData, use: Mapping[str, np.ndarray]) -> None:
    """Drop, in place, the unused categories found by :func:`_category_use`, with their colours.

    A colour list with one entry per category keeps the entries of the kept categories, so every
    category keeps its colour; other colour lists are left alone.
    """
    for col, used in use.items():
        table.obs[col] = table.obs[col].cat.remove_unused_categories()
        colors = table.uns.get(f"{col}_colors")
        if colors is not None and np.ndim(colors) == 1 and len(colors) == len(used):
            table.uns[f"{col}_colors"] = np.asarray(colors)[used]


def without_unused_categories(table: AnnData) -> AnnData:
    """``table``, or a copy of it without the categories that no cell has (and their colours).

    Written tables must not keep such categories: anndata's views drop them together with their
    ``uns[f"{key}_colors"]`` entries, and spatialdata's table joins (what napari-spatialdata shows)
    then restore the categories but not the colours, so categories and colours no longer pair up
    (napari-spatialdata: ``zip() argument 2 is shorter than argument 1``). Dropping them loses no
    cell's value. ``table`` itself is never changed.
    """
    use = _category_use(table)
    if not use:
        return table
    out = table.copy()
    _drop_unused_categories(out, use)
    return out


def merge_annotations(
    source: AnnData,
    annotated: AnnData,
    table_name: str,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> AnnData:
    """The table to write: ``source`` plus the annotations carried by ``annotated``.

    obs columns, obsm, obsp and uns entries of ``annotated`` are added to (or replace those of)
    a copy of ``source``; layers too when the genes match. ``X``, ``var``, the table's
    ``spatialdata_attrs`` and its region/instance columns are kept from ``source``, so nothing
    of the source table is lost. Categories that no cell has are dropped with their colours (see
    :func:`without_unused_categories`). ``uns["cellmapper"]["export"]`` records the export.
    """
    ann = _aligned(source, annotated, table_name)
    out = source.copy()
    attrs = source.uns.get(ATTRS_KEY) or {}
    protected = {attrs.get("region_key"), attrs.get("instance_key")} - {None}
    for col in ann.obs.columns:
        if col not in protected:
            out.obs[col] = pd.Series(ann.obs[col].array, index=out.obs_names)
    for key, value in ann.obsm.items():
        out.obsm[key] = value.set_axis(out.obs_names) if isinstance(value, pd.DataFrame) else value
    for key, value in ann.obsp.items():
        out.obsp[key] = value
    if ann.var_names.equals(out.var_names):
        for key, value in ann.layers.items():
            out.layers[key] = value
    for key, value in ann.uns.items():
        if key != ATTRS_KEY:
            out.uns[key] = _plain(copy.deepcopy(value))
    cm = dict(out.uns.get("cellmapper") or {})
    if provenance:
        cm.update(_plain(copy.deepcopy(dict(provenance))))
    cm.setdefault("versions", _versions())
    out.uns["cellmapper"] = cm
    _drop_unused_categories(out, _category_use(out))
    return out


def imputed_table_name(table_name: str) -> str:
    """Default name of the table holding a mapped table's imputed expression."""
    return f"{table_name}_imputed"


def imputed_table(source: AnnData, imputed: AnnData, table_name: str) -> AnnData:
    """The imputed expression as a table annotating the same cells as ``source``.

    ``imputed`` holds the imputed expression (reference genes) of some or all cells of the source
    table, by obs name (a run restricted to a region imputes only its cells). The result keeps
    those rows with ``X`` and ``var`` of ``imputed`` and the source's region/instance columns and
    ``spatialdata_attrs``, so SpatialData links it to the same element.
    """
    if not isinstance(imputed, AnnData):
        raise CellMapperInputError(f"`imputed` must be an AnnData, got {type(imputed).__name__}.")
    if not imputed.obs_names.is_unique or not _names_within(imputed.obs_names, source.obs_names):
        raise CellMapperInputError(
            f"The imputed expression must have unique obs names, all cells of table {table_name!r}; "
            "pass the `query_imputed` of the run that mapped this table."
        )
    attrs = dict(source.uns.get(ATTRS_KEY) or {})
    keys = [k for k in (attrs.get("region_key"), attrs.get("instance_key")) if k in source.obs]
    obs = source.obs.loc[imputed.obs_names, keys].copy()
    out = AnnData(X=imputed.X, obs=obs, var=imputed.var.copy())
    if attrs:
        out.uns[ATTRS_KEY] = copy.deepcopy(attrs)
    out.uns["cellmapper"] = {"imputed_from_table": table_name}
    return out


# --------------------------------------------------------------------------------------------
# file-system helpers


def _is_writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _read_only_error(path: Path, what: str) -> CellMapperInputError:
    return CellMapperInputError(
        f"Cannot write {what}: {str(path)!r} is read-only (or not a writable directory). "
        "Choose an output path in a writable directory, or fix the permissions."
    )


def _staging_dir(target: Path) -> Path:
    atomic.remove_stale_staging(target)
    staging = atomic.staging_path(target)
    try:
        staging.mkdir()
    except OSError as err:
        atomic.release_staging(staging)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _read_only_error(target.parent, "the output") from err
        raise
    return staging


def _clone_tree(src: Path, dst: Path, *, skip: set[Path], link: bool) -> None:
    """Clone ``src`` into ``dst`` (which exists), leaving out the sub-trees ``skip`` (relative)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        if rel in skip:
            dirs[:] = []
            continue
        (dst / rel).mkdir(exist_ok=True)
        for name in [d for d in dirs if (Path(root) / d).is_symlink()]:  # os.walk does not enter these
            os.symlink(os.readlink(Path(root) / name), dst / rel / name)
        for name in files:
            s, d = Path(root) / name, dst / rel / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
                continue
            if link and not (rel == Path(".") and name in _ROOT_METADATA):
                try:
                    os.link(s, d)
                    continue
                except OSError:
                    pass
            shutil.copy2(s, d)


def _write_tables_into(staging: Path, tables: Mapping[str, AnnData]) -> Path:
    """Write ``tables`` as SpatialData table groups under ``staging``; return their ``tables`` dir."""
    from spatialdata import SpatialData

    tmp = staging / _TABLE_TMP
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "table annotates an element not present" is expected here
            SpatialData(tables=dict(tables)).write(tmp, consolidate_metadata=False)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - anndata/zarr refuse some Python objects
        raise CellMapperInputError(
            f"The annotated table cannot be written ({type(err).__name__}: {err}). Convert unsupported "
            "obs/obsm/uns values (e.g. arbitrary Python objects, mixed-type object columns) to numbers, "
            "strings, categoricals, arrays or dicts of those."
        ) from err
    return tmp / "tables"


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def _has_consolidated_metadata(path: Path) -> bool:
    import json

    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return (path / ".zmetadata").is_file()
    return bool(meta.get("consolidated_metadata"))


def _clonable(source: Path, table_name: str) -> bool:
    """Whether the source is a zarr v3 store whose table group can be swapped file-wise."""
    return (source / "zarr.json").is_file() and (source / "tables" / table_name / "zarr.json").is_file()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    return atomic.exchange(a, b)


def _commit(staging: Path, target: Path, *, in_place: bool, overwrite: bool) -> None:
    """Make ``staging`` the store at ``target`` (see the module docstring for atomicity).

    Under a lock on the target name, and only what was checked: a new path is created only if
    nothing appeared there meanwhile; an existing one is replaced only if it is the source (in
    place) or a SpatialData store (``overwrite``, checked again here).
    """
    _checkpoint("before-commit")
    with atomic.locked(target):
        _commit_locked(staging, target, in_place=in_place, overwrite=overwrite)
    atomic.fsync_dir(target.parent)
    _checkpoint("committed")


def _commit_locked(staging: Path, target: Path, *, in_place: bool, overwrite: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        try:
            atomic.create(staging, target)
        except atomic.TargetChangedError as err:
            raise CellMapperInputError(f"{err} Nothing was replaced; export again.") from err
        return
    if not (in_place or (overwrite and is_spatialdata_zarr(target))):
        raise CellMapperInputError(
            f"{str(target)!r} appeared or changed while this export was writing, and it is not a "
            "store this export may replace (or `overwrite` was not given). Nothing was replaced."
        )
    if _exchange(staging, target):
        _checkpoint("exchanged")
        shutil.rmtree(staging, ignore_errors=True)
    else:
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        os.rename(target, backup)
        try:
            _checkpoint("moved-to-backup")
            os.rename(staging, target)
        except BaseException:
            os.rename(backup, target)  # put the old store back; staging is removed by the caller
            raise
        shutil.rmtree(backup, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the public entry point


def _resolve_target(
    source: Path, out_path: str | os.PathLike[str] | None, in_place: bool, overwrite: bool
) -> Path:
    if in_place:
        if out_path is not None and Path(out_path).expanduser().resolve() != source:
            raise CellMapperInputError(
                "Pass either `out_path` or `in_place=True`, not both (in place writes to the source)."
            )
        if not _is_writable_dir(source) or not _is_writable_dir(source.parent):
            raise _read_only_error(source if not _is_writable_dir(source) else source.parent, "in place")
        return source
    if out_path is None:
        raise CellMapperInputError(
            "No output given. Pass `out_path=` for a new store, or `in_place=True` to replace the table "
            "in the source store."
        )
    out = Path(out_path).expanduser().resolve()
    if out == source:
        raise CellMapperInputError(
            f"`out_path` is the source store {str(source)!r}. Use `in_place=True` to write into it."
        )
    if source in out.parents or out in source.parents:
        raise CellMapperInputError(
            f"`out_path` {str(out)!r} is inside the source store or contains it. Choose a separate path."
        )
    if not out.parent.is_dir():
        raise CellMapperInputError(
            f"The folder {str(out.parent)!r} of `out_path` does not exist. "
            "Create it first or choose another path."
        )
    if not _is_writable_dir(out.parent):
        raise _read_only_error(out.parent, "the output")
    if out.exists():
        if not overwrite:
            raise CellMapperInputError(
                f"{str(out)!r} already exists. Pass `overwrite=True` to replace it, or choose a new path."
            )
        if not is_spatialdata_zarr(out):
            raise CellMapperInputError(
                f"{str(out)!r} exists and is not a SpatialData zarr store; refusing to overwrite it. "
                "Choose a new path or remove it yourself."
            )
    backup = out.with_name(out.name + BACKUP_SUFFIX)
    if backup.exists():
        raise CellMapperInputError(
            f"{str(backup)!r} exists (left by an interrupted export). Inspect and remove or rename it first."
        )
    return out


def export_annotated(
    source_path: str | os.PathLike[str],
    table_name: str,
    annotated_table: AnnData,
    out_path: str | os.PathLike[str] | None = None,
    *,
    in_place: bool = False,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
    imputed: AnnData | None = None,
    imputed_name: str | None = None,
) -> Path:
    """Write the annotated query as a SpatialData zarr store, atomically.

    Parameters
    ----------
    source_path
        The SpatialData zarr store the query table was read from.
    table_name
        The table that was mapped.
    annotated_table
        The mapped query (same cells as the table); its obs columns, obsm, obsp, uns (colours,
        ``uns["cellmapper"]``) and, when genes match, layers are written (see :func:`merge_annotations`).
    out_path
        New store to write (the default mode). Refused if it exists, unless ``overwrite=True``.
    in_place
        Replace only the table inside ``source_path`` instead.
    overwrite
        Allow replacing an existing SpatialData store at ``out_path``.
    provenance
        Extra entries for ``uns["cellmapper"]`` (parameters, reference name, ...).
    imputed
        Imputed expression (``CellMapper.query_imputed``), written as one more table annotating
        the same cells (see :func:`imputed_table`).
    imputed_name
        Its name; default :func:`imputed_table_name` (replaced if it exists).

    Returns
    -------
    Path
        The store written.
    """
    source = check_spatialdata_path(source_path).resolve()
    target = _resolve_target(source, out_path, in_place, overwrite)
    clonable = _clonable(source, table_name)
    # a clone copies the other elements as files: only the tables need reading (the images, labels
    # and shapes of a 300k-cell store took 2.9 s to read for nothing)
    sdata = open_spatial(source, selection=("tables",) if clonable else None)
    _check_table_name(sdata, table_name)
    if not isinstance(annotated_table, AnnData):
        raise CellMapperInputError(
            f"`annotated_table` must be an AnnData, got {type(annotated_table).__name__}."
        )
    if in_place and not clonable:
        raise CellMapperInputError(
            f"{str(source)!r} is stored in an older SpatialData format, which cannot be updated in place. "
            "Export to a new path instead (it is written in the current format)."
        )
    export_info = {
        "source": str(source),
        "table": table_name,
        "mode": "in_place" if in_place else "new_path",
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    extra = dict(provenance or {})
    extra["export"] = export_info
    source_table = sdata.tables[table_name]
    table = merge_annotations(source_table, annotated_table, table_name, provenance=extra)
    tables = {table_name: table}
    if imputed is not None:
        name = imputed_name or imputed_table_name(table_name)
        if name == table_name:
            raise CellMapperInputError("`imputed_name` must differ from the mapped table's name.")
        if in_place and name in sdata.tables and not _clonable(source, name):
            raise CellMapperInputError(f"Table {name!r} of {str(source)!r} cannot be replaced in place.")
        tables[name] = imputed_table(source_table, imputed, table_name)

    staging = _staging_dir(target)
    try:
        _checkpoint("staging-created")
        if clonable:
            written = _write_tables_into(staging, tables)
            _checkpoint("table-written")
            skip = {Path("tables") / name for name in tables}
            _clone_tree(source, staging, skip=skip, link=in_place)
            _checkpoint("cloned")
            (staging / "tables").mkdir(exist_ok=True)
            for name in tables:
                os.rename(written / name, staging / "tables" / name)
            shutil.rmtree(staging / _TABLE_TMP)
            _checkpoint("table-placed")
            if _has_consolidated_metadata(source):
                _consolidate(staging)
            _checkpoint("consolidated")
        else:  # older format: a full write in the current format
            for name, value in tables.items():
                sdata.tables[name] = value
            store = staging / "store.zarr"
            sdata.write(store, update_sdata_path=False)
            _checkpoint("table-written")
            # move the written store's content up so that ``staging`` is the store
            for child in store.iterdir():
                os.rename(child, staging / child.name)
            store.rmdir()
            _checkpoint("consolidated")
        _commit(staging, target, in_place=in_place, overwrite=overwrite)
    except BaseException:
        _remove_staging(staging)
        raise
    finally:
        atomic.release_staging(staging)
    return target


def _remove_staging(staging: Path, attempts: int = 20, pause: float = 0.05) -> None:
    """Delete a staging folder, also when writes that zarr had in flight land after the failure.

    zarr writes chunks concurrently: when one write fails, others may still complete for a moment,
    re-creating files in a folder that is being deleted. Retry until the folder stays gone.
    """
    for _ in range(attempts):
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            time.sleep(pause)  # a late write would re-create it within this pause
            if not staging.exists():
                return
        time.sleep(pause)
