"""The reference embedding in its own canvas, linked both ways to the tissue."""

from __future__ import annotations

import numpy as np
import pytest
from test_widgets_mapper import _wait_done, demo, errors  # noqa: F401 - fixtures

pytestmark = pytest.mark.gui


def _mapped(demo_pair, qtbot):
    viewer, widget = demo_pair
    widget.run()
    _wait_done(qtbot, widget)
    return viewer, widget


def test_lasso_on_the_embedding_rings_the_cells_mapped_there(demo, qtbot, errors):  # noqa: F811
    viewer, widget = _mapped(demo, qtbot)
    view = widget.open_embedding()
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
    to_canvas = view.view.scene.transform
    view.lasso_button.setChecked(True)

    class Event:
        button = 1

        def __init__(self, xy):
            self.pos = np.asarray(to_canvas.map(np.r_[xy, 0, 1]))[:2]

    view._on_press(Event(corners[0]))
    for corner in (*corners[1:], corners[0]):
        view._on_move(Event(corner))
    view._on_release(Event(corners[0]))
    in_box = (view.xy[:, 0] >= corners[0, 0]) & (view.xy[:, 0] <= corners[1, 0])
    in_box &= (view.xy[:, 1] >= corners[0, 1]) & (view.xy[:, 1] <= corners[2, 1])
    np.testing.assert_array_equal(view.selected, in_box)
    result = widget.result
    linked = viewer.layers["cellmapper linked cells"]
    expected = [
        row
        for row, hits in zip(result.rows, in_box[result.neighbor_indices], strict=True)
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
