"""napari_cellmapper.io.reference: reading the reference AnnData."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io.reference import read_reference


def _adata(n: int = 5) -> AnnData:
    adata = AnnData(
        X=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        obs=pd.DataFrame({"cell_type": pd.Categorical(["b", "a"] * (n // 2) + ["b"] * (n % 2))},
                         index=[f"r{i}" for i in range(n)]),
    )  # fmt: skip
    adata.uns["cell_type_colors"] = ["#ff0000", "#00ff00"]
    return adata


def test_read_h5ad(tmp_path):
    path = tmp_path / "ref.h5ad"
    _adata().write_h5ad(path)
    ref = read_reference(path)
    assert ref.shape == (5, 2) and not ref.isbacked
    assert list(ref.obs["cell_type"].cat.categories) == ["a", "b"]
    np.testing.assert_array_equal(ref.X, _adata().X)


def test_read_anndata_zarr(tmp_path):
    path = tmp_path / "ref.zarr"
    _adata().write_zarr(path)
    assert read_reference(path).shape == (5, 2)


def test_read_table_of_spatialdata(tmp_path, io_toy_path):
    from spatialdata import SpatialData

    path = tmp_path / "one_table.zarr"
    SpatialData(tables={"reference": _adata()}).write(path)
    ref = read_reference(path)  # the only table: no name needed
    assert ref.shape == (5, 2)
    assert read_reference(path, table="reference").obs_names.tolist() == [f"r{i}" for i in range(5)]
    t = read_reference(io_toy_path, table="t_circles")
    assert t.obs_names.tolist() == ["a", "b", "c"]


def test_spatialdata_with_several_tables_needs_a_name(io_toy_path):
    with pytest.raises(CellMapperInputError, match=r"several tables .*table="):
        read_reference(io_toy_path)


def test_unknown_table_lists_available(io_toy_path):
    with pytest.raises(CellMapperInputError, match=r"Unknown table 'nope'.*'t_circles'"):
        read_reference(io_toy_path, table="nope")


def test_spatialdata_without_tables(tmp_path):
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    path = tmp_path / "no_tables.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image2DModel.parse(np.zeros((1, 4, 4), dtype=np.uint8), dims=("c", "y", "x"))
        SpatialData(images={"img": image}).write(path)
    with pytest.raises(CellMapperInputError, match="has no tables"):
        read_reference(path)


def test_missing_path(tmp_path):
    with pytest.raises(CellMapperInputError, match="does not exist"):
        read_reference(tmp_path / "missing.h5ad")


def test_not_h5ad_file(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("a,b\n")
    with pytest.raises(CellMapperInputError, match="not an .h5ad file"):
        read_reference(path)


def test_corrupt_h5ad(tmp_path):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(CellMapperInputError, match="could not be read"):
        read_reference(path)


def test_table_with_h5ad_is_refused(tmp_path):
    path = tmp_path / "ref.h5ad"
    _adata().write_h5ad(path)
    with pytest.raises(CellMapperInputError, match="only applies to SpatialData"):
        read_reference(path, table="x")


def test_directory_that_is_no_store(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(CellMapperInputError, match="neither an .h5ad file nor"):
        read_reference(tmp_path / "folder")
