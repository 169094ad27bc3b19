"""napari_cellmapper.io.spatial: describing a SpatialData query and one coordinate per cell."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import spatial

# ---------------------------------------------------------------------------------- describe


def test_describe_lists_tables_regions_and_coordinate_systems(io_toy):
    summary = spatial.describe(io_toy)
    assert set(summary.tables) >= {"t_circles", "t_labels", "t_plain", "t_multi"}
    assert set(summary.coordinate_systems) == {"global", "local"}
    assert summary.images == ()
    assert set(summary.shapes) == {"circles", "polygons"}
    info = summary.tables["t_circles"]
    assert info.regions == ("circles",)
    assert (info.region_key, info.instance_key) == ("region", "cell_id")
    assert dict(info.element_kinds) == {"circles": "circles"}
    assert set(info.coordinate_systems) == {"global", "local"}
    assert info.annotates_anything
    assert not summary.tables["t_plain"].annotates_anything
    assert not summary.tables["t_ghost"].annotates_anything
    assert summary.tables["t_multi"].regions == ("circles", "polygons")
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.images = ("x",)  # type: ignore[misc]


def test_describe_from_path_and_images(tmp_path):
    from napari_cellmapper.datasets import write_spatial_example

    path = write_spatial_example(tmp_path / "ex.zarr")
    summary = spatial.describe(path)
    assert summary.images == ("tissue",)
    assert summary.path is not None and summary.path.name == "ex.zarr"
    assert summary.tables["table"].element_kinds == {"cells": "circles"}


@pytest.mark.parametrize(
    ("table", "kind"),
    [("t_circles", "circles"), ("t_polygons", "polygons"), ("t_points", "points"), ("t_labels", "labels")],
)
def test_element_kind(io_toy, table, kind):
    assert spatial.element_kind(io_toy, table) == kind


def test_element_kind_mixed_raises(io_toy):
    with pytest.raises(CellMapperInputError, match="different kinds"):
        spatial.element_kind(io_toy, "t_multi")


# ------------------------------------------------------------------------------- coordinates

EXPECTED_INTRINSIC = {
    # table rows are ids 12, 10, 11 -> centres (5, 6), (1, 2), (3, 4)
    "t_circles": [[5, 6], [1, 2], [3, 4]],
    "t_polygons": [[6, 3], [1, 1]],  # ids 1, 0
    "t_points": [[0.5, 1.5], [2, 2], [7, 1]],
    "t_labels": [[7, 5], [2, 1]],  # ids 7, 3; pixel centres at i + 0.5
    "t_labels_ms": [[2, 1], [7, 5]],
    "t_multi": [[3, 4], [1, 1], [5, 6], [6, 3]],
}


@pytest.mark.parametrize("table", sorted(EXPECTED_INTRINSIC))
def test_cell_coordinates_in_memory(io_toy, io_apply, table):
    expected = np.array(EXPECTED_INTRINSIC[table], float)
    local = spatial.cell_coordinates(io_toy, table, "local")
    assert local.dtype == np.float64 and local.shape == (len(expected), 2)
    np.testing.assert_allclose(local, expected)
    np.testing.assert_allclose(spatial.cell_coordinates(io_toy, table, "global"), io_apply(expected))


def test_cell_coordinates_hand_checked_numbers(io_toy):
    # x' = -y + 5, y' = 2x + 1: circle 12 at (5, 6) -> (-1, 11); label 7 at (7, 5) -> (0, 15)
    np.testing.assert_allclose(spatial.cell_coordinates(io_toy, "t_circles", "global")[0], [-1.0, 11.0])
    np.testing.assert_allclose(spatial.cell_coordinates(io_toy, "t_labels", "global")[0], [0.0, 15.0])


@pytest.mark.parametrize("table", sorted(EXPECTED_INTRINSIC))
def test_cell_coordinates_from_disk(io_toy_read, io_apply, table):
    """Read back: dask-backed labels in 3x3 chunks, points from parquet, multiscale labels."""
    sdata = io_toy_read
    expected = io_apply(np.array(EXPECTED_INTRINSIC[table], float))
    np.testing.assert_allclose(spatial.cell_coordinates(sdata, table, "global"), expected)


def test_label_centroids_chunked_matches_dense(io_build_toy):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 20, size=(37, 41)).astype(np.int32)
    import dask.array as da
    from spatialdata.models import Labels2DModel

    dense = spatial.label_centroids(Labels2DModel.parse(lab, dims=("y", "x")))
    chunked = spatial.label_centroids(Labels2DModel.parse(da.from_array(lab, chunks=(8, 5)), dims=("y", "x")))
    assert 0 not in dense.index
    assert list(dense.index) == list(range(1, 20))
    np.testing.assert_allclose(dense.to_numpy(), chunked.to_numpy())
    yy, xx = np.nonzero(lab == 5)
    np.testing.assert_allclose(dense.loc[5, ["x", "y"]].to_numpy(float), [xx.mean() + 0.5, yy.mean() + 0.5])


def test_example_circles_and_labels_agree():
    from napari_cellmapper.datasets import spatial_example

    circles = spatial.cell_coordinates(spatial_example("circles"), "table", "global")
    labels = spatial.cell_coordinates(spatial_example("labels"), "table", "global")
    np.testing.assert_allclose(circles, labels)


# ----------------------------------------------------------------------------- query_table


def test_query_table_is_a_copy_with_optional_coordinates(io_toy, io_apply):
    adata = spatial.query_table(io_toy, "t_circles", coordinate_system="global")
    assert list(adata.obs_names) == ["a", "b", "c"]
    np.testing.assert_allclose(adata.obsm["spatial"], io_apply([[5, 6], [1, 2], [3, 4]]))
    adata.obs["new"] = 1
    assert "new" not in io_toy.tables["t_circles"].obs
    assert "spatial" not in spatial.query_table(io_toy, "t_circles").obsm


# ------------------------------------------------------------------------------- bad inputs


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(CellMapperInputError, match="does not exist"):
        spatial.open_spatial(tmp_path / "nope.zarr")


def test_path_that_is_not_spatialdata(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.txt").write_text("x")
    with pytest.raises(CellMapperInputError, match="not a SpatialData zarr store"):
        spatial.open_spatial(tmp_path / "plain")
    (tmp_path / "ref.h5ad").write_bytes(b"\x89HDF")
    with pytest.raises(CellMapperInputError, match="reference, not a spatial query"):
        spatial.describe(tmp_path / "ref.h5ad")


def test_interrupted_swap_backup_is_reported(tmp_path):
    (tmp_path / "s.zarr.cellmapper-backup").mkdir()
    with pytest.raises(CellMapperInputError, match="Rename"):
        spatial.open_spatial(tmp_path / "s.zarr")


def test_unknown_table_lists_available(io_toy):
    with pytest.raises(CellMapperInputError, match=r"Unknown table 'nope'.*'t_circles'"):
        spatial.cell_coordinates(io_toy, "nope", "global")
    with pytest.raises(CellMapperInputError, match="Unknown table"):
        spatial.element_kind(io_toy, "nope")


@pytest.mark.parametrize(
    ("table", "message"),
    [("t_plain", "annotates nothing"), ("t_ghost", "'ghost', which is not an element")],
)
def test_table_that_annotates_nothing(io_toy, table, message):
    for func in (spatial.cell_coordinates, spatial.element_kind, spatial.query_table):
        with pytest.raises(CellMapperInputError, match=message):
            func(io_toy, table)


def test_unknown_coordinate_system_lists_available(io_toy):
    with pytest.raises(CellMapperInputError, match=r"Unknown coordinate system 'aligned'.*'global'.*'local'"):
        spatial.cell_coordinates(io_toy, "t_circles", "aligned")


def test_no_shared_cells(io_toy):
    with pytest.raises(CellMapperInputError, match="No shared cells"):
        spatial.cell_coordinates(io_toy, "t_noshared", "global")


def test_some_cells_missing(io_toy):
    with pytest.raises(CellMapperInputError, match="1 of 2 rows .* no cell"):
        spatial.cell_coordinates(io_toy, "t_partial", "global")


def test_open_spatial_reads_the_store(io_toy_path):
    sdata = spatial.open_spatial(io_toy_path, selection=("tables",))
    assert "t_circles" in sdata.tables


def test_errors_change_nothing(io_toy):
    before = {k: v.copy() for k, v in io_toy.tables.items()}
    for args in [("t_noshared", "global"), ("t_circles", "nope"), ("t_ghost", "global")]:
        with pytest.raises(CellMapperInputError):
            spatial.cell_coordinates(io_toy, *args)
    for name, table in before.items():
        assert table.obs.equals(io_toy.tables[name].obs)
        assert table.uns.keys() == io_toy.tables[name].uns.keys()


def test_kind_of_element_names_every_element():
    from napari_cellmapper.datasets import spatial_example

    sdata = spatial_example()
    kinds = {
        name: spatial.kind_of_element(sdata, name) for name in [*sdata.shapes, *sdata.labels, *sdata.images]
    }
    assert set(kinds.values()) <= {"circles", "polygons", "labels", "image"}
    assert "image" in kinds.values() and kinds.get("cells") in ("circles", "labels")
    with pytest.raises(KeyError, match="nope"):
        spatial.kind_of_element(sdata, "nope")


def _points_sdata(transform, *, with_z: bool = True):
    import pandas as pd
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import PointsModel, TableModel

    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
    if with_z:
        df["z"] = [10.0, 20.0, 30.0]
    points = PointsModel.parse(df, transformations={"global": transform})
    obs = pd.DataFrame({"region": pd.Categorical(["pts"] * 3), "cell_id": np.arange(3)})
    obs.index = obs.index.astype(str)
    table = TableModel.parse(
        AnnData(np.zeros((3, 1), np.float32), obs=obs),
        region="pts",
        region_key="region",
        instance_key="cell_id",
    )
    return SpatialData(points={"pts": points}, tables={"cells": table})


def test_a_3d_affine_on_points_keeps_its_z_term():
    from spatialdata.transformations import Affine

    # x' = x + 0.5 z, y' = 2 y - z + 1
    matrix = [[1, 0, 0.5, 0], [0, 2, -1, 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    sdata = _points_sdata(Affine(matrix, input_axes=("x", "y", "z"), output_axes=("x", "y", "z")))
    xy = spatial.cell_coordinates(sdata, "cells", "global")
    np.testing.assert_allclose(xy, [[6, -9], [12, -17], [18, -25]])


@pytest.mark.parametrize("with_z", [True, False])
def test_a_non_invertible_transformation_is_refused(with_z):
    from spatialdata.transformations import Scale

    sdata = _points_sdata(Scale([0.0, 1.0], axes=("x", "y")), with_z=with_z)
    with pytest.raises(CellMapperInputError, match=r"'global' is not invertible.*set_transformation"):
        spatial.cell_coordinates(sdata, "cells", "global")


def test_table_rows_without_a_cell_are_named_before_mapping():
    from spatialdata.transformations import Identity

    sdata = _points_sdata(Identity())
    table = sdata.tables["cells"]
    table.obs["cell_id"] = [0, 1, 7]
    with pytest.warns(
        UserWarning, match=r"1 of 3 rows of table 'cells' have no cell in element 'pts'.*\[7\]"
    ):
        adata = spatial.query_table(sdata, "cells")
    assert adata.n_obs == 3
    table.obs["cell_id"] = [5, 6, 7]
    with pytest.raises(CellMapperInputError, match="No shared cells between table 'cells' and element 'pts'"):
        spatial.query_table(sdata, "cells")
