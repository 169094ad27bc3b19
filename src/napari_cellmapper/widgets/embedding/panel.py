"""The reference embedding (UMAP) in its own canvas, linked both ways to the tissue.

- Tissue to reference: clicking a cell, or drawing shapes in the "cellmapper selection" layer,
  lights up the selected cells' reference neighbours here.
- Reference to tissue: a lasso here (or a click on a legend entry of the reference colouring)
  selects reference cells; the query cells mapped there (most of their neighbours inside) are
  ringed on the tissue.
- Hover shows the reference cell's name and the value it is coloured by.

The canvas is a vispy SceneCanvas (napari's renderer), so a million points stay interactive;
the embedding is no longer drawn beside the tissue in the same world coordinates.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_cellmapper.viewer.linked import mapped_into, neighbours_of, valid_counts
from napari_cellmapper.viewer.overview import CellOverview, debounced
from napari_cellmapper.viewer.points import LARGE_LAYER, discs_only
from napari_cellmapper.viewer.selection import cells_in_selection, selection_layer
from napari_cellmapper.widgets.repaint import deferred_repaint

if TYPE_CHECKING:
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

_GREY = (0.55, 0.55, 0.55, 1.0)
# after a recolouring, the tissue's canvas draws first; this view follows in a turn of its own
REFRESH_DELAY_MS = 30


class EmbeddingView(QWidget):
    """The reference embedding of ``main``'s reference, with lasso and hover."""

    def __init__(self, main: CellMapperWidget, parent: QWidget | None = None) -> None:
        from vispy import scene as vscene

        super().__init__(parent)
        self.main, self.viewer = main, main.viewer
        self.xy = np.empty((0, 2), dtype=np.float32)
        self.selected = np.zeros(0, dtype=bool)  # reference cells selected here
        self._lasso: list[np.ndarray] | None = None
        self._tree: Any = None
        self._watched: Any = None  # the tissue selection layer followed
        self._valid: tuple[Any, Any] | None = None  # (result, its valid neighbours per query cell)

        self._drawn = (np.empty((0, 4), np.float32), 2.0)  # the colours and size drawn
        # many cells are drawn as a raster while they are small on screen (viewer.overview)
        self.overview = CellOverview(_EmbeddingCells(self), defer=debounced())
        self.canvas = vscene.SceneCanvas(keys=None, bgcolor="black", size=(360, 360))
        self.view = self.canvas.central_widget.add_view()
        self.view.camera = _camera(self.overview.update, aspect=1)
        self.points = vscene.visuals.Markers(parent=self.view.scene)
        self.marked = vscene.visuals.Markers(parent=self.view.scene)
        self.marked.order = 1
        self.outline = vscene.visuals.Line(parent=self.view.scene, color="yellow", width=2)
        self.outline.visible = False
        for markers in (self.points, self.marked):  # vispy's bounds need data on every visual
            _empty(markers)
        discs_only(self.points)  # every reference cell is a disc: 10-27 % shorter frames

        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setCheckable(True)
        self.lasso_button.setToolTip("Drag around reference cells: the query cells mapped there light up")
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Clear the linked selection in both views")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.hover = QLabel("")
        self.hover.setWordWrap(True)
        bar = QHBoxLayout()
        bar.addWidget(self.lasso_button)
        bar.addWidget(self.clear_button)
        bar.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        self.canvas.native.setMinimumHeight(140)
        layout.addWidget(self.canvas.native, 1)
        layout.addWidget(self.hover)
        layout.addWidget(self.status)

        self.lasso_button.toggled.connect(self._on_lasso_toggled)
        self.clear_button.clicked.connect(self.clear)
        self.canvas.events.mouse_press.connect(self._on_press)
        self.canvas.events.mouse_move.connect(self._on_move)
        self.canvas.events.mouse_release.connect(self._on_release)
        self.canvas.events.resize.connect(lambda _: self.refresh_later())  # the cells' size follows
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------ drawing
    def refresh(self) -> None:
        """Redraw from the main widget's reference (positions) and its current colouring; the
        frame follows in an event-loop turn of its own (:func:`.repaint.deferred_repaint`)."""
        self._refresh_timer.stop()
        with deferred_repaint(self, [self.canvas.native]):
            self._refresh()

    def _refresh(self) -> None:
        from napari_cellmapper.viewer.scene import reference_embedding

        reference = self.main.reference
        found = reference_embedding(reference) if reference is not None else None
        if found is None:
            xy = np.empty((0, 2), dtype=np.float32)
            self.status.setText("The reference has no 2-D embedding (obsm such as X_umap).")
        else:
            yx = found[1]
            xy = np.column_stack([yx[:, 1], -yx[:, 0]]).astype(np.float32)  # back to x, y up
        moved = xy.shape != self.xy.shape or not np.array_equal(xy, self.xy)
        self.xy = xy
        if len(self.selected) != len(self.xy):
            self.selected = np.zeros(len(self.xy), dtype=bool)
        if moved:
            self._tree = None
        # as on the tissue (viewer.points): from LARGE_LAYER cells on, no antialiasing, which
        # grows every marker by 6 px and so about doubles the frame of the software renderer
        self.points.antialias = 0 if len(self.xy) >= LARGE_LAYER else 1
        self._draw_marked(moved)
        if len(self.xy) and moved:  # a recolouring keeps the user's zoom
            (x0, y0), (x1, y1) = self.xy.min(0), self.xy.max(0)
            pad = 0.05 * max(x1 - x0, y1 - y0, 1e-9)
            self.view.camera.set_range(x=(x0 - pad, x1 + pad), y=(y0 - pad, y1 + pad))

    def refresh_later(self) -> None:
        """Refresh a moment later, once: this canvas is then drawn in an event-loop turn of its
        own instead of right after the tissue's, which keeps each turn short (one frame each)."""
        self._refresh_timer.start()

    @property
    def refresh_pending(self) -> bool:
        """A refresh is scheduled (``refresh_later``) and has not run yet."""
        return self._refresh_timer.isActive()

    def colors(self) -> np.ndarray:
        """The reference's colours as the main widget draws them (grey when not drawn there)."""
        layer = self.main.scene.reference_layer
        colors = np.asarray(layer.face_color) if layer is not None else np.empty((0, 4))
        if colors.shape != (len(self.xy), 4):
            return np.tile(np.asarray(_GREY, dtype=np.float32), (len(self.xy), 1))
        return colors.astype(np.float32)

    def _draw_marked(self, moved: bool = False) -> None:
        """Ring the selected reference cells and dim the others (all at full colour without one);
        ``moved``: the cells' positions changed."""
        size = _point_size(len(self.xy), self.canvas.size)
        selected = self.selected if len(self.selected) == len(self.xy) else np.zeros(len(self.xy), bool)
        if len(self.xy):
            colors = self.colors()
            if selected.any():
                colors[~selected, 3] *= 0.25
            self.points.set_data(self.xy, face_color=colors, edge_width=0, size=size)
        resized = size != self._drawn[1]
        self._drawn = (colors if len(self.xy) else np.empty((0, 4), np.float32), size)
        if resized or moved:
            self.overview.invalidate()
        else:
            self.overview.recolor()
        marked = self.xy[selected]
        if len(marked):
            self.marked.set_data(
                marked, face_color=(1, 1, 1, 0), edge_color="#ff00ff", edge_width=2, size=size * 2
            )
        else:
            _empty(self.marked)
        self.canvas.update()

    # ------------------------------------------------------------------ linking
    def show_reference_cells(self, reference_rows: np.ndarray) -> None:
        """Light up these reference cells (from the tissue side)."""
        self.selected = np.zeros(len(self.xy), dtype=bool)
        rows = np.asarray(reference_rows, dtype=np.int64)
        self.selected[rows[(rows >= 0) & (rows < len(self.xy))]] = True
        self.status.setText(f"{int(self.selected.sum()):,} reference neighbours of the tissue selection.")
        self._draw_marked()

    def show_neighbours_of(self, table_rows: np.ndarray) -> np.ndarray:
        """Light up the reference neighbours of these query table rows; returns them."""
        result = self._linked_result("the tissue to the reference")
        if result is None:
            return np.empty(0, dtype=np.int64)
        rows = neighbours_of(result.neighbor_indices, result.rows, table_rows)
        self.show_reference_cells(rows)
        return rows

    def select_reference(self, mask: np.ndarray) -> np.ndarray:
        """Select reference cells here; ring the query cells mapped there on the tissue (returns
        their table rows)."""
        self.selected = np.asarray(mask, dtype=bool)
        self._draw_marked()
        result = self._linked_result("the reference to the tissue")
        if result is None:
            return np.empty(0, dtype=np.int64)
        if self._valid is None or self._valid[0] is not result:  # once per result, not per selection
            self._valid = (result, valid_counts(result.neighbor_indices))
        rows = mapped_into(result.neighbor_indices, result.rows, self.selected, valid=self._valid[1])
        self.main.scene.highlight_cells(rows)
        self.status.setText(
            f"{int(self.selected.sum()):,} reference cells selected; {len(rows):,} query cells mapped there."
        )
        return rows

    def _linked_result(self, direction: str) -> Any:
        """The main widget's result when it carries the neighbours that link the views (else None,
        said in the status line)."""
        result = self.main.result
        if result is None or not result.neighbor_indices.shape[1]:
            self.status.setText(f"Run a mapping to link {direction}.")
            return None
        return result

    def select_category(self, column: str, category: str) -> np.ndarray:
        """Select the reference cells of one category (a legend entry)."""
        values = self.main.reference.obs[column]
        if isinstance(values.dtype, pd.CategoricalDtype):  # compare the categories, not every cell
            match = np.asarray(values.cat.categories.astype(str) == str(category))
            codes = values.cat.codes.to_numpy()
            return self.select_reference(np.append(match, False)[codes])  # code -1 (missing) reads False
        return self.select_reference(values.astype(str).to_numpy() == str(category))

    def select_tissue_shapes(self) -> np.ndarray:
        """The cells inside the "cellmapper selection" shapes: light up their neighbours here."""
        geometry = self.main.scene.geometry
        if geometry is None:
            return np.empty(0, dtype=np.int64)
        inside = cells_in_selection(self.viewer, geometry.coords_yx)
        return self.show_neighbours_of(np.asarray(geometry.rows)[inside])

    def follow_tissue_selection(self) -> Any:
        """Link the tissue's selection layer to this view (created if needed); returns the layer."""
        layer = selection_layer(self.viewer)
        if layer is not self._watched:
            layer.events.data.connect(lambda _: self.select_tissue_shapes())
            self._watched = layer
        return layer

    def clear(self) -> None:
        self.selected = np.zeros(len(self.xy), dtype=bool)
        self.main.scene.highlight_cells(None)
        self.status.setText("")
        self._draw_marked()

    # ------------------------------------------------------------------ mouse
    def _on_lasso_toggled(self, on: bool) -> None:
        self.view.camera.interactive = not on

    def _scene_xy(self, pos: Any) -> np.ndarray:
        return np.asarray(self.view.scene.transform.imap(np.asarray(pos, dtype=float)))[:2]

    def _on_press(self, event: Any) -> None:
        if self.lasso_button.isChecked() and event.button == 1:
            self._lasso = [self._scene_xy(event.pos)]

    def _on_move(self, event: Any) -> None:
        if self._lasso is not None:
            self._lasso.append(self._scene_xy(event.pos))
            if len(self._lasso) > 1:
                self.outline.set_data(np.asarray(self._lasso + self._lasso[:1], dtype=np.float32))
                self.outline.visible = True
            return
        self._show_hover(self._scene_xy(event.pos))

    def _on_release(self, event: Any) -> None:
        if self._lasso is None:
            return
        path, self._lasso = np.asarray(self._lasso), None
        self.outline.visible = False
        if len(path) >= 3 and len(self.xy):
            from matplotlib.path import Path as MplPath

            self.select_reference(MplPath(path).contains_points(self.xy))

    def _show_hover(self, xy: np.ndarray) -> None:
        if not len(self.xy):
            return
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.xy)
        distance, row = self._tree.query(xy)
        pixel = float(np.ptp(self.xy[:, 0]) or 1.0) / max(self.canvas.size[0], 1)
        if distance > 9 * pixel:  # nothing within a few points' width of the mouse
            self.hover.setText("")
            return
        reference = self.main.reference
        key = self.main.reference_color_combo.currentText()
        value = reference.obs[key].iloc[row] if key and key in reference.obs else None
        text = f"{reference.obs_names[row]}" + (f" · {key}: {value}" if value is not None else "")
        self.hover.setText(text)


class _EmbeddingCells:
    """The embedding view's cells as the source of its raster (:class:`CellOverview`)."""

    def __init__(self, view: EmbeddingView) -> None:
        self._view = weakref.ref(view)

    def coords_yx(self) -> np.ndarray:
        view = self._view()
        return view.xy[:, ::-1] if view is not None else np.empty((0, 2))

    def sizes(self, screen_per_data: float) -> float:
        view = self._view()
        return view._drawn[1] / screen_per_data if view is not None else 0.0  # drawn in screen pixels

    def colors(self) -> np.ndarray:
        view = self._view()
        return view._drawn[0] if view is not None else np.empty((0, 4), np.float32)

    def screen_per_data(self) -> float | None:
        view = self._view()
        if view is None or len(view.xy) < LARGE_LAYER:  # fewer: smooth points cost little
            return None
        ends = np.asarray(view.view.scene.transform.map([[0.0, 0.0], [1.0, 0.0]]), dtype=float)
        scale = float(np.hypot(*(ends[1, :2] - ends[0, :2])))  # screen pixels per unit along x
        return scale if np.isfinite(scale) and scale > 0 else None

    def targets(self) -> list[tuple[Any, Any]]:
        view = self._view()
        markers = getattr(view, "points", None)  # None while the view is being built
        return [(view.view.scene, markers)] if markers is not None else []


def _camera(moved: Any, **kwargs: Any) -> Any:
    """A vispy ``PanZoomCamera`` that calls ``moved()`` after every pan or zoom."""
    from vispy.scene import PanZoomCamera

    class _Camera(PanZoomCamera):
        def view_changed(self) -> None:
            super().view_changed()
            if getattr(self, "_moved", None) is not None:
                self._moved()

    camera = _Camera(**kwargs)
    camera._moved = moved
    return camera


def _point_size(n: int, canvas_size: tuple[int, int] = (360, 360)) -> float:
    """Screen pixels per reference cell, scanpy's density: the cells' discs cover about 1.45 times
    the canvas (scanpy's ``120000 / n`` pt² in its default 4-inch plot), within 2 and 8 px. A
    1000 x 260 px view draws 100k cells at 2 px, a few hundred at 8 px."""
    area = float(max(canvas_size[0], 1) * max(canvas_size[1], 1))
    return float(np.clip(np.sqrt(4 * 1.45 * area / (np.pi * max(n, 1))), 2.0, 8.0))


def _empty(markers: Any) -> None:
    """No point drawn (one invisible one: vispy needs data to compute the view's bounds)."""
    markers.set_data(np.zeros((1, 2), np.float32), size=0, edge_width=0, face_color=(0, 0, 0, 0))
