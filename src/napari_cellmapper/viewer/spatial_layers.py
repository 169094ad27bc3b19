"""SpatialData elements as napari layer data, placed in one coordinate system.

Images keep their pyramid (multiscale) and get their coordinate transformation as a napari
``affine``. Cells are read in table row order: points and circles become centres (+ diameters),
polygons become (y, x) vertex arrays, labels keep their raster and the transformation. Positions
of points, circles and polygons are transformed here, so their layers need no affine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from napari_cellmapper.viewer.transforms import affine_yx, apply_affine_yx, mean_scale, raster_affine_yx

LayerData = tuple[Any, dict[str, Any], str]

#: Key in ``layer.metadata`` saying what a layer is to the plugin.
ROLE = "cellmapper_role"


@dataclass(frozen=True)
class CellGeometry:
    """Where the cells of one table/region sit in one coordinate system, in table row order."""

    kind: str  # "points" | "circles" | "polygons" | "labels"
    element: str
    coordinate_system: str
    rows: np.ndarray  # row numbers of the table annotating ``element``
    instance_ids: np.ndarray  # instance id per row (label value for labels)
    coords_yx: np.ndarray  # (n, 2) centres in the coordinate system
    sizes: np.ndarray | None = None  # diameters (points/circles) in coordinate-system units
    polygons: list[np.ndarray] | None = None  # (m, 2) (y, x) vertices per cell
    affine: np.ndarray = field(default_factory=lambda: np.eye(3))  # element -> coordinate system
    #: polygons too many to draw (over ``POLYGON_LIMIT``): their vertices for some rows, on demand
    outlines: Callable[[np.ndarray], list[np.ndarray]] | None = None

    @cached_property
    def centre_tree(self) -> tuple[Any, np.ndarray]:
        """A KD-tree over the cells' (finite) centres and the cell index of each of its points,
        for the cell under a click; built once (0.1 s at 300k cells: a background reader builds
        it beside the geometry, so the first click does not)."""
        from scipy.spatial import cKDTree

        valid = np.isfinite(self.coords_yx).all(axis=1)
        return cKDTree(self.coords_yx[valid]), np.flatnonzero(valid)

    @cached_property
    def spacing(self) -> float:
        """Median distance from a cell to its nearest neighbour, about a cell's diameter in the
        tissue (sizes the rings of cells drawn without a size, e.g. labels), from ``centre_tree``
        and 2,000 cells; computed once (a background reader does it beside the geometry)."""
        tree, ids = self.centre_tree
        if len(ids) < 2:
            return 1.0
        picked = self.coords_yx[ids[np.linspace(0, len(ids) - 1, min(2000, len(ids))).astype(np.intp)]]
        distances, _ = tree.query(picked, k=2)
        nearest = distances[:, 1][distances[:, 1] > 0]
        return float(np.median(nearest)) if len(nearest) else box_spacing(self.coords_yx)

    @cached_property
    def _instance_index(self) -> tuple[np.ndarray, np.ndarray]:
        """The instance ids sorted, and the cell index of each (built once; a background reader
        builds it beside the geometry: a Python dict of 300k labels took 0.1-0.18 s of the
        interface thread when the cells were drawn)."""
        order = np.argsort(self.instance_ids, kind="stable")
        return np.asarray(self.instance_ids)[order], order

    def row_of_instance(self, instance_id: Any) -> int | None:
        """Index of the cell with this instance id (a label value for labels; shapes and points
        may have text ids), or None."""
        ids, order = self._instance_index
        try:
            at = int(np.searchsorted(ids, instance_id))
        except TypeError:  # an id of another kind (a number among text ids): no such cell
            return None
        return int(order[at]) if at < len(ids) and ids[at] == instance_id else None

    def display_obs(self, obs: pd.DataFrame) -> pd.DataFrame:
        """The hover features of these cells from their table's ``obs`` (``display_features`` of
        its rows, text columns made categorical, as the cells layer keeps them). Kept for this
        ``obs`` while its columns stay the same, so a background reader prepares them (0.4-0.5 s
        of the interface thread at 300k cells); a shallow copy each call."""
        key = tuple(map(str, obs.columns))
        kept = self.__dict__.get("_display_obs")  # (weak ref to obs, its columns, features)
        if kept is None or kept[0]() is not obs or kept[1] != key:
            from napari_cellmapper.viewer.points import prepare_features

            features = prepare_features(display_features(obs.iloc[self.rows]), len(self.rows))
            for column in features.columns:  # napari's features setter looks a category up:
                dtype = features[column].dtype  # its lookup table is built here, not there (0.1 s
                if isinstance(dtype, pd.CategoricalDtype) and len(dtype.categories):  # at 300k ids)
                    dtype.categories.get_indexer(dtype.categories[:1])
            kept = (weakref.ref(obs), key, features)
            self.__dict__["_display_obs"] = kept  # frozen dataclass: as functools.cached_property does
        return kept[2].copy(deep=False)

    @property
    def drawn_as(self) -> str:
        """The layer kind the cells are drawn with: polygons over ``POLYGON_LIMIT`` as points."""
        if self.kind == "labels":
            return "labels"
        if self.kind == "polygons" and self.polygons is not None:
            return "shapes"
        return "points"


def box_spacing(coords_yx: np.ndarray) -> float:
    """The side of a cell's share of the cells' bounding box: a cell's diameter when the cells
    fill it evenly (positions that are not finite are left out; 1 for fewer than 2 cells)."""
    valid = coords_yx[np.isfinite(coords_yx).all(axis=1)]
    if len(valid) < 2:
        return 1.0
    span = np.ptp(valid, axis=0)
    return float(np.sqrt(max(float(np.prod(np.maximum(span, 1e-9))), 1e-9) / len(valid)))


def table_attrs(table: Any) -> tuple[str | None, str | None, list[str]]:
    """``(region_key, instance_key, regions)`` of a SpatialData table (Nones when unannotated)."""
    attrs = table.uns.get("spatialdata_attrs", {}) or {}
    region = attrs.get("region", [])
    regions = [region] if isinstance(region, str) else list(region)
    return attrs.get("region_key"), attrs.get("instance_key"), regions


def element_kind(sdata: Any, element: str) -> str:
    """ "points", "circles", "polygons" or "labels" for a cell-bearing element (see
    :func:`napari_cellmapper.io.spatial.kind_of_element`)."""
    from napari_cellmapper.io.spatial import kind_of_element

    kind = kind_of_element(sdata, element)
    if kind not in ("points", "circles", "polygons", "labels"):
        raise KeyError(f"{element!r} is a {kind} element, not points, circles, polygons or labels")
    return kind


def coordinate_systems_of(sdata: Any, element: str) -> list[str]:
    """Coordinate systems an element of ``sdata`` can be drawn in."""
    from napari_cellmapper.viewer.transforms import coordinate_systems

    return coordinate_systems(sdata[element])


def table_rows(table: Any, element: str) -> np.ndarray:
    """Row numbers of ``table`` that annotate ``element`` (all rows when the table is unannotated)."""
    region_key, _, regions = table_attrs(table)
    if region_key is None or region_key not in table.obs or len(regions) <= 1:
        return np.arange(table.n_obs)
    return np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == element)


def _instance_ids(table: Any, rows: np.ndarray, column: str | None = None) -> np.ndarray:
    """The ids of the cells at ``rows`` in their element: the table's instance key, or
    ``column`` (an element the table does not annotate, :func:`link_column`)."""
    _, instance_key, _ = table_attrs(table)
    key = column or instance_key
    if key is not None and key in table.obs:
        return table.obs[key].to_numpy()[rows]
    return rows.copy()


#: values of a table's column looked up in an element's ids to tell whether they link (a sample)
LINK_SAMPLE = 2000


def link_column(sdata: Any, table_name: str, element: str) -> str | None:
    """The obs column of ``table_name`` that names the cells of ``element``: its instance key
    when the table annotates the element; for another shapes or labels element of the same
    cells (spatialdata-io's Xenium store: a table annotating ``cell_circles`` or ``cell_labels``,
    the same cells in ``cell_boundaries``, ``cell_circles``, ``nucleus_boundaries``,
    ``cell_labels``) when the table annotates that one element only: for shapes, the first
    column of ids (the instance key first) whose values are in the element's index (a sample of
    ``LINK_SAMPLE``, all of it found); for labels, an integer column named as the element. None
    when nothing links."""
    table = sdata.tables[table_name]
    _, instance_key, regions = table_attrs(table)
    if element in regions:
        return instance_key
    if len(regions) != 1 or element not in sdata:
        return None
    obs = table.obs
    if element in sdata.labels:
        column = obs.get(element)
        return element if column is not None and pd.api.types.is_integer_dtype(column.dtype) else None
    if element not in sdata.shapes or not len(obs):
        return None
    index = sdata.shapes[element].index
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(obs), size=min(LINK_SAMPLE, len(obs)), replace=False))
    candidates = [instance_key] if instance_key in obs else []
    candidates += [c for c in obs.columns if c != instance_key]
    columns = []
    for name in candidates:
        column = obs[name]
        if isinstance(column.dtype, pd.CategoricalDtype) and len(column.cat.categories) < 0.5 * len(column):
            continue  # a grouping, not ids
        if pd.api.types.is_float_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
            continue
        columns.append((str(name), column))
    if len(index) == len(obs):  # the same cells in the same order (spatialdata-io's Xenium)
        ids = np.asarray(index[sample], dtype=object)
        for name, column in columns:
            if (ids == np.asarray(column.iloc[sample], dtype=object)).all():
                return name
    integer_index = pd.api.types.is_integer_dtype(index.dtype)
    for name, column in columns:  # the same cells in another order
        if pd.api.types.is_integer_dtype(column.dtype) != integer_index:
            continue
        try:  # the index' hash table is built once and kept (drawing the element uses it too)
            if (index.get_indexer_for(column.iloc[sample]) >= 0).all():
                return name
        except (TypeError, ValueError):  # values that do not compare with the index
            continue
    return None


def cell_elements(sdata: Any, table_name: str) -> list[str]:
    """Elements the cells of ``table_name`` can be drawn as: those it annotates, then the other
    shapes and labels elements of the same cells (:func:`link_column`)."""
    _, _, regions = table_attrs(sdata.tables[table_name])
    annotated = [r for r in regions if r in sdata]
    if len(regions) != 1:
        return annotated
    others = [name for name in [*sdata.shapes, *sdata.labels] if name not in annotated]
    return annotated + [name for name in others if link_column(sdata, table_name, name) is not None]


def _is_pyramid(element: Any) -> bool:
    """True for a multiscale (DataTree) raster element."""
    import xarray as xr

    return isinstance(element, xr.DataTree)


def _label_centroids(labels: Any, ids: np.ndarray) -> np.ndarray:
    """(y, x) centres of the given label values in element pixel coordinates (NaN if absent).

    Built on :func:`napari_cellmapper.io.spatial.label_centroids` (full resolution, block by
    block), in SpatialData's convention (pixel ``i`` centred at ``i + 0.5``); the rasters are drawn
    in it too (:func:`~napari_cellmapper.viewer.transforms.raster_affine_yx`).
    """
    from napari_cellmapper.io.spatial import label_centroids

    centres = label_centroids(labels).reindex(np.asarray(ids, dtype=np.int64))
    return centres[["y", "x"]].to_numpy(dtype=float)


#: above this many polygons the cells are drawn as circles of their polygon's area, and outlines
#: only for the cells in view once few enough are (``scene``): napari's Shapes layer took 106 s to
#: open 300k polygons, 8-11 s to recolour them and 7.8 GB, against 8 s, 0.3 s and 2.7 GB as points
POLYGON_LIMIT = 50_000


def _polygon_yx(geom: Any) -> np.ndarray:
    if geom.geom_type == "MultiPolygon":
        geom = max(geom.geoms, key=lambda g: g.area)
    xy = np.asarray(geom.exterior.coords)[:-1, :2]
    return xy[:, ::-1]


def cell_geometry(sdata: Any, table_name: str, element: str, coordinate_system: str) -> CellGeometry:
    """Geometry of the cells of ``table_name`` that live in ``element``, in table row order; an
    element the table does not annotate through the column that names its cells
    (:func:`link_column`)."""
    table = sdata.tables[table_name]
    kind = element_kind(sdata, element)
    _, _, regions = table_attrs(table)
    column = None
    if element not in regions:  # another element of the same cells
        column = link_column(sdata, table_name, element)
        if column is None:
            raise ValueError(
                f"Table {table_name!r} does not annotate {element!r}, and none of its columns names "
                f"that element's cells: draw one of {', '.join(map(repr, regions))}."
            )
    rows = table_rows(table, element) if column is None else np.arange(table.n_obs)
    ids = _instance_ids(table, rows, column)
    elem = sdata[element]
    affine = affine_yx(elem, coordinate_system)
    if kind == "labels":
        centres = apply_affine_yx(affine, _label_centroids(elem, ids))
        return CellGeometry(kind, element, coordinate_system, rows, ids, centres, affine=affine)
    if kind == "points":
        frame = elem.compute() if hasattr(elem, "compute") else elem
        frame = frame.loc[ids] if len(frame) != len(ids) or not np.array_equal(frame.index, ids) else frame
        yx = apply_affine_yx(affine, frame[["y", "x"]].to_numpy(float))
        return CellGeometry(kind, element, coordinate_system, rows, ids, yx, affine=affine)
    frame = elem
    if len(frame) != len(ids) or not np.array_equal(frame.index.to_numpy(), ids):
        frame = frame.loc[ids]
    if kind == "circles":
        yx = np.column_stack([frame.geometry.y.to_numpy(), frame.geometry.x.to_numpy()])
        sizes = 2.0 * frame["radius"].to_numpy(float) * mean_scale(affine)
        return CellGeometry(
            kind, element, coordinate_system, rows, ids, apply_affine_yx(affine, yx), sizes, affine=affine
        )
    geoms = frame.geometry
    centroids = geoms.centroid
    yx = apply_affine_yx(affine, np.column_stack([centroids.y.to_numpy(), centroids.x.to_numpy()]))
    sizes = 2.0 * np.sqrt(geoms.area.to_numpy(float) / np.pi) * mean_scale(affine)  # same-area circle

    def outlines(which: np.ndarray) -> list[np.ndarray]:
        return [apply_affine_yx(affine, _polygon_yx(g)) for g in geoms.to_numpy()[np.asarray(which, np.intp)]]

    polygons = outlines(np.arange(len(ids))) if len(ids) <= POLYGON_LIMIT else None
    return CellGeometry(
        kind,
        element,
        coordinate_system,
        rows,
        ids,
        yx,
        sizes,
        polygons=polygons,
        affine=affine,
        outlines=outlines,
    )


def _image_levels(image: Any) -> tuple[list[Any], tuple[str, ...]]:
    """Arrays of an image, largest first, and its dims."""
    if _is_pyramid(image):
        levels = [next(iter(image[name].data_vars.values())) for name in sorted(image.children)]
        return [lvl.data for lvl in levels], tuple(levels[0].dims)
    return [image.data], tuple(image.dims)


def image_layer_data(sdata: Any, name: str, coordinate_system: str) -> LayerData:
    """An image element as napari layer data: pyramid, channels and affine to the coordinate system."""
    image = sdata.images[name]
    levels, dims = _image_levels(image)
    affine = raster_affine_yx(affine_yx(image, coordinate_system))
    meta: dict[str, Any] = {
        "name": name,
        "affine": affine,
        "metadata": {ROLE: "image", "sdata": sdata, "element": name, "coordinate_system": coordinate_system},
    }
    if "c" in dims:
        n_channels = levels[0].shape[dims.index("c")]
        c_axis = dims.index("c")
        if n_channels == 1:
            levels = [lvl.take(0, axis=c_axis) if hasattr(lvl, "take") else lvl[0] for lvl in levels]
        elif n_channels in (3, 4) and np.dtype(levels[0].dtype) == np.uint8:
            levels = [np.moveaxis(lvl, c_axis, -1) for lvl in levels]
            meta["rgb"] = True
        else:
            meta["channel_axis"] = c_axis
            try:
                channels = [str(c) for c in image.coords["c"].values]
            except (KeyError, AttributeError, TypeError):
                channels = [str(i) for i in range(n_channels)]
            meta["name"] = [f"{name} [{c}]" for c in channels]
            meta["blending"] = "additive"
            meta["colormap"] = _channel_colormaps(n_channels)
            meta["metadata"] = [dict(meta["metadata"], channel=c) for c in channels]
    meta["multiscale"] = len(levels) > 1
    data = levels if len(levels) > 1 else levels[0]
    return data, meta, "image"


def _channel_colormaps(n: int) -> list[str]:
    base = ["red", "green", "blue", "magenta", "cyan", "yellow", "gray"]
    return [base[i % len(base)] for i in range(n)]


def image_names(sdata: Any, coordinate_system: str) -> list[str]:
    """Images of ``sdata`` registered in ``coordinate_system``."""
    from napari_cellmapper.viewer.transforms import coordinate_systems

    return [name for name, img in sdata.images.items() if coordinate_system in coordinate_systems(img)]


def labels_layer_data(sdata: Any, geometry: CellGeometry, features: pd.DataFrame, name: str) -> LayerData:
    """Segmentation labels with one feature row per cell (``index`` = label value)."""
    levels, _ = _image_levels(sdata.labels[geometry.element])
    feats = features.reset_index(drop=True).copy()
    feats.insert(0, "index", np.asarray(geometry.instance_ids, dtype=np.int64))
    meta = {
        "name": name,
        "affine": raster_affine_yx(geometry.affine),
        "features": feats,
        "multiscale": len(levels) > 1,
        "opacity": 0.7,
    }
    return (levels if len(levels) > 1 else levels[0]), meta, "labels"


def shapes_layer_data(geometry: CellGeometry, features: pd.DataFrame, name: str) -> LayerData:
    """Cell polygons as a Shapes layer, one shape per table row."""
    meta = {
        "name": name,
        "shape_type": "polygon",
        "features": features.reset_index(drop=True),
        "edge_width": 0,
        "face_color": "#d0d0d0",
        "opacity": 0.85,
    }
    return list(geometry.polygons or []), meta, "shapes"


def points_layer_data(geometry: CellGeometry, features: pd.DataFrame, name: str) -> LayerData:
    """Cell centres as a Points layer (circles keep their diameter as size)."""
    size = geometry.sizes if geometry.sizes is not None else _default_point_size(geometry.coords_yx)
    meta = {
        "name": name,
        "features": features.reset_index(drop=True),
        "size": size,
        "face_color": "#d0d0d0",
        "border_width": 0,
        "opacity": 0.9,
    }
    return geometry.coords_yx, meta, "points"


def _default_point_size(coords_yx: np.ndarray) -> float:
    """A point size about the typical spacing between cells."""
    if len(coords_yx) < 2:
        return 5.0
    span = np.nanmax(coords_yx, axis=0) - np.nanmin(coords_yx, axis=0)
    area = float(np.prod(np.maximum(span, 1e-9)))
    return float(max(np.sqrt(area / len(coords_yx)) * 0.8, 1e-6))


def cells_layer_data(sdata: Any, geometry: CellGeometry, features: pd.DataFrame, name: str) -> LayerData:
    """The right layer kind for the cells of ``geometry``."""
    if geometry.kind == "labels":
        return labels_layer_data(sdata, geometry, features, name)
    if geometry.drawn_as == "shapes":
        return shapes_layer_data(geometry, features, name)
    return points_layer_data(geometry, features, name)


def display_features(obs: pd.DataFrame, max_columns: int = 40) -> pd.DataFrame:
    """obs columns worth hovering: drops the SpatialData bookkeeping, keeps at most ``max_columns``."""
    frame = obs.reset_index(drop=True)
    keep = [
        c
        for c in frame.columns
        if frame[c].dtype.kind in "biufcOSUb" or isinstance(frame[c].dtype, pd.CategoricalDtype)
    ]
    return frame[keep[:max_columns]].copy()
