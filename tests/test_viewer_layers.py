"""Viewer layer data: transforms, geometry per element kind, images, colours, regions, cell info."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellmapper.viewer.colors import color_info, rgba_for
from napari_cellmapper.viewer.selection import cell_info, inside_shapes
from napari_cellmapper.viewer.spatial_layers import cell_geometry, image_layer_data, table_rows


def _yx(xy: np.ndarray) -> np.ndarray:
    return np.asarray(xy, float)[:, ::-1]


def test_circles_geometry_in_table_order_with_transform(io_toy, io_apply):
    geometry = cell_geometry(io_toy, "t_circles", "circles", "global")
    assert geometry.kind == "circles"
    intrinsic = np.array([[5, 6], [1, 2], [3, 4]], float)  # ids 12, 10, 11 (table order)
    np.testing.assert_allclose(geometry.coords_yx, _yx(io_apply(intrinsic)))
    # IO_AFFINE scales areas by 2 -> radius scale sqrt(2); diameter = 2 r s
    np.testing.assert_allclose(geometry.sizes, 2 * 0.5 * np.sqrt(2.0))


def test_centre_tree_finds_each_cell_once_built(io_toy):
    geometry = cell_geometry(io_toy, "t_circles", "circles", "global")
    tree, ids = geometry.centre_tree
    assert geometry.centre_tree[0] is tree  # built once, kept with the geometry
    for index, yx in enumerate(geometry.coords_yx):
        assert ids[tree.query(yx)[1]] == index


def test_centre_tree_skips_cells_without_a_position():
    from napari_cellmapper.viewer.spatial_layers import CellGeometry

    coords = np.array([[0.0, 0.0], [np.nan, np.nan], [10.0, 10.0]])
    geometry = CellGeometry("points", "e", "global", np.arange(3), np.arange(3), coords)
    tree, ids = geometry.centre_tree
    assert tree.n == 2 and ids[tree.query([9.0, 9.0])[1]] == 2


def test_row_of_instance_finds_each_cell_by_its_label():
    from napari_cellmapper.viewer.spatial_layers import CellGeometry

    labels = np.array([907, 3, 41, 12, 5000])  # table order, not sorted
    geometry = CellGeometry("labels", "e", "global", np.arange(5), labels, np.zeros((5, 2)))
    assert [geometry.row_of_instance(int(v)) for v in labels] == [0, 1, 2, 3, 4]
    assert geometry.row_of_instance(0) is None and geometry.row_of_instance(6000) is None
    assert geometry.row_of_instance(40) is None  # between two labels
    empty = CellGeometry("labels", "e", "global", np.arange(0), np.arange(0), np.zeros((0, 2)))
    assert empty.row_of_instance(1) is None
    named = np.array(["b-1", "a-7", "c-2"], dtype=object)  # shapes' ids may be text (Xenium's)
    circles = CellGeometry("circles", "e", "global", np.arange(3), named, np.zeros((3, 2)))
    assert circles.row_of_instance("a-7") == 1 and circles.row_of_instance(0) is None


def test_spacing_is_the_median_nearest_neighbour_distance():
    from napari_cellmapper.viewer.spatial_layers import CellGeometry

    yy, xx = np.mgrid[0:30, 0:40]
    coords = np.column_stack([yy.ravel() * 10.0, xx.ravel() * 10.0])
    coords[5] = np.nan  # a cell without a position is left out
    geometry = CellGeometry("labels", "e", "global", np.arange(len(coords)), np.arange(len(coords)), coords)
    assert geometry.spacing == pytest.approx(10.0)
    one = CellGeometry("points", "e", "global", np.arange(1), np.arange(1), np.zeros((1, 2)))
    assert one.spacing == 1.0


def test_display_obs_prepared_once_per_obs_and_columns(monkeypatch):
    """The cells' hover features (text made categorical) are kept with the geometry for the same
    obs and columns, so a background reader can prepare them; a change of either recomputes."""
    import pandas as pd

    from napari_cellmapper.viewer import spatial_layers
    from napari_cellmapper.viewer.spatial_layers import CellGeometry

    made = []
    display = spatial_layers.display_features
    monkeypatch.setattr(spatial_layers, "display_features", lambda obs: made.append(1) or display(obs))
    obs = pd.DataFrame(
        {"cell_id": [f"c{i}" for i in range(4)], "n": [1.0, 2.0, 3.0, 4.0], "region": ["r"] * 4},
        index=[f"i{i}" for i in range(4)],
    )
    geometry = CellGeometry("points", "e", "global", np.array([3, 1]), np.arange(2), np.zeros((2, 2)))
    features = geometry.display_obs(obs)
    assert list(features["cell_id"]) == ["c3", "c1"] and list(features["n"]) == [4.0, 2.0]
    assert isinstance(features["cell_id"].dtype, pd.CategoricalDtype)
    assert isinstance(features.index, pd.RangeIndex)
    features["extra"] = 1  # a caller's change stays its own
    again = geometry.display_obs(obs)
    assert "extra" not in again.columns
    assert len(made) == 1  # not computed again
    obs["score"] = [0.1, 0.2, 0.3, 0.4]  # a new column: computed again
    assert list(geometry.display_obs(obs)["score"]) == [0.4, 0.2]
    other = obs.copy()
    other["n"] = [9.0, 9.0, 9.0, 9.0]  # another obs with the same columns: computed again
    assert list(geometry.display_obs(other)["n"]) == [9.0, 9.0]
    assert len(made) == 3


def test_polygons_points_labels_geometry(io_toy, io_apply):
    polys = cell_geometry(io_toy, "t_polygons", "polygons", "global")
    assert polys.kind == "polygons" and len(polys.polygons) == 2
    np.testing.assert_allclose(polys.coords_yx, _yx(io_apply(np.array([[6, 3], [1, 1]], float))))
    points = cell_geometry(io_toy, "t_points", "points", "global")
    np.testing.assert_allclose(points.coords_yx, _yx(io_apply(np.array([[0.5, 1.5], [2, 2], [7, 1]]))))
    labels = cell_geometry(io_toy, "t_labels", "labels", "global")
    assert labels.kind == "labels"
    # label 7 at pixel rows 4..5, cols 6..7 -> centre (y, x) = (5, 7): SpatialData's pixel i
    # covers [i, i + 1] (issue 11 defect 7: the same convention as the rasters drawn)
    np.testing.assert_allclose(labels.coords_yx[0], _yx(io_apply(np.array([[7.0, 5.0]])))[0])


def test_multi_region_table_rows(io_toy):
    table = io_toy.tables["t_multi"]
    np.testing.assert_array_equal(table_rows(table, "circles"), [0, 2])
    np.testing.assert_array_equal(table_rows(table, "polygons"), [1, 3])


def test_image_layer_data_multiscale_rgb_affine():
    from napari_cellmapper.datasets import spatial_example

    sdata = spatial_example()
    data, meta, kind = image_layer_data(sdata, "tissue", "global")
    assert kind == "image" and meta["multiscale"] and meta["rgb"]
    assert len(data) == 2 and data[0].shape[-1] == 3
    # x' = 2x + 100, y' = 2y + 50  ->  in (y, x): diag(2, 2), translation (50, 100), after the
    # half-pixel shift (napari centres pixel i at i, SpatialData at i + 0.5; issue 11 defect 7)
    np.testing.assert_allclose(meta["affine"], [[2, 0, 51], [0, 2, 101], [0, 0, 1]])
    data, meta, _ = image_layer_data(sdata, "tissue", "pixels")
    np.testing.assert_allclose(meta["affine"], [[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])


def test_rgba_categorical_uses_palette_and_grey_for_missing():
    values = pd.Series(pd.Categorical(["a", "b", None, "a"], categories=["a", "b"]))
    rgba = rgba_for(values, ["#ff0000", "#0000ff"])
    np.testing.assert_allclose(rgba[0], [1, 0, 0, 1])
    np.testing.assert_allclose(rgba[1], [0, 0, 1, 1])
    assert rgba[2][0] == pytest.approx(0xD3 / 255, abs=1e-3)
    info = color_info(values, "x", ["#ff0000", "#0000ff"])
    assert info.categorical and [e[0] for e in info.entries][:2] == ["a", "b"]


def test_rgba_continuous_limits():
    info = color_info(pd.Series([0.2, 0.8, np.nan]), "conf")
    assert not info.categorical and info.clim == (0.2, 0.8)
    rgba = rgba_for(pd.Series([0.2, 0.8, np.nan]), clim=info.clim)
    assert rgba.shape == (3, 4) and not np.allclose(rgba[0], rgba[1])


def test_inside_shapes_polygon_rectangle_ellipse():
    coords = np.array([[1, 1], [5, 5], [9, 9], [1, 9]], float)
    square = np.array([[0, 0], [0, 6], [6, 6], [6, 0]], float)
    np.testing.assert_array_equal(inside_shapes(coords, [square]), [True, True, False, False])
    ellipse = np.array([[8, 8], [8, 10], [10, 10], [10, 8]], float)
    np.testing.assert_array_equal(
        inside_shapes(coords, [square, ellipse], ["rectangle", "ellipse"]), [True, True, True, False]
    )
    line = np.array([[0, 0], [10, 10]], float)
    assert not inside_shapes(coords, [line], ["line"]).any()


def test_cell_info_top3_and_neighbours():
    from anndata import AnnData

    table = AnnData(np.zeros((2, 1), np.float32))
    table.obs["ct_pred"] = pd.Categorical(["B", "T"])
    table.obs["ct_conf"] = [0.7, 0.9]
    table.obsm["ct_proba"] = pd.DataFrame(
        [[0.7, 0.2, 0.1, 0.0], [0.05, 0.9, 0.05, 0.0]], columns=["B", "T", "NK", "M"], index=table.obs_names
    )

    class _Result:
        rows = np.array([0, 1])
        neighbor_indices = np.array([[3, 4], [5, -1]])

    info = cell_info(table, 0, "ct", _Result())
    assert info.label == "B" and info.confidence == pytest.approx(0.7)
    assert [c for c, _ in info.top] == ["B", "T", "NK"]
    np.testing.assert_array_equal(info.neighbors, [3, 4])
    reference_obs = pd.DataFrame({"ct": ["B"] * 6})
    text = info.as_text(reference_obs)
    assert "ct: B" in text and "top: B 0.70" in text and "2 reference neighbours" in text


def test_image_pixel_centre_matches_spatialdata_convention():
    """Issue 11 defect 7: SpatialData's pixel (i, j) covers [i, i + 1] x [j, j + 1]; the cells'
    coordinates use that convention, so its centre (i + 0.5, j + 0.5) must land on pixel (i, j)."""
    from napari.layers import Image
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    raster = np.zeros((1, 10, 12), dtype=np.uint8)
    sdata = SpatialData(
        images={
            "img": Image2DModel.parse(
                raster, dims=("c", "y", "x"), transformations={"um": Scale([4.0, 4.0], axes=("y", "x"))}
            )
        }
    )
    data, meta, _ = image_layer_data(sdata, "img", "um")
    layer = Image(data, affine=meta["affine"])
    centre_um = 4.0 * np.array([3.5, 4.5])  # centre of pixel (3, 4), in micrometres
    np.testing.assert_allclose(layer.world_to_data(centre_um), [3.0, 4.0])


@pytest.fixture(scope="module")
def xenium_like():
    """A 300-cell Xenium-like store (benchmarks/xenium_store.py) whose table annotates the circles."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import xenium_store

    return xenium_store.make_sdata(300, n_genes=60, region="cell_circles")


def test_a_table_draws_as_every_element_of_its_cells(xenium_like):
    """A stock Xenium table annotates one element (circles or labels); the same cells are drawn
    as the others too, through the column naming them in each (issue 15)."""
    from napari_cellmapper.viewer.spatial_layers import cell_elements, link_column

    sdata = xenium_like
    assert cell_elements(sdata, "table") == ["cell_circles", "cell_boundaries", "cell_labels"]
    assert [link_column(sdata, "table", e) for e in cell_elements(sdata, "table")] == [
        "cell_id",
        "cell_id",
        "cell_labels",
    ]
    circles = cell_geometry(sdata, "table", "cell_circles", "global")
    for element, kind in (("cell_boundaries", "polygons"), ("cell_labels", "labels")):
        geometry = cell_geometry(sdata, "table", element, "global")
        assert (geometry.kind, geometry.element) == (kind, element)
        np.testing.assert_array_equal(geometry.rows, circles.rows)
        np.testing.assert_allclose(geometry.coords_yx, circles.coords_yx, atol=1.5)  # the same cells


def test_linked_shapes_in_another_order_and_unrelated_elements(xenium_like):
    import geopandas as gpd
    import spatialdata as sd
    from spatialdata.models import ShapesModel

    from napari_cellmapper.viewer.spatial_layers import cell_elements, link_column

    sdata = sd.SpatialData(
        labels=dict(xenium_like.labels), shapes=dict(xenium_like.shapes), tables=dict(xenium_like.tables)
    )
    boundaries = sdata.shapes["cell_boundaries"]
    shuffled = boundaries.iloc[np.random.default_rng(1).permutation(len(boundaries))]
    sdata.shapes["shuffled"] = ShapesModel.parse(shuffled.copy())
    sdata.shapes["fields"] = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": [5.0, 5.0]}, geometry=gpd.points_from_xy([0, 10], [0, 10]))
    )
    assert link_column(sdata, "table", "shuffled") == "cell_id"
    assert link_column(sdata, "table", "fields") is None
    assert "shuffled" in cell_elements(sdata, "table") and "fields" not in cell_elements(sdata, "table")
    ordered = cell_geometry(sdata, "table", "cell_boundaries", "global")
    np.testing.assert_allclose(
        cell_geometry(sdata, "table", "shuffled", "global").coords_yx, ordered.coords_yx
    )
    with pytest.raises(ValueError, match="does not annotate 'fields'.*'cell_circles'"):
        cell_geometry(sdata, "table", "fields", "global")


def test_only_a_one_element_table_links_others(io_toy):
    from napari_cellmapper.viewer.spatial_layers import cell_elements, table_attrs

    for name, table in io_toy.tables.items():
        _, _, regions = table_attrs(table)
        if len(regions) > 1:
            assert cell_elements(io_toy, name) == [r for r in regions if r in io_toy]
            return
    pytest.fail("the toy store has no table annotating several elements")
