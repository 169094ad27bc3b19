"""The curation panel driven as a person would: lasso and click cells, label them, undo, redo, export."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_widgets_mapper import _wait_done, demo, errors  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui


def _click(viewer, widget, index):
    """A mouse press and release on the cell, through the viewer's own mouse callback."""
    geometry = widget.scene.geometry

    class Event:
        button = 1
        type = "mouse_press"
        position = tuple(geometry.coords_yx[index])

    generator = widget._click(viewer, Event())
    next(generator)
    Event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(generator)


def test_lasso_click_assign_undo_redo_and_export(demo, qtbot, tmp_path, errors):  # noqa: F811
    import spatialdata

    viewer, widget = demo
    widget.run()
    _wait_done(qtbot, widget)
    qtbot.mouseClick(widget.curate_button, _left())
    panel = widget.curation_panel
    assert panel is not None and panel.key_combo.currentText() == "cell_type"
    table, geometry = widget.table, widget.scene.geometry
    # a lasso around the cells of the left third of the tissue
    layer = panel.start_lasso()
    assert layer.mode == "add_polygon_lasso" and viewer.layers.selection.active is layer
    yx = geometry.coords_yx
    (y0, x0), (y1, x1) = yx.min(0), yx.max(0)
    cut = x0 + (x1 - x0) / 3
    layer.add_polygons([np.array([[y0 - 1, x0 - 1], [y0 - 1, cut], [y1 + 1, cut], [y1 + 1, x0 - 1]])])
    in_lasso = set(np.asarray(geometry.rows)[yx[:, 1] <= cut].tolist())
    # and one cell outside it, clicked on the canvas (out of lasso mode: clicks then select)
    layer.mode = "pan_zoom"
    outside = int(np.flatnonzero(yx[:, 1] > cut)[0])
    _click(viewer, widget, outside)
    panel.add_clicked_cell()
    selected = set(panel.selected_rows().tolist())
    assert selected == in_lasso | {int(geometry.rows[outside])}
    assert f"{len(selected):,} cells selected" in panel.selection_label.text()
    predicted = table.obs["cell_type_pred"].copy()
    panel.label_combo.setCurrentText("Doublets")  # a new label
    qtbot.mouseClick(panel.assign_button, _left())
    curated = table.obs["cell_type_curated"].astype(str).to_numpy()
    rows = np.array(sorted(selected))
    assert (curated[rows] == "Doublets").all()
    others = np.setdiff1d(np.arange(table.n_obs), rows)
    assert (curated[others] == predicted.astype(str).to_numpy()[others]).all()
    assert table.obs["cell_type_pred"].equals(predicted)  # the predictions stay as they were
    assert widget.color_combo.currentText() == "cell_type_curated"
    assert "Doublets" in widget.color_key.legend.labels()
    assert len(table.uns["cell_type_curated_colors"]) == len(table.obs["cell_type_curated"].cat.categories)
    assert panel.selection_label.text() == "No cells selected." and not len(layer.data)
    qtbot.mouseClick(panel.undo_button, _left())
    assert (table.obs["cell_type_curated"].astype(str).to_numpy() == predicted.astype(str).to_numpy()).all()
    assert panel.redo_button.isEnabled()
    qtbot.mouseClick(panel.redo_button, _left())
    assert (table.obs["cell_type_curated"].astype(str).to_numpy()[rows] == "Doublets").all()
    out = widget.export(tmp_path / "curated.zarr", confirm=False, wait=True)
    written = spatialdata.read_zarr(out).tables["table"]
    assert (written.obs["cell_type_curated"].astype(str).to_numpy()[rows] == "Doublets").all()
    provenance = written.uns["cell_type_curated"]
    assert list(provenance["label"]) == ["Doublets"] and int(provenance["n_cells"][0]) == len(rows)
    assert provenance["who"][0] and provenance["when"][0]


def test_panel_waits_for_a_run(demo, qtbot):  # noqa: F811
    viewer, widget = demo
    panel = widget.open_curation()
    assert not panel.assign_button.isEnabled() and "Run a mapping" in panel.status.text()
    assert panel.assign("B cells") is False


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _canvas_point(viewer, y, x):
    """Where a world (y, x) position is on the canvas widget, in its pixels."""
    from qtpy.QtCore import QPointF

    mapped = viewer.window._qt_viewer.canvas.view.scene.transform.map([x, y, 0, 1])
    return QPointF(float(mapped[0]), float(mapped[1]))


def _mouse(viewer, kind, point, button, buttons):
    """One real Qt mouse event on the canvas widget (as the window system would send it)."""
    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    if kind == QEvent.Type.MouseMove:
        time.sleep(0.012)  # vispy drops a move within 10 ms of the last one (app/base.py)
    native = viewer.window._qt_viewer.canvas.native
    event = QMouseEvent(
        kind, point, native.mapToGlobal(point), button, buttons, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(native, event)
    QApplication.processEvents()


def test_real_mouse_lasso_and_click_on_the_canvas(make_napari_viewer, qtbot, errors):  # noqa: F811
    """The selection made with the mouse itself: a lasso dragged over the tissue in the selection
    layer, then a click on one more cell, then the label assigned."""
    from qtpy.QtCore import QEvent, Qt

    from napari_cellmapper.widgets.demo import open_demo

    viewer = make_napari_viewer(show=True)
    viewer, widget = open_demo(viewer)
    viewer.window._qt_window.resize(1400, 900)
    widget.run()
    _wait_done(qtbot, widget)
    panel = widget.open_curation()
    layer = panel.start_lasso()
    qtbot.wait(100)
    geometry = widget.scene.geometry
    yx = geometry.coords_yx
    (y0, x0), (y1, x1) = yx.min(0), yx.max(0)
    xs = np.sort(yx[:, 1])
    third = len(xs) // 3  # cut through the widest gap between cells near a third of the way
    gap = third - 5 + int(np.argmax(np.diff(xs[third - 5 : third + 6])))
    cut = (xs[gap] + xs[gap + 1]) / 2  # (the lasso's edge is drawn in screen pixels)
    corners = [(y0 - 1, x0 - 1), (y0 - 1, cut), (y1 + 1, cut), (y1 + 1, x0 - 1), (y0 - 1, x0 - 1)]
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _mouse(viewer, QEvent.Type.MouseButtonPress, _canvas_point(viewer, *corners[0]), left, left)
    for (ya, xa), (yb, xb) in zip(corners[:-1], corners[1:], strict=True):
        for t in np.linspace(0, 1, 12)[1:]:
            point = _canvas_point(viewer, ya + t * (yb - ya), xa + t * (xb - xa))
            _mouse(viewer, QEvent.Type.MouseMove, point, none, left)
    _mouse(viewer, QEvent.Type.MouseButtonRelease, _canvas_point(viewer, *corners[-1]), left, none)
    assert len(layer.data) == 1
    in_lasso = set(np.asarray(geometry.rows)[yx[:, 1] <= cut].tolist())
    assert set(panel.selected_rows().tolist()) == in_lasso
    # a real click (pan/zoom mode) on a cell right of the lasso, added to the selection
    layer.mode = "pan_zoom"
    outside = int(np.flatnonzero(yx[:, 1] > cut + (x1 - x0) / 10)[0])
    qtbot.mouseClick(
        viewer.window._qt_viewer.canvas.native, Qt.MouseButton.LeftButton,
        pos=_canvas_point(viewer, *yx[outside]).toPoint(),
    )  # fmt: skip
    qtbot.waitUntil(lambda: widget.last_clicked_cell is not None, timeout=3000)
    assert widget.last_clicked_cell == outside
    panel.add_clicked_cell()
    assert set(panel.selected_rows().tolist()) == in_lasso | {int(geometry.rows[outside])}
    assert panel.assign("Doublets")
    curated = widget.table.obs["cell_type_curated"].astype(str).to_numpy()
    assert (curated[sorted(in_lasso | {int(geometry.rows[outside])})] == "Doublets").all()
