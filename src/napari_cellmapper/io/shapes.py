"""Shapes elements of a SpatialData store, read in steps that leave the interpreter to others.

spatialdata reads a shapes element (GeoParquet, WKB geometries) with geopandas, whose decoding
of the geometry column (``shapely.from_wkb``) holds Python's interpreter lock for the whole
column: 0.4-0.9 s for 300k cell polygons of a Xenium store, during which a background reader
freezes napari's interface (it cannot run a line of Python). :func:`read_shapes` builds the same
GeoDataFrame (index, columns, attributes, transformations) from the same file, decoding
``STEP`` geometries at a time: the lock changes hands between steps (at 300k polygons the longest
hold is 12-17 ms instead of 0.4-0.6 s; Python's full garbage collections aside: shapely's
geometries are tracked objects, and a collection holds the lock 0.1-0.3 s in napari's process).
Elements stored otherwise (the ragged format 0.1, a geometry encoding other than WKB) are not
read here: :func:`read_spatialdata` then reads the store with spatialdata alone.

While a store is read, Python's cyclic garbage collector is paused (:func:`collector_paused`):
the geometries it creates would otherwise set off a full collection each time the tracked
objects grow by a quarter, every one of them scanning the whole heap with the lock held (three
or more per 300k-cell store, 0.1-0.36 s each in napari's process). What a read creates lives as
long as the store, so those collections found next to nothing; one collection afterwards (the
reading worker's, or Python's next) finds whatever they would have.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: geometries decoded per step (about 6-9 ms of 8-16-vertex polygons on this project's machine)
STEP = 5_000
#: spatialdata shapes formats stored as GeoParquet (``spatialdata._io.format.ShapesFormatV02/3``)
PARQUET_FORMATS = ("0.2", "0.3")
GROUPS = ("images", "labels", "points", "shapes", "tables")


def read_shapes(path: str | os.PathLike[str]) -> Any:
    """The shapes element stored in the group ``path`` (``<store>/shapes/<name>``) as a
    GeoDataFrame equal to spatialdata's, or None when it is not WKB GeoParquet of a known format."""
    import geopandas as gpd
    import pyarrow.parquet as pq
    import shapely
    import zarr

    group = Path(path)
    parquet = group / "shapes.parquet"
    if not parquet.is_file():
        return None
    attrs = zarr.open_group(group, mode="r").attrs.asdict()
    if str((attrs.get("spatialdata_attrs") or {}).get("version")) not in PARQUET_FORMATS:
        return None
    try:
        from spatialdata._io._utils import _get_transformations_from_ngff_dict
        from spatialdata.transformations import set_transformation
    except ImportError:  # spatialdata changed: its own reader then
        return None
    table = pq.read_table(parquet)  # the lock is released while pyarrow reads
    metadata = table.schema.metadata or {}
    if b"geo" not in metadata:
        return None
    geo = json.loads(metadata[b"geo"])
    name = geo.get("primary_column", "geometry")
    info = (geo.get("columns") or {}).get(name) or {}
    if str(info.get("encoding", "")).upper() != "WKB" or len(geo.get("columns") or {}) != 1:
        return None
    column = table.column(name)
    geometries = np.empty(len(table), dtype=object)
    for start in range(0, len(table), STEP):
        wkb = column.slice(start, STEP).to_numpy(zero_copy_only=False)
        geometries[start : start + len(wkb)] = shapely.from_wkb(wkb)
        time.sleep(0)  # hand the lock over between steps
    frame = table.drop_columns([name]).to_pandas()  # the pandas metadata restores the index
    crs = info["crs"] if "crs" in info else "OGC:CRS84"  # GeoParquet: no key means CRS84
    series = gpd.GeoSeries(gpd.array.GeometryArray(geometries, crs=crs), index=frame.index, name=name)
    frame.insert(table.column_names.index(name), name, series)
    shapes = gpd.GeoDataFrame(frame, geometry=name, crs=crs)
    if b"PANDAS_ATTRS" in metadata:
        shapes.attrs = json.loads(metadata[b"PANDAS_ATTRS"])
    transformations = _get_transformations_from_ngff_dict(attrs["coordinateTransformations"])
    set_transformation(shapes, transformations, set_all=True)
    return shapes


_PAUSE_LOCK = threading.Lock()
_paused = {"depth": 0, "was_enabled": False}


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside (``gc.disable``), and enabled again at
    the end if it was enabled at the start; nested or concurrent uses resume it once, when the
    last one ends."""
    with _PAUSE_LOCK:
        if _paused["depth"] == 0:
            _paused["was_enabled"] = gc.isenabled()
            gc.disable()
        _paused["depth"] += 1
    try:
        yield
    finally:
        with _PAUSE_LOCK:
            _paused["depth"] -= 1
            if _paused["depth"] == 0 and _paused["was_enabled"]:
                gc.enable()


def read_spatialdata(path: str | os.PathLike[str], selection: tuple[str, ...] | None = None) -> Any:
    """``spatialdata.read_zarr(path, selection=selection)``, with the shapes elements read by
    :func:`read_shapes` (all of them, or spatialdata reads the whole store); the garbage
    collector paused meanwhile (:func:`collector_paused`)."""
    with collector_paused():
        return _read_spatialdata(path, selection)


def _read_spatialdata(path: str | os.PathLike[str], selection: tuple[str, ...] | None) -> Any:
    import warnings

    import spatialdata

    wanted = tuple(GROUPS if selection is None else selection)
    others = tuple(g for g in wanted if g != "shapes")
    root = Path(path) / "shapes"
    found = root.iterdir() if root.is_dir() else ()
    names = sorted(p.name for p in found if p.is_dir() and not p.name.startswith("."))
    if "shapes" not in wanted or not others or not names:
        return spatialdata.read_zarr(path, selection=selection)
    shapes = {}
    for name in names:
        element = read_shapes(root / name)
        if element is None:
            return spatialdata.read_zarr(path, selection=selection)
        shapes[name] = element
    with warnings.catch_warnings():  # its tables annotate the shapes not read yet
        warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
        rest = spatialdata.read_zarr(path, selection=others)
    sdata = spatialdata.SpatialData(
        images=dict(rest.images),
        labels=dict(rest.labels),
        points=dict(rest.points),
        shapes=shapes,
        tables=dict(rest.tables),
        attrs=rest.attrs,
    )
    sdata.path = rest.path
    return sdata
