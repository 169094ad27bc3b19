"""The plugin's layers in one viewer: tissue, cells, reference embedding, highlights, region.

:class:`CellMapperScene` adds layers once and afterwards only updates them in place (features,
colours), so switching what colours the cells never re-adds a layer. Layers opened by the
plugin's reader or sample data (``layer.metadata["cellmapper_role"]``) are reused.
Main thread only; no Qt widgets here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from napari_cellmapper.viewer.colors import (
    ColorInfo,
    color_info,
    is_identifier,
    palette_for,
    rgba_for,
    visible_on_dark,
)
from napari_cellmapper.viewer.points import (
    LARGE_LAYER,
    UNIFORM_COLOR,
    draw_as_gl_points,
    refresh_overview,
    replace_points,
)
from napari_cellmapper.viewer.spatial_layers import (
    ROLE,
    CellGeometry,
    box_spacing,
    cell_geometry,
    cells_layer_data,
    display_features,
    image_layer_data,
    image_names,
)
from napari_cellmapper.viewer.transforms import camera_zoom, viewer_camera

CELLS = "cellmapper cells"
REFERENCE = "cellmapper reference"
NEIGHBOURS = "cellmapper reference neighbours"
SELECTED = "cellmapper selected cell"
LINKED = "cellmapper linked cells"
REGION = "cellmapper region"
OUTLINES = "cellmapper cell outlines"
#: polygons drawn as circles (too many: ``spatial_layers.POLYGON_LIMIT``) are drawn as themselves
#: (filled in the cells' colours, outlined) once at most this many cells are in view (napari takes
#: about 0.15 ms a polygon to take them: 1,000 cost the interface 0.17 s, 3,000 0.47 s)
OUTLINE_LIMIT = 1_000
#: ms after the camera stops before the outlines in view are redrawn
OUTLINE_DELAY_MS = 250
#: queries of this many cells or more are drawn over several event-loop turns (``show_query``)
STAGE_FROM = LARGE_LAYER
#: ms between two of those turns: the interface (input, timers, a frame) answers in between
STAGE_MS = 10
#: metadata flag of a cells layer added hidden, to be shown by a later step
_HIDDEN_UNTIL_DRAWN = "cellmapper_hidden_until_drawn"


def reference_embedding(adata: Any, basis: str | None = None) -> tuple[str, np.ndarray] | None:
    """(basis, (n, 2) y/x positions) of a 2-D reference embedding, UMAP preferred; y flipped up."""
    keys = [basis] if basis else []
    keys += [k for k in ("X_umap", "X_tsne", "X_draw_graph_fa", "X_spatial", "spatial") if k in adata.obsm]
    keys += [k for k in adata.obsm.keys() if k not in keys]
    for key in keys:
        if key in adata.obsm:
            values = np.asarray(adata.obsm[key])
            if values.ndim == 2 and values.shape[1] >= 2 and np.issubdtype(values.dtype, np.number):
                xy = values[:, :2].astype(float)
                return key, np.column_stack([-xy[:, 1], xy[:, 0]])
    return None


def reference_layer_data(
    adata: Any, name: str = REFERENCE, color_by: str | None = None, basis: str | None = None
) -> tuple[Any, dict[str, Any], str] | None:
    """The reference as napari points on its 2-D embedding, obs as features (reader/scene)."""
    found = reference_embedding(adata, basis)
    if found is None:
        return None
    key, yx = found
    features = display_features(adata.obs)
    span = float(np.ptp(yx[:, 0]) or 1.0)
    meta: dict[str, Any] = {
        "name": name,
        "features": features,
        "size": span / 120.0,
        "border_width": 0,
        "metadata": {ROLE: "reference", "adata": adata, "basis": key},
    }
    color_by = color_by or default_color_key(adata.obs)
    if color_by is not None:
        meta["face_color"] = rgba_for(adata.obs[color_by], _colors(adata, color_by, adata.obs[color_by]))
    return yx, meta, "points"


def default_color_key(obs: pd.DataFrame) -> str | None:
    """The first categorical obs column with a few categories (cell type first)."""
    preferred = [c for c in obs.columns if "type" in c.lower() or "label" in c.lower()]
    for column in preferred + list(obs.columns):
        series = obs[column]
        if isinstance(series.dtype, pd.CategoricalDtype) and 1 < len(series.cat.categories) <= 200:
            return str(column)
    return None


def _colors(adata: Any, key: str, values: pd.Series) -> list[str] | None:
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return None
    return palette_for([str(c) for c in values.cat.categories], adata.uns, key)


class CellMapperScene:
    """Owns the plugin's layers in ``viewer`` and updates them in place."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.geometry: CellGeometry | None = None
        self.sdata: Any = None
        self.table_name: str | None = None
        self.reference: Any = None
        self.cells_layer: Any = None
        self.reference_layer: Any = None
        self.image_layers: list[Any] = []
        self._ring: float | None = None  # diameter of a linked cell's ring, computed once too
        self.color: ColorInfo | None = None
        self._outline_timer: Any = None
        self._steps: list[Callable[[], object]] = []  # drawing steps left for later turns
        self._step_timer: Any = None

    # ------------------------------------------------------------------ query
    @property
    def table(self) -> Any:
        return None if self.sdata is None or self.table_name is None else self.sdata.tables[self.table_name]

    def _find(self, role: str, **match: Any) -> list[Any]:
        found = []
        for layer in self.viewer.layers:
            meta = layer.metadata
            if meta.get(ROLE) != role:
                continue
            if all(meta.get(k) is v or meta.get(k) == v for k, v in match.items() if not _is_data(v)) and all(
                meta.get(k) is v for k, v in match.items() if _is_data(v)
            ):
                found.append(layer)
        return found

    def show_query(
        self,
        sdata: Any,
        table_name: str,
        element: str,
        coordinate_system: str,
        *,
        path: str | None = None,
        images: bool = True,
        geometry: CellGeometry | None = None,
        staged: bool | None = None,
    ) -> Any:
        """Draw the tissue images and the cells of ``element`` (reusing matching layers);
        ``geometry``: the cells' geometry if already computed (e.g. by a background reader).

        ``staged`` (default: for ``STAGE_FROM`` cells or more) adds the cells layer now, hidden,
        and does the rest in later event-loop turns, one step each: the images added (a larger
        extent makes napari re-slice every visible layer), the cells shown, the empty
        selected-cell ring layer made. napari takes 0.1-0.4 s of the interface
        thread for each of them at 300k cells; the interface answers in between. ``drawing``
        says whether steps are left, ``finish_drawing`` runs them at once; the steps of an
        earlier call that are still left are dropped."""
        if geometry is None:
            geometry = cell_geometry(sdata, table_name, element, coordinate_system)
        staged = len(geometry.rows) >= STAGE_FROM if staged is None else bool(staged)
        self._steps.clear()
        self.sdata, self.table_name, self.geometry = sdata, table_name, geometry
        self._ring = None
        meta = {
            ROLE: "cells",
            "sdata": sdata,
            "table": table_name,
            "element": element,
            "coordinate_system": coordinate_system,
            "path": path,
        }
        self.highlight_cell(None)  # rings of the previous cells would be stale
        self._remove(NEIGHBOURS)
        if self.cells_layer is not None and self.cells_layer in self.viewer.layers:
            self.viewer.layers.remove(self.cells_layer)
        reuse = [
            layer
            for layer in self._find(
                "cells", sdata=sdata, table=table_name, element=element, coordinate_system=coordinate_system
            )
        ]
        if images and not staged:
            self._show_images(sdata, coordinate_system)
        if reuse and self._layer_fits(reuse[0], geometry):
            self.cells_layer = reuse[0]
            self.cells_layer.metadata.update(meta)
            if self.cells_layer.metadata.pop(_HIDDEN_UNTIL_DRAWN, False):  # its step was dropped
                self.cells_layer.visible = True
        else:
            for layer in reuse:
                self.viewer.layers.remove(layer)
            features = geometry.display_obs(self.table.obs)
            data, kwargs, kind = cells_layer_data(sdata, geometry, features, CELLS)
            kwargs["metadata"] = meta
            if staged:
                kwargs["visible"] = False
                meta[_HIDDEN_UNTIL_DRAWN] = True
            self.cells_layer = self._add_cells(data, kwargs, kind)
        if images and staged:  # while the cells are hidden: napari re-slices no hidden layer
            self._later(lambda: self._show_images(sdata, coordinate_system, then_place=True))
        if staged:
            self._later(self._show_cells)
        ring = self._layer(SELECTED)
        if ring is None:  # made ahead, empty: the first click then only fills it
            if staged:
                self._later(self._make_ring)
            else:
                self._make_ring()
        elif (layers := self.viewer.layers).index(ring) < layers.index(self.cells_layer):
            layers.move(layers.index(ring), layers.index(self.cells_layer) + 1)  # above new cells
        self._watch_outlines()
        return self.cells_layer

    # ---------------------------------------------------------- staged drawing
    @property
    def drawing(self) -> bool:
        """Whether steps of the last ``show_query`` are left for later event-loop turns."""
        return bool(self._steps)

    def finish_drawing(self) -> None:
        """Run the drawing steps left by ``show_query`` now."""
        while self._steps:
            self._steps.pop(0)()

    def stop_drawing(self) -> None:
        """Drop the drawing steps left (the viewer or the widget closes)."""
        self._steps.clear()
        if self._step_timer is not None:
            self._step_timer.stop()

    def _later(self, step: Callable[[], object]) -> None:
        """Run ``step`` in a later event-loop turn of its own (after the steps already left)."""
        self._steps.append(step)
        if self._step_timer is None:
            from qtpy.QtCore import QTimer

            self._step_timer = QTimer()
            self._step_timer.setSingleShot(True)
            self._step_timer.setInterval(STAGE_MS)
            self._step_timer.timeout.connect(self._next_step)
        if not self._step_timer.isActive():
            self._step_timer.start()

    def _next_step(self) -> None:
        if not self._steps:
            return
        step = self._steps.pop(0)
        try:
            step()
        finally:
            if self._steps:
                self._step_timer.start()

    def _show_cells(self) -> None:
        layer = self.cells_layer
        shown = layer is not None and layer in self.viewer.layers
        if shown and layer.metadata.pop(_HIDDEN_UNTIL_DRAWN, False):
            layer.visible = True
            self._camera_moved()  # polygons drawn as points: their outlines in view follow

    def _make_ring(self) -> None:
        if self._layer(SELECTED) is None:
            self._upsert_points(SELECTED, np.empty((0, 2)), size=1.0, role="selected", scale=None)

    # ------------------------------------------------------------ outlines in view
    def _watch_outlines(self) -> None:
        """Polygons drawn as circles get their outlines when few enough cells are in view: redrawn
        a moment after the camera stops (one timer, connected once)."""
        self._remove(OUTLINES)
        if not self._polygons_as_points():
            return
        if self._outline_timer is None:
            from qtpy.QtCore import QTimer

            self._outline_timer = QTimer()
            self._outline_timer.setSingleShot(True)
            self._outline_timer.setInterval(OUTLINE_DELAY_MS)
            self._outline_timer.timeout.connect(self.update_outlines)
            camera = viewer_camera(self.viewer)
            camera.events.center.connect(self._camera_moved)
            camera.events.zoom.connect(self._camera_moved)
        self._outline_timer.start()

    def _polygons_as_points(self) -> bool:
        """Whether the cells are polygons drawn as points (too many), with their outlines at hand."""
        geometry = self.geometry
        return geometry is not None and geometry.outlines is not None and geometry.drawn_as == "points"

    def _camera_moved(self, event: Any = None) -> None:
        if self._outline_timer is not None:
            self._outline_timer.start()  # restarts: the outlines follow once the camera stops

    def cells_in_view(self, margin: float = 0.0) -> np.ndarray:
        """Indices (into the cells layer) of the cells whose centre is in the canvas' view, grown
        by ``margin`` world units on every side."""
        if self.geometry is None or self.cells_layer is None:
            return np.zeros(0, np.intp)
        corners = np.asarray(self.cells_layer.corner_pixels, dtype=float)[:, -2:]
        low, high = corners.min(axis=0) - margin, corners.max(axis=0) + margin
        yx = self.geometry.coords_yx
        inside = np.all((yx >= low) & (yx <= high), axis=1)
        return np.flatnonzero(inside)

    def _cell_rgba(self, which: np.ndarray) -> np.ndarray:
        """The colours the cells layer shows for these cells, (n, 4)."""
        colors = np.asarray(self.cells_layer.face_color, dtype=np.float32)
        if colors.ndim != 2 or len(colors) != len(self.geometry.coords_yx):
            return np.tile(np.float32([0.82, 0.82, 0.82, 1.0]), (len(which), 1))
        return colors[which]

    def _recolor_outlines(self) -> None:
        """The drawn polygons take the cells' new colours (after a recolour)."""
        layer = self._layer(OUTLINES)
        if layer is not None and self.cells_layer is not None and layer.nshapes:
            layer.face_color = self._cell_rgba(np.asarray(layer.metadata["cells"]))

    def update_outlines(self) -> int | None:
        """Draw the outlines of the cells in view when their polygons are not drawn (too many) and
        at most ``OUTLINE_LIMIT`` are in view; remove them otherwise. Returns how many are drawn."""
        geometry, cells = self.geometry, self.cells_layer
        if not self._polygons_as_points():
            self._remove(OUTLINES)
            return None
        if cells is None or cells not in self.viewer.layers or not cells.visible:
            self._remove(OUTLINES)
            return 0
        size = float(np.nanmax(geometry.sizes)) if geometry.sizes is not None and len(geometry.sizes) else 0.0
        # cells a little outside count too: their GL point vanishes once its centre leaves the canvas
        shown = self.cells_in_view(margin=size)
        if not 0 < len(shown) <= OUTLINE_LIMIT:
            self._remove(OUTLINES)
            return 0
        polygons = geometry.outlines(shown)
        width = float(np.nanmedian(geometry.sizes)) * 0.06 if geometry.sizes is not None else 1.0
        layer = self._layer(OUTLINES)
        if layer is not None:  # updated in place: making a layer costs ~0.45 s of the interface
            layer.data = polygons  # all polygons, as before
            layer.edge_width = width
            layer.face_color = self._cell_rgba(shown)
            layer.metadata["cells"] = shown
            return len(polygons)
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_shapes(
            polygons,
            shape_type="polygon",
            name=OUTLINES,
            edge_color="#ffffff",
            face_color=self._cell_rgba(shown),
            edge_width=width,
            opacity=cells.opacity,
            metadata={ROLE: "outlines", "cells": shown},
        )
        layer.editable = False
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return len(polygons)

    @staticmethod
    def _layer_fits(layer: Any, geometry: CellGeometry) -> bool:
        if geometry.kind == "labels":  # a layer of colour codes for these cells (not a raw one)
            codes = getattr(layer, "cell_codes", None)
            return codes is not None and np.array_equal(codes.ids, np.asarray(geometry.instance_ids))
        return layer_kind(layer) == geometry.drawn_as and len(layer.data) == len(geometry.rows)

    def _add_cells(self, data: Any, kwargs: dict[str, Any], kind: str) -> Any:
        if kind == "points":
            try:
                from napari_cellmapper.viewer import points as fast_points
            except ImportError:
                fast_points = None
            if fast_points is not None:
                sizes = np.atleast_1d(np.asarray(kwargs["size"], dtype=float))
                return fast_points.add_cell_points(
                    self.viewer,
                    data,
                    kwargs["features"],
                    None,
                    size=sizes if sizes.size == len(data) else float(np.nanmedian(sizes)),
                    name=kwargs["name"],
                    metadata=kwargs["metadata"],
                    opacity=kwargs.get("opacity", 1.0),
                    visible=kwargs.get("visible", True),
                )
        if kind == "labels":  # coloured through a table of colour codes (viewer.label_codes)
            from matplotlib.colors import to_rgba

            from napari_cellmapper.viewer.label_codes import LabelCodes, codes_colormap, make_cell_labels

            levels = data if isinstance(data, list) else [data]
            codes = LabelCodes(levels, kwargs["features"]["index"].to_numpy())
            codes.set_codes(np.ones(len(codes.ids), dtype=np.uint8))  # one colour until coloured
            uniform = codes_colormap(np.array([to_rgba(UNIFORM_COLOR)]))
            layer = make_cell_labels(codes, colormap=uniform, **kwargs)
        else:
            from napari.layers import Layer

            layer = Layer.create(data, kwargs, kind)
        self.viewer.add_layer(layer)
        if kind == "labels":  # a segmentation shown for its cells, not to be painted by a drag
            layer.mode = "pan_zoom"
            layer.editable = False
        return layer

    def _show_images(self, sdata: Any, coordinate_system: str, then_place: bool = False) -> None:
        """Images of ``sdata`` in ``coordinate_system``; other samples' or systems' images go.

        Images this scene added are removed; those opened by the reader are hidden (and shown
        again when their sample and coordinate system come back). ``then_place``: the reference
        is placed again beside the tissue with its images (a staged step, after the placing).
        """
        existing = set()
        for layer in self._find("image"):
            meta = layer.metadata
            if meta.get("sdata") is sdata and meta.get("coordinate_system") == coordinate_system:
                existing.add((meta.get("element"), coordinate_system))
                if meta.pop("cellmapper_hidden", False):
                    layer.visible = True
            elif layer in self.image_layers:
                self.image_layers.remove(layer)
                self.viewer.layers.remove(layer)
            elif layer.visible:
                meta["cellmapper_hidden"] = True
                layer.visible = False
        self.image_layers = [layer for layer in self.image_layers if layer in self.viewer.layers]
        for name in image_names(sdata, coordinate_system):
            if (name, coordinate_system) in existing:
                continue
            data, kwargs, kind = image_layer_data(sdata, name, coordinate_system)
            added = self.viewer.add_image(data, **kwargs)
            added = added if isinstance(added, list) else [added]
            self.image_layers += added
            for layer in added:  # images go below the cells
                index = self.viewer.layers.index(layer)
                if index > 0:
                    self.viewer.layers.move(index, 0)
        if then_place:
            self.place_reference()

    # -------------------------------------------------------------- reference
    def tissue_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) y/x of the cells and the visible images of the query (or (0, 0)-(1, 1)
        with no query): the reference is placed beside all of it, never over an image."""
        if self.geometry is None or not len(self.geometry.coords_yx):
            return np.zeros(2), np.ones(2)
        yx = self.geometry.coords_yx
        lo, hi = np.nanmin(yx, axis=0), np.nanmax(yx, axis=0)
        for layer in self._find("image", sdata=self.sdata):
            if layer.visible and layer.metadata.get("coordinate_system") == self.geometry.coordinate_system:
                extent = np.asarray(layer.extent.world, dtype=float)[:, -2:]
                lo, hi = np.minimum(lo, extent[0]), np.maximum(hi, extent[1])
        return lo, hi

    def show_reference(self, adata: Any, color_by: str | None = None) -> Any:
        """The reference on its 2-D embedding, placed right of the tissue at the tissue's height."""
        self.reference = adata
        layer = None
        for candidate in self._find("reference"):
            if candidate.metadata.get("adata") is adata:
                layer = candidate
        if layer is None:
            if self.reference_layer is not None and self.reference_layer in self.viewer.layers:
                self.viewer.layers.remove(self.reference_layer)
            data = reference_layer_data(adata, REFERENCE, color_by)
            if data is None:
                self.reference_layer = None
                return None
            yx, kwargs, _ = data
            from napari_cellmapper.viewer.points import add_cell_points

            key = color_by or default_color_key(adata.obs)
            colors = {key: _colors(adata, key, adata.obs[key])} if key is not None else None
            layer = add_cell_points(
                self.viewer,
                yx,
                kwargs["features"],
                key,
                colors=colors,
                size=kwargs["size"],
                name=kwargs["name"],
                metadata=kwargs["metadata"],
            )
        self.reference_layer = layer
        self.place_reference()
        return layer

    def place_reference(self) -> None:
        """Scale and translate the reference layer next to the tissue."""
        layer = self.reference_layer
        if layer is None or not len(layer.data):
            return
        lo, hi = self.tissue_bounds()
        yx = np.asarray(layer.data)
        rlo, rhi = np.nanmin(yx, axis=0), np.nanmax(yx, axis=0)
        height = float(hi[0] - lo[0]) or 1.0
        scale = height / float(rhi[0] - rlo[0] or 1.0)
        gap = 0.08 * float(hi[1] - lo[1] or height)
        translate = np.array([lo[0] - rlo[0] * scale, hi[1] + gap - rlo[1] * scale])
        layer.scale = (scale, scale)
        layer.translate = tuple(translate)
        layer.size = np.full(len(yx), 0.012 * height / scale) if self.geometry is not None else layer.size
        for extra in self._find("neighbours"):
            extra.scale, extra.translate = layer.scale, layer.translate

    # ---------------------------------------------------------------- results
    def apply_result(self, result: Any) -> None:
        """Push a result's columns into the cells' and the reference's features (in place)."""
        if self.cells_layer is None or self.geometry is None:
            return
        table = self.table
        rows = self.geometry.rows
        features = self.cells_layer.features.copy()
        if self.geometry.kind == "labels" and "index" not in features:
            features.insert(0, "index", np.asarray(self.geometry.instance_ids, dtype=np.int64))
        for column in result.obs.columns:
            values = table.obs[column] if column in table.obs else result.obs[column]
            features[column] = (
                values.iloc[rows].to_numpy()
                if not isinstance(values.dtype, pd.CategoricalDtype)
                else values.iloc[rows].array
            )
        self.cells_layer.features = features
        # File > Save (the npe2 writer) exports it as the table "<table>_imputed"; None clears a
        # previous run's
        self.cells_layer.metadata["imputed"] = getattr(result, "imputed", None)
        if self.reference_layer is not None and len(result.reference_obs.columns):
            ref_features = self.reference_layer.features.copy()
            for column in result.reference_obs.columns:
                ref_features[column] = result.reference_obs[column].to_numpy()
            self.reference_layer.features = ref_features

    def set_cell_size(self, factor: float) -> bool:
        """Draw point cells ``factor`` times their own size (the size they were drawn with).

        Returns False (and changes nothing) when the cells are labels or polygons.
        """
        layer = self.cells_layer
        if layer is None or layer_kind(layer) != "points":
            return False
        base = layer.metadata.get("cellmapper_sizes")
        if base is None or len(base) != len(layer.data):
            base = np.array(layer.size, dtype=np.float32, copy=True)
            layer.metadata["cellmapper_sizes"] = base
        sizes = base * np.float32(factor)
        if not np.array_equal(np.asarray(layer.size), sizes):  # napari's setter re-uploads every
            layer.size = sizes  # point (0.1 s at 300k), so only when the sizes change
            refresh_overview(layer)
        return True

    def set_cell_values(self, name: str, table_values: Any) -> None:
        """Add or replace one feature column from per-table-row values (in place); a categorical
        column stays categorical (its categories, hence its colours, kept)."""
        features = self.cells_layer.features.copy()
        rows = self.geometry.rows
        if isinstance(getattr(table_values, "dtype", None), pd.CategoricalDtype):
            features[name] = pd.Series(table_values).iloc[rows].array
        else:
            features[name] = np.asarray(table_values)[rows]
        self.cells_layer.features = features

    def color_keys(self) -> list[str]:
        """Columns of the cells layer that can colour the cells (identifiers such as cell_id not)."""
        if self.cells_layer is None:
            return []
        features = self.cells_layer.features
        return [str(c) for c in features.columns if c != "index" and not is_identifier(features[c])]

    def colors_for_key(self, key: str, values: pd.Series, adata: Any = None) -> list[str] | None:
        """Palette for a categorical column: ``uns[f"{key}_colors"]`` of the table, else default."""
        adata = self.table if adata is None else adata
        if adata is None or not isinstance(values.dtype, pd.CategoricalDtype):
            return None
        return palette_for([str(c) for c in values.cat.categories], adata.uns, key)

    def color_cells(self, key: str, colormap: str = "viridis", autoscale: bool = False) -> ColorInfo:
        """Recolour the cells by one feature column, in place; returns legend/colorbar info.
        Scores on [0, 1] keep that range unless ``autoscale``; the colormap shows on black."""
        layer = self.cells_layer
        values = layer.features[key]
        colors = self.colors_for_key(key, values)
        info = color_info(values, key, colors, visible_on_dark(colormap), autoscale)
        _recolor(layer, key, values, colors, info)
        self._recolor_outlines()
        self.color = info
        return info

    def color_reference(self, key: str, colormap: str = "magma", autoscale: bool = False) -> ColorInfo | None:
        """Recolour the reference embedding (e.g. by presence score), in place."""
        layer = self.reference_layer
        if layer is None or key not in layer.features:
            return None
        values = layer.features[key]
        colors = self.colors_for_key(key, values, self.reference)
        info = color_info(values, key, colors, visible_on_dark(colormap), autoscale)
        _recolor(layer, key, values, colors, info)
        return info

    # ------------------------------------------------------------ interaction
    def cell_at(self, position: Any) -> int | None:
        """Index (into the cells layer) of the cell under a world (y, x) position, or None."""
        if self.geometry is None or self.cells_layer is None:
            return None
        position = np.asarray(position, dtype=float)[-2:]
        if self.geometry.kind == "labels":
            value = self.cells_layer.get_value(position, world=True)
            if isinstance(value, tuple):
                value = value[-1]
            return None if value in (None, 0) else self.geometry.row_of_instance(int(value))
        tree, ids = self.geometry.centre_tree
        distance, i = tree.query(position)
        sizes = self.geometry.sizes
        reach = (
            float(np.nanmax(sizes))
            if sizes is not None and len(sizes)
            else box_spacing(self.geometry.coords_yx)
        )
        if self.geometry.kind == "polygons":
            reach = max(reach, box_spacing(self.geometry.coords_yx) * 2)
        return int(ids[i]) if distance <= reach else None

    def cell_spacing(self) -> float:
        """About a cell's diameter in the tissue (median nearest-neighbour distance), computed
        once per geometry (``CellGeometry.spacing``)."""
        return self.geometry.spacing

    def highlight_cell(self, index: int | None) -> None:
        """A ring around the selected cell on the tissue (None: no ring; the layer stays, empty,
        so that the next click only moves a point instead of adding a layer, ~0.2 s)."""
        if index is None or self.geometry is None:
            layer = self._layer(SELECTED)
            if layer is not None and len(layer.data):
                replace_points(layer, np.empty((0, 2)))
            return
        yx = self.geometry.coords_yx[[index]]
        size = (
            self.geometry.sizes[index] * 1.6 if self.geometry.sizes is not None else self.cell_spacing() * 1.2
        )
        self._upsert_points(SELECTED, yx, size=size, role="selected", scale=None)

    def highlight_neighbors(self, reference_rows: np.ndarray | None) -> Any:
        """Mark reference cells (row numbers) on the reference embedding."""
        if self.reference_layer is None or reference_rows is None:
            self._remove(NEIGHBOURS)
            return None
        rows = np.asarray(reference_rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(self.reference_layer.data))]
        yx = np.asarray(self.reference_layer.data)[rows]
        size = float(np.nanmax(self.reference_layer.size)) * 2.2 if len(self.reference_layer.data) else 1.0
        return self._upsert_points(NEIGHBOURS, yx, size=size, role="neighbours", scale=self.reference_layer)

    def highlight_cells(self, table_rows: np.ndarray | None) -> Any:
        """Ring the cells of these table rows on the tissue (a linked selection; None removes).

        One layer, updated in place; for large samples its rings are drawn as GL points, cheap
        enough to ring a million cells (see ``_upsert_points``)."""
        if table_rows is None or self.geometry is None:
            self._remove(LINKED)
            return None
        rows = np.asarray(self.geometry.rows, dtype=np.int64)
        table_rows = np.asarray(table_rows, dtype=np.int64)
        chosen = np.zeros(max(int(rows.max(initial=-1)), int(table_rows.max(initial=-1))) + 1, dtype=bool)
        chosen[table_rows] = True
        where = np.flatnonzero(chosen[rows])
        return self._upsert_points(
            LINKED,
            self.geometry.coords_yx[where],
            size=self._ring_size(),
            role="linked",
            scale=None,
            many=len(rows) >= LARGE_LAYER,
        )

    def _ring_size(self) -> float:
        """Diameter of a linked cell's ring: 1.4 cells (computed once per sample)."""
        if self._ring is None:
            sizes = self.geometry.sizes
            known = sizes is not None and len(sizes) > 0
            self._ring = float(np.nanmedian(sizes)) * 1.4 if known else self.cell_spacing()
        return self._ring

    def _upsert_points(
        self, name: str, yx: np.ndarray, *, size: float, role: str, scale: Any, many: bool = False
    ) -> Any:
        """Rings (magenta, one size) at these positions in the layer ``name``, made once and then
        updated in place with one upload to the canvas (``replace_points``). ``many``: the
        layer may ring a large share of a large sample, so it is drawn as GL points (one vertex
        a ring instead of four; a ring is then at most the GL point-size limit wide)."""
        layer = self._layer(name)
        if layer is None:
            from napari.layers import Points

            active = self.viewer.layers.selection.active
            layer = Points(
                yx,
                name=name,
                size=size,
                face_color="transparent",
                border_color="#ff00ff",
                border_width=0.25,
                border_width_is_relative=True,
                metadata={ROLE: role},
            )
            self.viewer.add_layer(layer)
            if many:
                draw_as_gl_points(layer)
            if active is not None and active in self.viewer.layers:  # keep the user's layer selected
                self.viewer.layers.selection.active = active
        else:
            replace_points(layer, yx)
            if len(yx) and not np.allclose(layer.size, size):
                layer.size = size
        if scale is not None:
            layer.scale, layer.translate = scale.scale, scale.translate
        return layer

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _remove(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def region_layer(self, create: bool = True) -> Any:
        """The Shapes layer whose polygons restrict the next run (created on demand)."""
        layer = self._layer(REGION)
        if layer is None and create:
            layer = self.viewer.add_shapes(
                name=REGION,
                face_color="#ffffff22",
                edge_color="#ffff00",
                edge_width=2,
                metadata={ROLE: "region"},
            )
            layer.mode = "add_polygon"
        return layer

    def region_mask(self) -> np.ndarray | None:
        """Which cells (rows of the cells layer) fall inside the region's shapes; None without shapes."""
        layer = self.region_layer(create=False)
        if layer is None or self.geometry is None or not len(layer.data):
            return None
        from napari_cellmapper.viewer.selection import inside_layer_shapes

        return inside_layer_shapes(layer, self.geometry.coords_yx)

    def click_callback(self, on_cell: Callable[[int], None]) -> Callable[..., Any]:
        """A viewer mouse-drag callback calling ``on_cell(index)`` on a click (not a drag) on a cell."""

        def _callback(viewer: Any, event: Any) -> Any:
            if getattr(event, "button", 1) != 1:
                return
            active = viewer.layers.selection.active
            if active is not None and getattr(active, "mode", "pan_zoom") not in (
                "pan_zoom",
                "select",
                "transform",
            ):
                return
            start = np.asarray(event.position, dtype=float)
            yield
            while event.type == "mouse_move":
                yield
            end = np.asarray(event.position, dtype=float)
            scale = camera_zoom(viewer)
            if np.linalg.norm(end - start) * scale > 5:  # a drag (pan), not a click
                return
            index = self.cell_at(end)
            if index is not None:
                on_cell(index)

        return _callback


def layer_kind(layer: Any) -> str:
    """ "points", "shapes", "labels", "image"... (works through napari's public-only proxies,
    and for subclasses of napari's layers such as ``label_codes``' cell labels)."""
    for cls in layer.__class__.__mro__:
        if cls.__module__.startswith("napari.layers"):
            return cls.__name__.lower()
    return str(layer.__class__.__name__).lower()


def _is_data(value: Any) -> bool:
    return not isinstance(value, (str, int, float, type(None), tuple))


def _recolor(
    layer: Any,
    key: str,
    values: pd.Series,
    colors: list[str] | None,
    info: ColorInfo,
) -> None:
    """Recolour any cells layer in place, as ``info`` describes (its colormap and limits)."""
    kind = layer_kind(layer)
    if kind == "points":
        try:
            from napari_cellmapper.viewer import points as fast_points
        except ImportError:
            fast_points = None
        if fast_points is not None:
            if info.categorical:
                fast_points.color_points_by(layer, key, colors=colors)
            else:
                fast_points.color_points_by(layer, key, colormap=info.colormap, clim=info.clim)
            return
        layer.face_color = rgba_for(values, colors, info.colormap, info.clim)
        return
    rgba = rgba_for(values, colors, info.colormap, info.clim)
    if kind == "shapes":
        layer.face_color = rgba
        return
    if kind == "labels":  # the scene's labels layers show colour codes (viewer.label_codes)
        from napari_cellmapper.viewer.label_codes import codes_colormap, color_codes, show_codes

        codes, distinct = color_codes(rgba)
        layer.cell_codes.set_codes(codes)
        layer.colormap = codes_colormap(distinct)
        show_codes(layer)
        return
