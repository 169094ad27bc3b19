"""SpatialData query: tables, annotated elements, coordinate systems, one coordinate per cell.

A query for mapping is one *table* of a SpatialData object. The table annotates one or more
spatial elements (``uns["spatialdata_attrs"]``: ``region``, ``region_key``, ``instance_key``);
each table row is one cell, matched to the element by its instance id (the element's index for
points and shapes, the label id for labels). :func:`cell_coordinates` gives one ``(x, y)`` per
table row in a chosen coordinate system, with the element's transformation applied.

Every problem with the input raises :class:`CellMapperInputError` before heavy work; nothing
here modifies the SpatialData object or the store it was read from.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io.label_centroids import label_centroids

ElementKind = Literal["points", "circles", "polygons", "labels"]

ATTRS_KEY = "spatialdata_attrs"
_ELEMENT_GROUPS = ("images", "labels", "points", "shapes", "tables")
# Suffix of the backup directory left by an interrupted in-place export (see io/export.py).
BACKUP_SUFFIX = ".cellmapper-backup"


@dataclass(frozen=True)
class TableInfo:
    """What one table annotates.

    Attributes
    ----------
    name
        Table name in ``sdata.tables``.
    n_obs, n_vars
        Table shape.
    regions
        Element names listed in the table's ``region`` attribute (may name missing elements).
    region_key, instance_key
        obs columns holding each row's element name and instance id (``None`` if unset).
    element_kinds
        ``{region: kind}`` for the regions present in the SpatialData object.
    coordinate_systems
        Coordinate systems that every present annotated element can be transformed to.
    """

    name: str
    n_obs: int
    n_vars: int
    regions: tuple[str, ...]
    region_key: str | None
    instance_key: str | None
    element_kinds: Mapping[str, str] = field(default_factory=dict)
    coordinate_systems: tuple[str, ...] = ()

    @property
    def annotated_elements(self) -> tuple[str, ...]:
        """The annotated regions that exist in the SpatialData object."""
        return tuple(self.element_kinds)

    @property
    def annotates_anything(self) -> bool:
        """Whether the table annotates at least one existing element with usable keys."""
        return bool(self.element_kinds) and self.instance_key is not None


@dataclass(frozen=True)
class SpatialSummary:
    """Overview of a SpatialData object for choosing the query table and coordinate system."""

    tables: dict[str, TableInfo]
    coordinate_systems: tuple[str, ...]
    images: tuple[str, ...]
    labels: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    points: tuple[str, ...] = ()
    path: Path | None = None


# --------------------------------------------------------------------------------------------
# opening


def is_spatialdata_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory that looks like a SpatialData zarr store (cheap check)."""
    p = Path(path)
    if not p.is_dir():
        return False
    attrs = _root_attributes(p)
    if attrs is not None and ATTRS_KEY in attrs:
        return True
    has_group_file = (p / "zarr.json").is_file() or (p / ".zgroup").is_file()
    return has_group_file and any((p / g).is_dir() for g in _ELEMENT_GROUPS)


def _root_attributes(path: Path) -> dict[str, Any] | None:
    import json

    if (path / "zarr.json").is_file():
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        return meta.get("attributes", {}) if meta.get("node_type") == "group" else None
    if (path / ".zattrs").is_file():
        try:
            return json.loads((path / ".zattrs").read_text())
        except (OSError, ValueError):
            return None
    return {} if (path / ".zgroup").is_file() else None


def check_spatialdata_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it is a SpatialData zarr store, else raise a clear error."""
    p = Path(path).expanduser()
    if not p.exists():
        backup = p.with_name(p.name + BACKUP_SUFFIX)
        if backup.is_dir():
            raise CellMapperInputError(
                f"{str(p)!r} does not exist, but {str(backup)!r} does: an in-place export was "
                f"interrupted while swapping directories. Rename {backup.name!r} back to {p.name!r}."
            )
        raise CellMapperInputError(
            f"{str(p)!r} does not exist. Pass the path of a SpatialData .zarr directory."
        )
    if not is_spatialdata_zarr(p):
        kind = "a file" if p.is_file() else "a directory without SpatialData metadata"
        hint = " (an .h5ad file is a reference, not a spatial query)" if p.suffix == ".h5ad" else ""
        raise CellMapperInputError(
            f"{str(p)!r} is not a SpatialData zarr store: it is {kind}{hint}. Pass a directory "
            "written by spatialdata (e.g. `sdata.write('sample.zarr')`)."
        )
    return p


def open_spatial(path: str | os.PathLike[str], *, selection: tuple[str, ...] | None = None) -> Any:
    """Open a SpatialData zarr store as the query (images and labels stay lazy; shapes are read
    in steps that leave the interface responsive, ``io.shapes``).

    Parameters
    ----------
    path
        SpatialData ``.zarr`` directory.
    selection
        Element groups to read (e.g. ``("tables",)``); all by default.

    Returns
    -------
    spatialdata.SpatialData
    """
    from napari_cellmapper.io.shapes import read_spatialdata

    p = check_spatialdata_path(path)
    try:
        with warnings.catch_warnings():
            if selection is not None:  # the annotated elements are simply not read
                warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
            return read_spatialdata(p, selection=selection)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable store
        raise CellMapperInputError(
            f"{str(p)!r} looks like SpatialData but could not be read ({type(err).__name__}: {err}). "
            "Check that the store is complete, or re-write it with the installed spatialdata version."
        ) from err


def _as_sdata(sdata: Any) -> Any:
    if isinstance(sdata, (str, os.PathLike)):
        return open_spatial(sdata)
    return sdata


# --------------------------------------------------------------------------------------------
# describing


def _check_table_name(sdata: Any, table_name: str) -> AnnData:
    if table_name not in sdata.tables:
        available = ", ".join(map(repr, sdata.tables)) or "none"
        raise CellMapperInputError(
            f"Unknown table {table_name!r}. Available tables: {available}. "
            "Pass one of them as the table name."
        )
    return sdata.tables[table_name]


def _table_keys(table: AnnData) -> tuple[tuple[str, ...], str | None, str | None]:
    attrs = table.uns.get(ATTRS_KEY) or {}
    region = attrs.get("region")
    if region is None:
        regions: tuple[str, ...] = ()
    elif isinstance(region, str):
        regions = (region,)
    else:
        regions = tuple(str(r) for r in np.asarray(region).ravel().tolist())
    return regions, attrs.get("region_key"), attrs.get("instance_key")


def _find_element(sdata: Any, name: str) -> tuple[str, Any] | None:
    for group in ("shapes", "labels", "points", "images"):
        elements = getattr(sdata, group)
        if name in elements:
            return group, elements[name]
    return None


def _kind_of(group: str, element: Any) -> str:
    if group == "labels":
        return "labels"
    if group == "points":
        return "points"
    if group == "images":
        return "image"
    geom_types = set(element.geometry.geom_type.unique().tolist())
    if geom_types <= {"Point"}:
        return "circles"
    if geom_types <= {"Polygon", "MultiPolygon"}:
        return "polygons"
    return "mixed shapes (" + ", ".join(sorted(geom_types)) + ")"


def kind_of_element(sdata: Any, element: str) -> str:
    """Kind of a SpatialData element, by name: "points", "circles", "polygons", "labels", "image"
    or "mixed shapes (...)" (:func:`element_kind` takes a table). ``KeyError`` if unknown."""
    sdata = _as_sdata(sdata)
    for group in ("labels", "points", "shapes", "images"):
        elements = getattr(sdata, group)
        if element in elements:
            return _kind_of(group, elements[element])
    raise KeyError(f"{element!r} is not an element of this SpatialData")


def _element_coordinate_systems(element: Any) -> tuple[str, ...]:
    from spatialdata.transformations import get_transformation

    return tuple(get_transformation(element, get_all=True))


def table_info(sdata: Any, table_name: str) -> TableInfo:
    """Describe one table (raises if the name is unknown; does not check that it annotates anything)."""
    sdata = _as_sdata(sdata)
    table = _check_table_name(sdata, table_name)
    regions, region_key, instance_key = _table_keys(table)
    kinds: dict[str, str] = {}
    cs_sets: list[set[str]] = []
    for region in regions:
        found = _find_element(sdata, region)
        if found is None:
            continue
        group, element = found
        kinds[region] = _kind_of(group, element)
        cs_sets.append(set(_element_coordinate_systems(element)))
    common = sorted(set.intersection(*cs_sets)) if cs_sets else []
    return TableInfo(
        name=table_name,
        n_obs=table.n_obs,
        n_vars=table.n_vars,
        regions=regions,
        region_key=region_key,
        instance_key=instance_key,
        element_kinds=kinds,
        coordinate_systems=tuple(common),
    )


def describe(sdata: Any) -> SpatialSummary:
    """Summarise tables (with what they annotate), coordinate systems and elements.

    Parameters
    ----------
    sdata
        A SpatialData object, or the path of a SpatialData zarr store.
    """
    sdata = _as_sdata(sdata)
    return SpatialSummary(
        tables={name: table_info(sdata, name) for name in sdata.tables},
        coordinate_systems=tuple(sdata.coordinate_systems),
        images=tuple(sdata.images),
        labels=tuple(sdata.labels),
        shapes=tuple(sdata.shapes),
        points=tuple(sdata.points),
        path=Path(sdata.path) if getattr(sdata, "path", None) is not None else None,
    )


def _checked_info(sdata: Any, table_name: str) -> TableInfo:
    """Table info that is guaranteed to annotate existing, supported elements."""
    info = table_info(sdata, table_name)
    fix = (
        "Parse it with `spatialdata.models.TableModel.parse(table, region=<element name>, "
        "region_key=<obs column>, instance_key=<obs column>)`."
    )
    if not info.regions:
        raise CellMapperInputError(
            f"Table {table_name!r} annotates nothing (no region in its spatialdata_attrs). {fix}"
        )
    if info.instance_key is None or info.instance_key not in sdata.tables[table_name].obs:
        raise CellMapperInputError(
            f"Table {table_name!r} has no instance_key column (instance_key={info.instance_key!r}), "
            f"so its rows cannot be matched to cells. {fix}"
        )
    missing = [r for r in info.regions if r not in info.element_kinds]
    if missing:
        present = [*sdata.shapes, *sdata.labels, *sdata.points]
        raise CellMapperInputError(
            f"Table {table_name!r} annotates {', '.join(map(repr, missing))}, which is not an element "
            f"of this SpatialData (shapes/labels/points present: {', '.join(map(repr, present)) or 'none'}). "
            "Add the element or re-parse the table with the right region."
        )
    bad = {
        r: k for r, k in info.element_kinds.items() if k not in ("points", "circles", "polygons", "labels")
    }
    if bad:
        raise CellMapperInputError(
            f"Table {table_name!r} annotates unsupported element(s) {bad}; cells must be points, circles, "
            "polygons or labels."
        )
    if len(info.regions) > 1 and (
        info.region_key is None or info.region_key not in sdata.tables[table_name].obs
    ):
        raise CellMapperInputError(
            f"Table {table_name!r} annotates several elements but has no region_key column "
            f"(region_key={info.region_key!r}). {fix}"
        )
    return info


def element_kind(sdata: Any, table_name: str) -> ElementKind:
    """Kind of the cells annotated by a table: "points", "circles", "polygons" or "labels".

    Raises if the table annotates nothing, or annotates elements of different kinds.
    """
    sdata = _as_sdata(sdata)
    info = _checked_info(sdata, table_name)
    kinds = set(info.element_kinds.values())
    if len(kinds) > 1:
        raise CellMapperInputError(
            f"Table {table_name!r} annotates elements of different kinds {dict(info.element_kinds)}; "
            "split it into one table per kind of element."
        )
    return kinds.pop()  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# coordinates


def _input_axes(element: Any) -> tuple[str, ...]:
    """Intrinsic axes whose values reach x, y: z too for 3-D points (a 3-D affine mixes it in)."""
    columns = getattr(element, "columns", ())
    return ("x", "y", "z") if "x" in columns and "z" in columns else ("x", "y")


def _affine_xy(element: Any, coordinate_system: str, table_name: str) -> np.ndarray:
    """``(3, n_in + 1)`` affine from the element's intrinsic axes (:func:`_input_axes`) to x, y;
    refused when it collapses the cells onto a line or a point."""
    from spatialdata.transformations import get_transformation

    available = _element_coordinate_systems(element)
    if coordinate_system not in available:
        raise CellMapperInputError(
            f"Unknown coordinate system {coordinate_system!r} for the cells of table {table_name!r}. "
            f"Available: {', '.join(map(repr, available)) or 'none'}."
        )
    transform = get_transformation(element, to_coordinate_system=coordinate_system)
    axes = _input_axes(element)
    full = np.asarray(transform.to_affine_matrix(input_axes=axes, output_axes=axes), dtype=float)
    m = full[[0, 1, -1]]  # the rows of x, y and the homogeneous one
    if not np.isfinite(m).all() or np.linalg.matrix_rank(m[:2, : len(axes)]) < 2:
        raise CellMapperInputError(
            f"The transformation of the cells of table {table_name!r} to coordinate system "
            f"{coordinate_system!r} is not invertible: it puts every cell on a line or a point "
            f"(x, y rows {m[:2].round(6).tolist()}). Fix the element's transformation "
            "(spatialdata.transformations.set_transformation) or choose another coordinate system."
        )
    return m


def _points_xy(element: Any) -> pd.DataFrame:
    axes = list(_input_axes(element))
    df = element[axes].compute() if hasattr(element, "compute") else element[axes]
    return pd.DataFrame({axis: np.asarray(df[axis], float) for axis in axes}, index=df.index)


def _shapes_xy(element: Any, kind: str) -> pd.DataFrame:
    geoms = element.geometry if kind == "circles" else element.geometry.centroid
    return pd.DataFrame({"x": geoms.x.to_numpy(float), "y": geoms.y.to_numpy(float)}, index=element.index)


def _intrinsic_xy(element: Any, kind: str) -> pd.DataFrame:
    if kind == "points":
        return _points_xy(element)
    if kind in ("circles", "polygons"):
        return _shapes_xy(element, kind)
    return label_centroids(element)


def _positions(ids: np.ndarray, index: pd.Index) -> np.ndarray:
    """Positions in ``index`` of each id (-1: none); ids read back as strings on one side and
    integers on the other are compared as strings."""
    pos = index.get_indexer(pd.Index(ids))
    if (pos < 0).all() and len(ids) and index.dtype != pd.Index(ids).dtype:
        pos = index.astype(str).get_indexer(pd.Index(ids).astype(str))
    return pos


def _match_rows(ids: np.ndarray, index: pd.Index, table_name: str, region: str) -> np.ndarray:
    """Positions in ``index`` of each id; raises when ids are missing."""
    if not index.is_unique:
        raise CellMapperInputError(
            f"Element {region!r} has duplicate instance ids, "
            f"so table {table_name!r} cannot be matched to it. "
            "Make the element's index unique."
        )
    pos = _positions(ids, index)
    missing = pos < 0
    if missing.all() and len(ids):
        raise CellMapperInputError(_no_shared_cells(ids, index, table_name, region))
    if missing.any():
        raise CellMapperInputError(
            f"{int(missing.sum())} of {len(ids)} rows of table {table_name!r} have no cell in element "
            f"{region!r} (e.g. instance ids {ids[missing][:5].tolist()}). Subset the table to the cells "
            "present in the element, or fix its instance_key column."
        )
    return pos


def _no_shared_cells(ids: np.ndarray, index: pd.Index, table_name: str, region: str) -> str:
    return (
        f"No shared cells between table {table_name!r} and element {region!r}: none of the table's "
        f"instance ids (e.g. {ids[:3].tolist()}) is an id of the element (e.g. {index[:3].tolist()}). "
        "Check the table's instance_key column and that it annotates the right element."
    )


def _row_regions(table: AnnData, info: TableInfo, table_name: str) -> np.ndarray:
    """The element (region) each table row annotates."""
    if len(info.regions) == 1 and (info.region_key is None or info.region_key not in table.obs):
        return np.full(table.n_obs, info.regions[0], dtype=object)
    row_regions = table.obs[info.region_key].astype(str).to_numpy()
    unknown = sorted(set(row_regions) - set(info.regions))
    if unknown:
        raise CellMapperInputError(
            f"Rows of table {table_name!r} name regions {unknown} in obs[{info.region_key!r}] that the "
            f"table does not declare ({list(info.regions)}). Re-parse the table with all its regions."
        )
    return row_regions


def check_rows_match_cells(sdata: Any, table_name: str) -> None:
    """Before a mapping: refuse a table none of whose rows is a cell of its element, and warn
    about rows that are not (they are mapped, but have no place on the tissue). Points and
    shapes are checked by their index; labels when their centroids are computed."""
    sdata = _as_sdata(sdata)
    info = _checked_info(sdata, table_name)
    table = sdata.tables[table_name]
    ids_all = table.obs[info.instance_key].to_numpy()
    row_regions = _row_regions(table, info, table_name)
    for region, kind in info.element_kinds.items():
        rows = np.flatnonzero(row_regions == region)
        if rows.size == 0 or kind == "labels":
            continue
        element = _find_element(sdata, region)[1]  # type: ignore[index]
        index = element.index.compute() if hasattr(element.index, "compute") else element.index
        ids = ids_all[rows]
        missing = _positions(ids, pd.Index(index)) < 0
        if missing.all():
            raise CellMapperInputError(_no_shared_cells(ids, pd.Index(index), table_name, region))
        if missing.any():
            warnings.warn(
                f"{int(missing.sum())} of {len(ids)} rows of table {table_name!r} have no cell in element "
                f"{region!r} (e.g. instance ids {ids[missing][:5].tolist()}): they are mapped but cannot be "
                "drawn or placed. Subset the table to the cells present, or fix its instance_key column.",
                UserWarning,
                stacklevel=2,
            )


def cell_coordinates(sdata: Any, table_name: str, coordinate_system: str = "global") -> np.ndarray:
    """One ``(x, y)`` per table row, in ``coordinate_system``.

    Points give their position, circles their centre, polygons their centroid and labels the
    centroid of their pixels (full-resolution scale). The element's transformation to the
    coordinate system is applied.

    Parameters
    ----------
    sdata
        SpatialData object (or path of a SpatialData zarr store).
    table_name
        Table whose rows are the cells.
    coordinate_system
        Target coordinate system.

    Returns
    -------
    np.ndarray
        ``(n_obs, 2)`` float64, columns x, y, in the table's row order.
    """
    sdata = _as_sdata(sdata)
    info = _checked_info(sdata, table_name)
    table = sdata.tables[table_name]
    # validate every coordinate system before computing anything
    elements = {r: _find_element(sdata, r)[1] for r in info.element_kinds}  # type: ignore[index]
    affines = {r: _affine_xy(e, coordinate_system, table_name) for r, e in elements.items()}
    ids_all = table.obs[info.instance_key].to_numpy()
    row_regions = _row_regions(table, info, table_name)
    out = np.full((table.n_obs, 2), np.nan, dtype=np.float64)
    for region, element in elements.items():
        rows = np.flatnonzero(row_regions == region)
        if rows.size == 0:
            continue
        xy = _intrinsic_xy(element, info.element_kinds[region])
        pos = _match_rows(ids_all[rows], xy.index, table_name, region)
        m = affines[region]
        intrinsic = xy[list(_input_axes(element))].to_numpy(np.float64)[pos]
        out[rows] = intrinsic @ m[:2, :-1].T + m[:2, -1]
    return out


# --------------------------------------------------------------------------------------------
# the query table


def query_table(
    sdata: Any,
    table_name: str,
    *,
    coordinate_system: str | None = None,
    spatial_key: str = "spatial",
) -> AnnData:
    """The table as an in-memory AnnData copy, ready to be mapped.

    Parameters
    ----------
    sdata
        SpatialData object (or path of a SpatialData zarr store).
    table_name
        Table whose rows are the cells.
    coordinate_system
        If given, the cells' coordinates in it are stored in ``obsm[spatial_key]`` (for niches).
    spatial_key
        obsm key for the coordinates.

    Returns
    -------
    AnnData
        A copy: mapping results written into it do not touch ``sdata``.
    """
    sdata = _as_sdata(sdata)
    _checked_info(sdata, table_name)
    if coordinate_system:
        coords = cell_coordinates(sdata, table_name, coordinate_system)  # checks every row
    else:
        coords = None
        check_rows_match_cells(sdata, table_name)
    adata = sdata.tables[table_name].copy()
    if adata.is_view:  # pragma: no cover - copy() never returns a view, kept for safety
        adata = adata.copy()
    if coords is not None:
        adata.obsm[spatial_key] = coords
    return adata


# --------------------------------------------------------------------------------------------
# defaults for the command line and the widget


def is_imputed_table(table: AnnData) -> bool:
    """Whether ``table`` is the imputed expression an earlier run wrote beside a mapped table."""
    meta = table.uns.get("cellmapper")
    return isinstance(meta, Mapping) and meta.get("imputed_from_table") is not None


def resolve_table(sdata: Any, table_name: str | None = None) -> str:
    """``table_name`` if given (checked), else the only table that annotates cells.

    Tables holding an earlier run's imputed expression (``<table>_imputed``) are never picked,
    so a command that wrote one can be run again unchanged.
    """
    sdata = _as_sdata(sdata)
    if table_name is not None:
        _checked_info(sdata, table_name)
        return table_name
    candidates = [name for name in sdata.tables if not is_imputed_table(sdata.tables[name])]
    usable = [name for name in candidates if table_info(sdata, name).annotates_anything]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        reasons = []
        for name in candidates:
            try:
                _checked_info(sdata, name)
            except CellMapperInputError as err:
                reasons.append(str(err))
        if len(reasons) == 1:  # the one table, and why it cannot be used
            raise CellMapperInputError(reasons[0])
        why = f" Why: {' '.join(reasons)}" if reasons else ""
        raise CellMapperInputError(
            "This SpatialData has no table that annotates cells (shapes, labels or points); "
            f"add one with spatialdata.models.TableModel.{why}"
        )
    raise CellMapperInputError(
        f"This SpatialData has several tables ({', '.join(map(repr, usable))}); choose one (--table)."
    )


def default_coordinate_system(sdata: Any, table_name: str) -> str:
    """``"global"`` if the table's cells can be placed in it, else the first one they can."""
    info = table_info(_as_sdata(sdata), table_name)
    if not info.coordinate_systems:
        raise CellMapperInputError(f"The cells of table {table_name!r} are in no coordinate system.")
    return "global" if "global" in info.coordinate_systems else info.coordinate_systems[0]
