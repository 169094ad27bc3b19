"""Regions, selections and clicked cells: point-in-polygon masks, the shapes layer a person draws
selections in, and the facts shown for one cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: the shapes layer cells are selected with (lasso) for curation and the linked views
SELECTION = "cellmapper selection"


def _shape_path(vertices: np.ndarray, shape_type: str) -> Any:
    from matplotlib.path import Path

    vertices = np.asarray(vertices, dtype=float)[:, -2:]
    if shape_type == "ellipse" and len(vertices) == 4:
        centre = vertices.mean(axis=0)
        radii = np.abs(vertices - centre).max(axis=0)
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        vertices = centre + np.column_stack([radii[0] * np.sin(theta), radii[1] * np.cos(theta)])
    return Path(vertices)


def inside_shapes(
    coords_yx: np.ndarray, shapes: list[np.ndarray], shape_types: list[str] | None = None
) -> np.ndarray:
    """Boolean mask of the (y, x) positions inside any of the shapes (polygons, rectangles, ellipses).

    Lines and paths enclose nothing and are ignored.
    """
    coords = np.asarray(coords_yx, dtype=float)
    mask = np.zeros(len(coords), dtype=bool)
    shape_types = shape_types or ["polygon"] * len(shapes)
    finite = np.isfinite(coords).all(axis=1)
    for vertices, kind in zip(shapes, shape_types, strict=False):
        if kind in ("line", "path") or len(vertices) < 3:
            continue
        path = _shape_path(vertices, kind)
        mask[finite] |= path.contains_points(coords[finite])
    return mask


@dataclass(frozen=True)
class CellInfo:
    """What the widget shows for a clicked cell."""

    row: int  # row in the query table
    label: str | None
    confidence: float | None
    top: tuple[tuple[str, float], ...]  # up to three (class, probability)
    neighbors: np.ndarray  # reference row numbers (k)
    key: str | None
    cell_id: str = ""  # the table's obs name of the cell (what a person knows it by)

    def as_text(self, reference_obs: pd.DataFrame | None = None) -> str:
        """A few lines of plain text for the info panel."""
        lines = [f"cell {self.cell_id}" if self.cell_id else f"cell #{self.row}"]
        if self.key is not None:
            conf = (
                ""
                if self.confidence is None or not np.isfinite(self.confidence)
                else f" (confidence {self.confidence:.2f})"
            )
            lines.append(f"{self.key}: {self.label if self.label is not None else 'not mapped'}{conf}")
        if self.top:
            lines.append("top: " + ", ".join(f"{c} {p:.2f}" for c, p in self.top))
        valid = self.neighbors[self.neighbors >= 0]
        if len(valid):
            text = f"{len(valid)} reference neighbours"
            if reference_obs is not None and self.key is not None and self.key in reference_obs:
                counts = reference_obs[self.key].iloc[valid].astype(str).value_counts().head(3)
                text += ": " + ", ".join(f"{name} \u00d7{n}" for name, n in counts.items())
            lines.append(text)
        return "\n".join(lines)


def cell_info(table: Any, row: int, key: str | None, result: Any | None) -> CellInfo:
    """Transferred label, confidence, top-3 probabilities and reference neighbours of one table row."""
    label = confidence = None
    top: tuple[tuple[str, float], ...] = ()
    neighbors = np.empty(0, dtype=np.int64)
    if key is not None:
        pred = table.obs.get(f"{key}_pred")
        if pred is not None:
            value = pred.iloc[row]
            label = None if pd.isna(value) else str(value)
        conf = table.obs.get(f"{key}_conf")
        if conf is not None:
            confidence = float(conf.iloc[row])
        proba = table.obsm.get(f"{key}_proba") if hasattr(table.obsm, "get") else None
        if proba is not None:
            if isinstance(proba, pd.DataFrame):
                values, names = proba.iloc[row].to_numpy(dtype=float), [str(c) for c in proba.columns]
            else:
                values, names = (
                    np.asarray(proba)[row].astype(float),
                    [str(i) for i in range(np.shape(proba)[1])],
                )
            if np.isfinite(values).any():
                order = np.argsort(-np.nan_to_num(values, nan=-1))[:3]
                top = tuple(
                    (names[i], float(values[i])) for i in order if np.isfinite(values[i]) and values[i] > 0
                )
    if result is not None and len(result.neighbor_indices):
        where = np.flatnonzero(np.asarray(result.rows) == row)
        if len(where):
            neighbors = np.asarray(result.neighbor_indices[where[0]], dtype=np.int64)
    return CellInfo(row, label, confidence, top, neighbors, key, cell_name(table, row))


def cell_name(table: Any, row: int) -> str:
    """How a person knows a cell: its obs name, with the SpatialData instance id when there is one."""
    name = str(table.obs_names[row])
    attrs = table.uns.get("spatialdata_attrs", {}) if hasattr(table.uns, "get") else {}
    instance_key = attrs.get("instance_key") if isinstance(attrs, dict) else None
    if instance_key is not None and instance_key in table.obs:
        instance = str(table.obs[instance_key].iloc[row])
        if instance != name:
            return f"{name} ({instance_key} {instance})"
    return name


def selection_layer(viewer: Any, create: bool = True) -> Any:
    """The "cellmapper selection" shapes layer (created on demand; None when absent and not created)."""
    if SELECTION in viewer.layers:
        return viewer.layers[SELECTION]
    if not create:
        return None
    return viewer.add_shapes(
        name=SELECTION, face_color="#00ffff22", edge_color="#00ffff", edge_width=2,
        metadata={"cellmapper_role": "selection"},
    )  # fmt: skip


def inside_layer_shapes(layer: Any, coords_yx: np.ndarray) -> np.ndarray:
    """Mask over the cells (world (y, x) positions) inside a Shapes layer's shapes (its
    transformation applied)."""
    world = [np.array([layer.data_to_world(v)[-2:] for v in np.asarray(shape)]) for shape in layer.data]
    return inside_shapes(coords_yx, world, list(layer.shape_type))


def cells_in_selection(viewer: Any, coords_yx: np.ndarray) -> np.ndarray:
    """Mask over the cells (world (y, x) positions) inside the selection layer's shapes."""
    layer = selection_layer(viewer, create=False)
    if layer is None or not len(layer.data):
        return np.zeros(len(coords_yx), dtype=bool)
    return inside_layer_shapes(layer, coords_yx)
