"""The reference embedding in its own canvas, linked both ways to the tissue."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_widgets_mapper import _wait_done, demo, errors  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui


def _drag(view, path_xy):
    """A real left-button drag through these embedding (x, y) positions on the view's canvas."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    native = view.canvas.native
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton

    def send(kind, xy, button, buttons):
        if kind == QEvent.Type.MouseMove:
            time.sleep(0.012)  # vispy drops a move within 10 ms of the last one (app/base.py)
        mapped = view.view.scene.transform.map([xy[0], xy[1], 0, 1])
        point = QPointF(float(mapped[0]), float(mapped[1]))
        event = QMouseEvent(
            kind, point, native.mapToGlobal(point), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(native, event)
        QApplication.processEvents()

    send(QEvent.Type.MouseButtonPress, path_xy[0], left, left)
    for a, b in zip(path_xy[:-1], path_xy[1:], strict=True):
        for t in np.linspace(0, 1, 8)[1:]:
            send(QEvent.Type.MouseMove, np.asarray(a) + t * (np.asarray(b) - np.asarray(a)), none, left)
    send(QEvent.Type.MouseButtonRelease, path_xy[-1], left, none)


def _mapped(demo_pair, qtbot):
    viewer, widget = demo_pair
    widget.run()
    _wait_done(qtbot, widget)
    return viewer, widget


@pytest.fixture
def shown_demo(make_napari_viewer, errors):  # noqa: F811
    """The demo in a shown window: real mouse events need laid-out canvases."""
    from napari_cellmapper.widgets.demo import open_demo

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    return open_demo(viewer)


def test_lasso_on_the_embedding_rings_the_cells_mapped_there(shown_demo, qtbot, errors):  # noqa: F811
    viewer, widget = _mapped(shown_demo, qtbot)
    view = widget.open_embedding()
    qtbot.wait(200)  # laid out
    assert not widget.scene.reference_layer.visible  # no longer beside the tissue
    assert len(view.xy) == widget.reference.n_obs
    np.testing.assert_allclose(view.colors(), np.asarray(widget.scene.reference_layer.face_color))
    # a real lasso drag on the vispy canvas, around the reference cells of one type
    kind = str(widget.reference.obs["cell_type"].value_counts().index[0])
    of_kind = widget.reference.obs["cell_type"].astype(str).to_numpy() == kind
    (x0, y0), (x1, y1) = view.xy[of_kind].min(0), view.xy[of_kind].max(0)
    corners = (
        np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.01
    )
    view.lasso_button.setChecked(True)
    _drag(view, [*corners, corners[0]])  # real Qt mouse events on the view's canvas
    in_box = (view.xy[:, 0] >= corners[0, 0]) & (view.xy[:, 0] <= corners[1, 0])
    in_box &= (view.xy[:, 1] >= corners[0, 1]) & (view.xy[:, 1] <= corners[2, 1])
    # the drawn path goes through screen pixels: only cells within a pixel of its edge may differ
    pixel = float(np.ptp(view.xy[:, 0])) / view.canvas.size[0]
    edge = np.min(np.abs(view.xy[:, :, None] - np.array([corners[0], corners[2]]).T[None]), axis=2).min(
        axis=1
    )
    assert (view.selected != in_box)[edge > 2 * pixel].sum() == 0 and view.selected.sum() > 0
    result = widget.result
    linked = viewer.layers["cellmapper linked cells"]
    expected = [
        row
        for row, hits in zip(result.rows, view.selected[result.neighbor_indices], strict=True)
        if hits.mean() >= 0.5
    ]
    assert len(linked.data) == len(expected) > 0
    assert "query cells mapped there" in view.status.text()
    # a legend entry: the cells mapped into one type's reference cells are mostly predicted as it
    rows = view.select_category("cell_type", kind)
    np.testing.assert_array_equal(view.selected, of_kind)
    predicted = widget.table.obs["cell_type_pred"].astype(str).to_numpy()[rows]
    assert len(rows) and (predicted == kind).mean() > 0.8
    assert len(linked.data) == len(rows)
    view.clear()
    assert "cellmapper linked cells" not in viewer.layers and not view.selected.any()


def test_click_and_lasso_on_the_tissue_light_up_reference_neighbours(demo, qtbot, errors):  # noqa: F811
    viewer, widget = _mapped(demo, qtbot)
    view = widget.open_embedding()
    widget.show_cell(5)
    neighbours = widget.result.neighbor_indices[list(widget.result.rows).index(widget.scene.geometry.rows[5])]
    assert set(np.flatnonzero(view.selected)) == set(neighbours[neighbours >= 0].tolist())
    assert "cellmapper reference neighbours" not in viewer.layers  # shown in the linked view instead
    geometry = widget.scene.geometry
    yx = geometry.coords_yx
    (y0, x0), (y1, x1) = yx.min(0), yx.max(0)
    layer = viewer.layers["cellmapper selection"]
    layer.add_polygons(
        [np.array([[y0 - 1, x0 - 1], [y0 - 1, (x0 + x1) / 2], [y1 + 1, (x0 + x1) / 2], [y1 + 1, x0 - 1]])]
    )
    rows = np.asarray(geometry.rows)[yx[:, 1] <= (x0 + x1) / 2]
    where = np.isin(widget.result.rows, rows)
    expected = np.unique(widget.result.neighbor_indices[where])
    np.testing.assert_array_equal(np.flatnonzero(view.selected), expected[expected >= 0])
    # hover names the reference cell under the mouse
    view._show_hover(view.xy[7])
    assert str(widget.reference.obs_names[7]) in view.hover.text()


def test_closing_the_view_draws_the_reference_beside_the_tissue_again(demo, qtbot, errors):  # noqa: F811
    viewer, widget = _mapped(demo, qtbot)
    view = widget.open_embedding()
    assert not widget.scene.reference_layer.visible
    viewer.window.remove_dock_widget(view)
    view.deleteLater()
    qtbot.waitUntil(lambda: widget.embedding_view is None, timeout=5000)
    assert widget.scene.reference_layer.visible
    widget.show_cell(2)  # the click goes back to the reference layer's rings
    assert "cellmapper reference neighbours" in viewer.layers


def test_the_reference_opens_in_its_own_view_until_the_user_closes_it(demo, qtbot, errors):  # noqa: F811
    viewer, widget = demo
    view = widget.embedding_view
    assert view is not None  # docked when the example reference was chosen
    assert not widget.scene.reference_layer.visible
    assert len(view.xy) == widget.reference.n_obs
    from napari_cellmapper.viewer.points import _DISC_MARKERS

    assert view.points.shared_program.frag["marker"] is _DISC_MARKERS[view.points]
    viewer.window.remove_dock_widget(view)
    view.deleteLater()
    qtbot.waitUntil(lambda: widget.embedding_view is None, timeout=5000)
    assert not widget.open_reference_view
    widget._on_reference_changed()  # choosing a reference again keeps it beside the tissue
    assert widget.embedding_view is None and widget.scene.reference_layer.visible
    widget.embedding_button.click()  # "Reference view…" docks it again, and for later references
    assert widget.embedding_view is not None and widget.open_reference_view
    assert not widget.scene.reference_layer.visible


def test_recolouring_redraws_the_view_once_in_a_later_turn_and_keeps_its_zoom(demo, qtbot, errors):  # noqa: F811
    viewer, widget = _mapped(demo, qtbot)
    view = widget.embedding_view
    qtbot.waitUntil(lambda: not view.refresh_pending, timeout=2000)
    view.view.camera.set_range(x=(0.0, 1.0), y=(0.0, 1.0))  # the user zooms in
    zoomed = view.view.camera.rect
    calls = []
    original = view.refresh
    view.refresh = lambda: (calls.append(1), original())
    view._refresh_timer.timeout.disconnect()
    view._refresh_timer.timeout.connect(view.refresh)
    for _ in range(3):  # three recolourings in one turn: one redraw, after it
        widget._on_reference_color_changed("cell_type")
    assert not calls and view.refresh_pending
    qtbot.waitUntil(lambda: not view.refresh_pending, timeout=2000)
    assert len(calls) == 1
    drawn = view.points._data["a_bg_color"]
    np.testing.assert_allclose(drawn, view.colors(), atol=1e-6)
    assert view.view.camera.rect == zoomed


def test_reference_cells_are_drawn_at_scanpys_density():
    from napari_cellmapper.widgets.embedding.panel import _point_size

    assert _point_size(300, (1000, 260)) == 8.0  # few cells: the largest discs
    assert _point_size(100_000, (344, 140)) == 2.0  # many cells in a small view: the smallest
    middle = _point_size(20_000, (1000, 260))
    assert 2.0 < middle < 8.0
    # the discs cover about 1.45 times the canvas, as scanpy's 120000 / n pt² does
    assert np.isclose(20_000 * np.pi * middle**2 / 4, 1.45 * 1000 * 260, rtol=1e-6)
    assert _point_size(20_000, (2000, 520)) > middle  # a larger view, larger discs


def test_many_reference_cells_are_drawn_as_a_raster_until_zoomed_in(shown_demo, qtbot, monkeypatch):
    """The embedding's cells are one textured quad (viewer.overview) in their colours while the
    raster stays within its size; zoomed far in (the cells keep their size on screen), points."""
    viewer, widget = _mapped(shown_demo, qtbot)
    view = widget.open_embedding()
    qtbot.wait(200)
    monkeypatch.setattr(view, "_refresh", lambda: None)  # keep the cells below
    from napari_cellmapper.widgets.embedding import panel

    monkeypatch.setattr(panel, "LARGE_LAYER", 1000)  # the raster is for large references
    # more cells than the demo's, a few pixels each (grey: not the reference's)
    many = np.random.default_rng(0).uniform(0, 10, (4_000, 2)).astype(np.float32)
    view.xy, view.selected = many, np.zeros(len(many), bool)
    view._draw_marked(moved=True)
    (x0, y0), (x1, y1) = many.min(0), many.max(0)
    view.view.camera.set_range(x=(x0, x1), y=(y0, y1))
    qtbot.waitUntil(lambda: view.overview.shown, timeout=2000)  # built once the camera rests
    assert not view.points.visible
    raster = (view.canvas.render()[..., :3].astype(int).sum(-1) > 100).sum()
    view.overview.source.screen_per_data = lambda: None  # as drawn without the raster
    view.overview.update()
    assert view.points.visible
    points = (view.canvas.render()[..., :3].astype(int).sum(-1) > 100).sum()
    assert 0.7 * points < raster < 2.5 * points  # the grey cells cover the view alike
    del view.overview.source.screen_per_data  # the class's method again
    view.overview.update()
    assert view.overview.shown
    view.view.camera.zoom(0.01)  # 100 times closer: a raster would be too large, points again
    qtbot.wait(50)
    assert not view.overview.shown and view.points.visible
