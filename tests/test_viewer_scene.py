"""The scene draws every cell kind on the tissue and recolours in place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


def test_polygons_and_points_drawn_with_transform(make_napari_viewer, io_toy, io_apply):
    from napari_cellmapper.viewer.scene import CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    layer = scene.show_query(io_toy, "t_polygons", "polygons", "global")
    assert layer.__class__.__name__ == "Shapes" and layer.nshapes == 2
    # first table row is polygon id 1: square [4,8]x[2,4] -> corners transformed
    corners = io_apply(np.array([[4, 2], [8, 2], [8, 4], [4, 4]], float))[:, ::-1]
    np.testing.assert_allclose(np.sort(layer.data[0], axis=0), np.sort(corners, axis=0))
    layer.features = layer.features.assign(kind=pd.Categorical(["a", "b"]))
    info = scene.color_cells("kind")
    assert info.categorical and [e[0] for e in info.entries] == ["a", "b"]
    assert not np.allclose(layer.face_color[0], layer.face_color[1])
    assert scene.cell_at(scene.geometry.coords_yx[1]) == 1
    points = scene.show_query(io_toy, "t_points", "points", "global")
    assert points.__class__.__name__ == "Points" and len(points.data) == 3
    assert layer not in viewer.layers  # the previous cells layer was replaced


def test_labels_drawn_with_affine_and_coloured(make_napari_viewer):
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    sdata = spatial_example("labels")
    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    layer = scene.show_query(sdata, "table", "cells", "global")
    from napari.layers import Labels

    assert isinstance(layer, Labels) and layer.multiscale
    np.testing.assert_allclose(layer.affine.affine_matrix, [[2, 0, 51], [0, 2, 101], [0, 0, 1]])
    assert "index" in layer.features and len(layer.features) == sdata.tables["table"].n_obs
    image = viewer.layers["tissue"]
    np.testing.assert_allclose(image.affine.affine_matrix, layer.affine.affine_matrix)
    info = scene.color_cells("cell_type_true")
    assert info.categorical
    first_id = int(layer.features["index"].iloc[0])
    colours = sdata.tables["table"].uns["cell_type_true_colors"]
    cats = list(sdata.tables["table"].obs["cell_type_true"].cat.categories)
    expected = colours[cats.index(str(layer.features["cell_type_true"].iloc[0]))]
    from matplotlib.colors import to_rgba

    # the raster shows colour codes: the first cell's code has its category's colour
    code = int(layer.cell_codes.encode(np.array([first_id]))[0])
    np.testing.assert_allclose(layer.colormap.map(code)[:3], to_rgba(expected)[:3], atol=1e-2)
    assert len(layer.colormap.color_dict) <= len(cats) + 3  # one entry per colour, not per cell
    # clicking the centre of a cell finds it through the (raw) label value
    assert scene.cell_at(scene.geometry.coords_yx[0]) == 0
    assert layer.get_value(scene.geometry.coords_yx[0], world=True)[-1] == first_id


def test_reference_placed_beside_tissue_and_neighbours_highlighted(make_napari_viewer):
    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    scene.show_query(spatial_example(), "table", "cells", "global")
    reference, _ = pbmc_example()
    layer = scene.show_reference(reference)
    lo, hi = scene.tissue_bounds()
    extent = layer.extent.world
    assert extent[0][1] > hi[1]  # right of the tissue
    assert extent[1][0] - extent[0][0] == pytest.approx(hi[0] - lo[0], rel=1e-3)
    highlight = scene.highlight_neighbors(np.array([0, 5, -1]))
    assert len(highlight.data) == 2
    np.testing.assert_allclose(highlight.scale, layer.scale)


def test_click_uses_no_deprecated_napari_api(make_napari_viewer):
    """Issue 11 defect 8: napari 0.9 deprecates ``viewer.camera``; a click must not touch it."""
    import warnings

    from napari_cellmapper.viewer.scene import CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    clicked: list[int] = []
    callback = scene.click_callback(clicked.append)

    class Event:
        button = 1
        type = "mouse_press"
        position = (0.0, 0.0)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*deprecated attribute.*")
        generator = callback(viewer, Event())
        next(generator)
        Event.type = "mouse_release"
        with pytest.raises(StopIteration):
            next(generator)
    assert clicked == []  # no query shown: nothing to select


def test_single_scale_labels_are_not_left_paintable(make_napari_viewer):
    """Issue 11 defect 4: a click-drag on the cells must not edit the segmentation."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import get_transformation

    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    sdata = spatial_example("labels")
    multiscale = sdata.labels["cells"]
    level0 = multiscale["scale0"]["image"]
    sdata.labels["cells"] = Labels2DModel.parse(
        level0.data, dims=("y", "x"), transformations=get_transformation(level0, get_all=True)
    )
    viewer = make_napari_viewer()
    layer = CellMapperScene(viewer).show_query(sdata, "table", "cells", "global")
    assert not layer.multiscale
    assert not layer.editable and layer.mode == "pan_zoom"


def test_image_pixels_sit_under_the_cells(make_napari_viewer):
    """Issue 11 defect 7: a labels raster, the image and the cells' centres share one convention:
    a cell's centre lies on its own label in the drawn raster, and the image's pixel there."""
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    sdata = spatial_example("labels")
    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    layer = scene.show_query(sdata, "table", "cells", "global")
    image = viewer.layers["tissue"]
    ids = scene.geometry.instance_ids
    for i in range(0, len(ids), 7):
        centre = scene.geometry.coords_yx[i]
        pixel = np.floor(np.asarray(layer.world_to_data(centre))[-2:] + 0.5).astype(int)
        raster = np.asarray(layer.cell_codes.raw[0])  # the raw labels under the drawn codes
        assert int(raster[tuple(pixel)]) == int(ids[i])
        drawn = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        assert int(drawn[tuple(pixel)]) == int(layer.cell_codes.encode(np.array([ids[i]]))[0]) > 0
        np.testing.assert_allclose(image.world_to_data(centre)[-2:], layer.world_to_data(centre)[-2:])


def test_reference_placed_beside_the_image_not_over_it(make_napari_viewer):
    """Issue 11 defect 5: an image wider than the cells' bounds must not lie under the reference."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    sdata = spatial_example()
    wide = np.zeros((1, 50, 2000), dtype=np.uint8)  # as in blobs: an image far beyond the cells
    sdata.images["wide"] = Image2DModel.parse(
        wide, dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    scene.show_query(sdata, "table", "cells", "global")
    image = viewer.layers["wide"].extent.world[:, -2:]
    assert image[1][1] > 1.5 * float(np.nanmax(scene.geometry.coords_yx[:, 1]))
    layer = scene.show_reference(pbmc_example()[0])
    assert layer.extent.world[0][1] > image[1][1]  # the whole embedding right of the image


def test_set_cell_values_keeps_categories(make_napari_viewer, io_toy):
    """A categorical column added from table values stays categorical (its colours follow uns)."""
    from napari_cellmapper.viewer.scene import CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    layer = scene.show_query(io_toy, "t_points", "points", "global")
    values = pd.Series(pd.Categorical(["b", "a", "b"], categories=["b", "a", "unused"]))
    scene.set_cell_values("labels", values)
    column = layer.features["labels"]
    assert isinstance(column.dtype, pd.CategoricalDtype)
    assert list(column.cat.categories) == ["b", "a", "unused"]
    assert list(column.astype(str)) == list(values.astype(str).to_numpy()[scene.geometry.rows])
    scene.set_cell_values("numbers", np.arange(3.0))
    np.testing.assert_allclose(layer.features["numbers"], np.arange(3.0)[scene.geometry.rows])


def test_too_many_polygons_are_drawn_as_circles_with_outlines_in_view(
    make_napari_viewer, io_toy, qtbot, monkeypatch
):
    from napari_cellmapper.viewer import scene as scene_module
    from napari_cellmapper.viewer import spatial_layers

    monkeypatch.setattr(spatial_layers, "POLYGON_LIMIT", 1)  # the toy's 2 polygons are "too many"
    viewer = make_napari_viewer(show=True)
    scene = scene_module.CellMapperScene(viewer)
    layer = scene.show_query(io_toy, "t_polygons", "polygons", "global")
    assert layer.__class__.__name__ == "Points" and len(layer.data) == 2
    geometry = scene.geometry
    assert geometry.kind == "polygons" and geometry.drawn_as == "points" and geometry.polygons is None
    # a circle of each polygon's area: the first is 4 x 2 in element units, scaled by the transform
    y, x = geometry.outlines(np.array([0]))[0].T
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # shoelace
    np.testing.assert_allclose(geometry.sizes[0], 2 * np.sqrt(area / np.pi), rtol=1e-6)
    assert scene.cell_at(geometry.coords_yx[1]) == 1
    viewer.reset_view()
    qtbot.waitUntil(lambda: scene_module.OUTLINES in viewer.layers, timeout=5_000)  # after the camera settles
    outlines = viewer.layers[scene_module.OUTLINES]
    assert outlines.nshapes == 2 and viewer.layers.selection.active is not outlines
    np.testing.assert_allclose(outlines.data[0], geometry.outlines(np.array([0]))[0])
    np.testing.assert_allclose(outlines.face_color, layer.face_color)  # filled in the cells' colours
    layer.features = layer.features.assign(kind=pd.Categorical(["a", "b"]))
    scene.color_cells("kind")  # a recolour reaches the drawn polygons
    np.testing.assert_allclose(outlines.face_color, layer.face_color)
    assert not np.allclose(outlines.face_color[0], outlines.face_color[1])
    assert scene.update_outlines() == 2 and viewer.layers[scene_module.OUTLINES] is outlines  # in place
    np.testing.assert_allclose(outlines.face_color, layer.face_color)
    monkeypatch.setattr(scene_module, "OUTLINE_LIMIT", 1)  # too many in view: no outlines
    assert scene.update_outlines() == 0 and scene_module.OUTLINES not in viewer.layers
    scene.show_query(io_toy, "t_points", "points", "global")  # other cells: no outline watching
    assert scene.update_outlines() is None


def test_linked_cells_ringed_in_one_layer_updated_in_place(make_napari_viewer, monkeypatch):
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer import scene as scene_module
    from napari_cellmapper.viewer.scene import LINKED, CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    scene.show_query(spatial_example(), "table", "cells", "global")
    monkeypatch.setattr(scene_module, "LARGE_LAYER", 10)  # drawn as for a large sample
    rows = np.asarray(scene.geometry.rows)
    n_layers = len(viewer.layers)
    uploads = []
    first = scene.highlight_cells(rows[[3, 1, 7]])
    first.events.set_data.connect(lambda _: uploads.append(1))
    np.testing.assert_allclose(first.data, scene.geometry.coords_yx[[1, 3, 7]])
    (vis,) = [v for v in viewer.window._qt_viewer.canvas.layer_to_visual.values() if v.layer is first]
    assert vis.node.points_markers._method == "points"  # GL points: one vertex a ring
    for chosen in ([0, 2, 4, 6, 8, 10], [5], []):  # more, fewer, none
        uploads.clear()
        layer = scene.highlight_cells(rows[chosen])
        assert layer is first and viewer.layers[LINKED] is first and len(viewer.layers) == n_layers + 1
        np.testing.assert_allclose(layer.data.reshape(-1, 2), scene.geometry.coords_yx[chosen])
        assert uploads == [1]  # one upload to the canvas for the whole update
        assert len(vis.node.points_markers._data) == max(len(chosen), 1)  # napari draws 1 hidden when empty
        assert all(type(s) is str for s in layer._symbol)
    scene.highlight_cells(None)
    assert LINKED not in viewer.layers


def _drain(scene, timeout: float = 10.0) -> None:
    """Let the event loop run the scene's staged drawing steps."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while scene.drawing and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.005)
    assert not scene.drawing


@pytest.mark.parametrize("cells", ["circles", "labels"])
def test_large_query_drawn_over_several_turns(make_napari_viewer, cells):
    """Staged drawing (issue 15): the cells layer at once, hidden; then, one event-loop turn
    each, the images (below the cells), the cells shown, the empty selected-cell ring layer."""
    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.viewer.scene import SELECTED, CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    scene.show_reference(pbmc_example()[0])
    sdata = spatial_example(cells)
    layer = scene.show_query(sdata, "table", "cells", "global", staged=True)
    assert scene.drawing and not layer.visible
    assert "tissue" not in viewer.layers and SELECTED not in viewer.layers
    _drain(scene)
    assert layer.visible and layer is scene.cells_layer
    names = [lay.name for lay in viewer.layers]
    assert names.index("tissue") < names.index(layer.name) < names.index(SELECTED)
    # the reference was placed again beside the tissue with its image, not over the image
    image_right = np.asarray(viewer.layers["tissue"].extent.world)[1, -1]
    assert scene.reference_layer.extent.world[0][1] > image_right


def test_staged_steps_of_an_earlier_query_are_dropped(make_napari_viewer):
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer.scene import CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    first = spatial_example("circles", seed=1)
    scene.show_query(first, "table", "cells", "global", staged=True)
    second = spatial_example("circles", seed=2)
    layer = scene.show_query(second, "table", "cells", "global", staged=True)
    _drain(scene)
    images = [lay for lay in viewer.layers if lay.metadata.get("cellmapper_role") == "image"]
    assert [im.metadata["sdata"] for im in images] == [second]  # none of the first sample's
    assert layer.visible
    # stopped (the widget closes): nothing more is drawn
    n_layers = len(viewer.layers)
    hidden = scene.show_query(first, "table", "cells", "global", staged=True)
    scene.stop_drawing()
    assert not scene.drawing
    _drain(scene)
    assert not hidden.visible and len(viewer.layers) == n_layers  # the new cells replaced the old


def test_finish_drawing_runs_the_steps_now(make_napari_viewer):
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer.scene import SELECTED, CellMapperScene

    viewer = make_napari_viewer()
    scene = CellMapperScene(viewer)
    layer = scene.show_query(spatial_example(), "table", "cells", "global", staged=True)
    scene.finish_drawing()
    assert not scene.drawing and layer.visible and "tissue" in viewer.layers and SELECTED in viewer.layers
