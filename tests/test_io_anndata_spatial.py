"""A spatial AnnData (positions in obsm["spatial"], squidpy's convention) becomes a SpatialData query."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import anndata_spatial as A
from napari_cellmapper.io.spatial import cell_coordinates, query_table


def _visium(n: int = 40, with_image: bool = True) -> AnnData:
    rng = np.random.default_rng(0)
    adata = AnnData(
        X=sparse.random(n, 12, density=0.3, random_state=1, format="csr", dtype=np.float32),
        obs=pd.DataFrame({"batch": ["a"] * n}, index=[f"spot{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(12)]),
    )
    adata.obsm["spatial"] = rng.uniform(100, 900, (n, 2))  # x, y in full-resolution pixels
    if with_image:
        adata.uns["spatial"] = {
            "V1 mouse": {
                "images": {"hires": rng.random((100, 120, 3)).astype(np.float32)},
                "scalefactors": {"tissue_hires_scalef": 0.1, "spot_diameter_fullres": 90.0},
            }
        }
    return adata


def test_positions_become_circles_annotated_by_the_table():
    adata = _visium()
    before = (list(adata.obs.columns), list(adata.uns.keys()))
    sdata = A.spatialdata_from_anndata(adata)
    circles = sdata.shapes[A.SHAPES]
    np.testing.assert_allclose(np.c_[circles.geometry.x, circles.geometry.y], adata.obsm["spatial"])
    assert (circles["radius"] == 45.0).all()  # Visium's spot diameter / 2
    table = query_table(sdata, A.TABLE)
    assert table.n_obs == adata.n_obs and list(table.obs_names) == list(adata.obs_names)
    assert sdata.tables[A.TABLE].X is adata.X  # the matrices are shared, not copied
    np.testing.assert_allclose(cell_coordinates(sdata, A.TABLE), adata.obsm["spatial"])  # (x, y)
    assert (list(adata.obs.columns), list(adata.uns.keys())) == before  # the user's AnnData is unchanged


def test_the_image_is_scaled_to_full_resolution_pixels():
    from spatialdata.transformations import get_transformation

    sdata = A.spatialdata_from_anndata(_visium())
    (name,) = sdata.images.keys()
    assert name == "V1_mouse_hires_image"
    image = sdata.images[name]
    assert image.dtype == np.uint8 and image.shape == (3, 100, 120)
    matrix = get_transformation(image, "global").to_affine_matrix(("y", "x"), ("y", "x"))
    np.testing.assert_allclose(np.diag(matrix)[:2], [10.0, 10.0])


def test_without_scale_factors_the_radius_is_half_the_spacing():
    adata = _visium(with_image=False)[:4].copy()
    adata.obsm["spatial"] = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    sdata = A.spatialdata_from_anndata(adata)
    assert not sdata.images and (sdata.shapes[A.SHAPES]["radius"] == 5.0).all()


def test_missing_or_broken_positions_are_refused_with_the_fix():
    adata = _visium()
    del adata.obsm["spatial"]
    with pytest.raises(CellMapperInputError, match=r"obsm\['spatial'\].*squidpy"):
        A.spatialdata_from_anndata(adata)
    adata = _visium()
    adata.obsm["spatial"][3] = np.nan
    with pytest.raises(CellMapperInputError, match=r"1 cells have no finite position.*'spot3'"):
        A.spatialdata_from_anndata(adata)


def test_spatial_h5ad_is_read_as_a_query(tmp_path):
    path = tmp_path / "visium.h5ad"
    _visium().write_h5ad(path)
    sdata = A.read_spatial_h5ad(path)
    assert query_table(sdata, A.TABLE).n_obs == 40 and A.SHAPES in sdata.shapes
