"""The cells' raster that stands for their points at whole-tissue zoom (viewer.overview)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellmapper.viewer import overview as O
from napari_cellmapper.viewer import points as P


@pytest.mark.parametrize("zoom", [0.003, 0.03, 0.07, 0.5, 1.0, 3.7])
def test_a_raster_pixel_is_one_screen_pixel(zoom):
    assert zoom * O.raster_pixel(zoom) == pytest.approx(1.0)


def test_no_raster_pixel_without_a_zoom():
    assert np.isnan(O.raster_pixel(0.0)) and np.isnan(O.raster_pixel(float("nan")))


def test_each_cell_paints_its_own_disc_in_its_colour():
    coords = np.array([[10.0, 10.0], [10.0, 30.0], [40.0, 20.0]])
    grid = O.overview_grid(coords, 4.0, pixel=1.0)  # cells 4 px wide
    assert grid.stamp == 4 and grid.n_cells == 3
    colors = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0.5]], dtype=np.float32)
    raster = O.paint(grid, colors)
    assert raster.shape == (*grid.shape, 4) and raster.dtype == np.uint8
    for (y, x), color in zip(coords, colors, strict=True):
        i, j = (np.array([y, x]) - grid.origin).astype(int)
        np.testing.assert_array_equal(raster[i, j], np.rint(color * 255))
    painted = raster[..., 3] > 0
    assert painted.sum() == 3 * len(O._disc(4))  # discs apart: nothing else painted
    assert 10 <= len(O._disc(4)) <= 16


def test_cells_narrower_than_a_raster_pixel_keep_one():
    """A cell smaller than a raster pixel still covers one, at least one screen pixel at any zoom
    of its level, so it cannot fall between the screen's samples."""
    grid = O.overview_grid(np.array([[0.0, 0.0], [50.0, 50.0]]), 0.1, pixel=1.0)
    assert grid.stamp == O.MIN_STAMP == 1
    assert (O.paint(grid, np.ones((2, 4)))[..., 3] > 0).sum() == 2


def test_later_cells_cover_earlier_ones_as_points_do():
    coords = np.array([[5.0, 5.0], [5.2, 5.1]])
    grid = O.overview_grid(coords, 1.0, pixel=1.0)
    raster = O.paint(grid, np.array([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=np.float32))
    i, j = (coords[1] - grid.origin).astype(int)
    np.testing.assert_array_equal(raster[i, j], [0, 0, 255, 255])


def test_no_raster_for_wide_cells_a_too_large_raster_or_nothing_to_draw():
    coords = np.random.default_rng(0).uniform(0, 100, (50, 2))
    assert O.overview_grid(coords, 20.0, pixel=1.0) is None  # cells 20 px on screen: points
    assert O.overview_grid(coords * 100, 1.0, pixel=1.0) is None  # 10,000 px a side
    assert O.overview_grid(np.empty((0, 2)), 1.0, pixel=1.0) is None
    assert O.overview_grid(np.full((3, 2), np.nan), 1.0, pixel=1.0) is None
    assert O.overview_grid(coords, 1.0, pixel=float("nan")) is None
    assert O.overview_grid(np.zeros((3, 3)), 1.0, pixel=1.0) is None  # 3-D positions


def test_cells_without_a_position_are_left_out():
    coords = np.array([[1.0, 1.0], [np.nan, 3.0], [8.0, 8.0]])
    grid = O.overview_grid(coords, 1.0, pixel=1.0)
    assert set(np.unique(grid.cell)) == {0, 2}
    raster = O.paint(grid, np.eye(3, 4, dtype=np.float32) + [0, 0, 0, 1])
    assert (raster[..., 3] > 0).sum() == 2


def test_a_reused_raster_is_cleared():
    grid = O.overview_grid(np.array([[0.0, 0.0], [9.0, 9.0]]), 1.0, pixel=1.0)
    first = O.paint(grid, np.ones((2, 4), np.float32))
    again = O.paint(grid, np.array([[1, 0, 0, 1], [0, 0, 0, 0]], np.float32), out=first)
    assert again is first and (again[..., 3] > 0).sum() == 1


def _screen_yx(viewer, world_yx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Canvas pixel (row, column) of world (y, x) positions."""
    camera = viewer.scene.camera
    centre = np.asarray(camera.center, dtype=float)[-2:]
    return np.rint((world_yx - centre) * camera.zoom + np.array(shape[:2]) / 2).astype(int)


def _lit(viewer) -> np.ndarray:
    img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    return img


@pytest.mark.gui
def test_the_raster_stands_for_the_points_at_whole_tissue_zoom_only(make_napari_viewer, qtbot):
    """Zoomed out, the raster is drawn instead of the points, with the same colours where the
    points are; zoomed in, the points again; a recolouring repaints the raster; an affine places
    it with the points."""
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(3)
    n = 3000
    coords = rng.uniform(0, 2000, (n, 2)).astype(np.float32)
    kinds = pd.Categorical(rng.choice(["a", "b"], n))
    feats = pd.DataFrame({"t": kinds, "u": pd.Categorical(["c"] * n)})
    affine = np.array([[2.0, 0.0, 100.0], [0.0, 2.0, -50.0], [0.0, 0.0, 1.0]])
    colors = {"t": ["#ff0000", "#00ff00"], "u": ["#0000ff"]}
    layer = P.add_cell_points(
        viewer, coords, feats, "t", colors=colors, size=8.0, affine=affine, gl_points=True, overview=True
    )
    overview = P._OVERVIEWS[layer]
    viewer.reset_view()
    qtbot.waitUntil(lambda: overview.shown, timeout=2000)  # built once the camera rests
    assert overview._grid.pixel * viewer.scene.camera.zoom * 2 == pytest.approx(1.0)  # 1 px
    (node,) = [vis.node for vis in P._vispy_points_of(layer)]
    assert not node.points_markers.visible
    raster = _lit(viewer)

    overview.source.screen_per_data = lambda: None  # the points, as drawn without a raster
    overview.update()
    assert node.points_markers.visible and not overview.shown
    points = _lit(viewer)
    for img in (raster, points):  # red and green cells, nothing blue
        assert (img[..., 0] > 150).sum() > 500 and (img[..., 1] > 150).sum() > 500
        assert (img[..., 2] > 150).sum() == 0
    # every cell shows its own colour at its centre, drawn either way
    world = coords @ affine[:2, :2].T + affine[:2, 2]
    at = _screen_yx(viewer, world, raster.shape)
    inside = np.all((at >= 2) & (at < np.array(raster.shape[:2]) - 2), axis=1)
    want = np.where(np.asarray(kinds) == "a", 0, 1)  # red or green channel
    for img in (raster, points):
        got = np.array(
            [
                img[i - 1 : i + 2, j - 1 : j + 2, c].max()
                for (i, j), c in zip(at[inside], want[inside], strict=True)
            ]
        )
        assert (got > 150).mean() > 0.97

    del overview.source.screen_per_data  # the class's method again
    overview.update()
    assert overview.shown
    P.color_points_by(layer, "u")
    blue = _lit(viewer)
    assert (blue[..., 2] > 150).sum() > 500 and (blue[..., 0] > 150).sum() == 0

    viewer.scene.camera.zoom *= 8  # cells of tens of pixels: points
    assert not overview.shown and node.points_markers.visible
    viewer.scene.camera.zoom /= 8
    assert overview.shown  # the zoom's raster is kept
    viewer.scene.camera.zoom *= 1.2  # the last raster stands in at once, the new one follows
    assert overview.shown and overview._grid.pixel * viewer.scene.camera.zoom * 2 == pytest.approx(1.2)
    qtbot.waitUntil(
        lambda: overview._grid.pixel * viewer.scene.camera.zoom * 2 == pytest.approx(1.0), timeout=2000
    )
    layer.visible = False
    assert not overview.shown
    layer.visible = True
    assert overview.shown
    layer.symbol = "square"  # the raster draws discs: the points show the user's symbol
    assert not overview.shown and node.points_markers.visible
    layer.symbol = "disc"
    assert overview.shown


@pytest.mark.gui
def test_moved_or_resized_cells_rebuild_the_raster(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    coords = np.random.default_rng(1).uniform(0, 1000, (2000, 2)).astype(np.float32)
    layer = P.add_cell_points(viewer, coords, None, None, size=4.0, gl_points=True, overview=True)
    viewer.reset_view()
    overview = P._OVERVIEWS[layer]
    qtbot.waitUntil(lambda: overview.shown, timeout=2000)
    first = overview._grid
    assert overview.shown and first is not None
    P.replace_points(layer, coords + 500)
    assert overview._grid is not first and overview._grid.origin[0] > first.origin[0] + 400
    second = overview._grid
    layer.size = 2.0
    assert P.refresh_overview(layer)
    assert overview._grid is not second and overview._grid.stamp < second.stamp


def test_small_layers_keep_their_points(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = P.add_cell_points(viewer, np.zeros((10, 2)), None, None)
    assert layer not in P._OVERVIEWS
