"""napari_cellmapper.io.label_centroids: exact centroids in one blockwise pass, cached per raster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from spatialdata.models import Labels2DModel, Labels3DModel

from napari_cellmapper.io import label_centroids as lc


def _exact(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference centroids (x, y) by scipy, pixel centres at i + 0.5, for every positive label."""
    ids = np.unique(lab[lab > 0])
    com = np.asarray(ndimage.center_of_mass(np.ones_like(lab, float), lab, ids)) + 0.5
    return ids, com[:, ::-1]  # (y, x) -> (x, y)


@pytest.fixture
def lab():
    rng = np.random.default_rng(0)
    out = rng.integers(0, 40, size=(61, 53)).astype(np.int32)
    out[out == 7] = 0  # a missing id
    out[0, 0] = 1000  # a large id far from the others
    return out


def test_dense_and_chunked_multiscale_equal_scipy(lab):
    ids, xy = _exact(lab)
    dense = lc.label_centroids(Labels2DModel.parse(lab, dims=("y", "x")))
    multiscale = lc.label_centroids(
        Labels2DModel.parse(da.from_array(lab, chunks=(16, 11)), dims=("y", "x"), scale_factors=[2, 2])
    )
    for out in (dense, multiscale):
        assert out.index.tolist() == ids.tolist()
        np.testing.assert_allclose(out[["x", "y"]].to_numpy(), xy, rtol=1e-12)


def test_3d_labels_average_over_planes(lab):
    stack = np.stack([lab, np.roll(lab, 3, axis=1)])
    out = lc.label_centroids(
        Labels3DModel.parse(da.from_array(stack, chunks=(1, 20, 20)), dims=("z", "y", "x"))
    )
    ids, _ = _exact(stack[0])
    for label in (1, 5, 1000):
        _, yy, xx = np.nonzero(stack == label)
        np.testing.assert_allclose(
            out.loc[label, ["x", "y"]].to_numpy(float), [xx.mean() + 0.5, yy.mean() + 0.5]
        )


def test_cache_is_per_raster_and_returns_copies(lab, monkeypatch):
    lc.clear_cache()
    calls = []
    compute = lc._compute
    monkeypatch.setattr(lc, "_compute", lambda *a: calls.append(1) or compute(*a))
    first = lc.label_centroids(Labels2DModel.parse(da.from_array(lab, chunks=16), dims=("y", "x")))
    first.loc[1, "x"] = -1.0  # the caller's copy, not the cache
    again = lc.label_centroids(Labels2DModel.parse(da.from_array(lab.copy(), chunks=16), dims=("y", "x")))
    assert len(calls) == 1  # same content, same dask name: computed once
    assert again.loc[1, "x"] != -1.0
    other = lab.copy()
    other[other == 1] = 2
    lc.label_centroids(Labels2DModel.parse(da.from_array(other, chunks=16), dims=("y", "x")))
    assert len(calls) == 2
    lc.clear_cache()
    lc.label_centroids(Labels2DModel.parse(da.from_array(lab, chunks=16), dims=("y", "x")))
    assert len(calls) == 3


def test_cache_is_bounded(lab, monkeypatch):
    lc.clear_cache()
    monkeypatch.setattr(lc, "CACHE_SIZE", 2)
    for shift in range(4):
        lc.label_centroids(Labels2DModel.parse(da.from_array(lab + shift, chunks=16), dims=("y", "x")))
    assert len(lc._cache) == 2
    lc.clear_cache()


def test_non_integer_labels_are_refused():
    import xarray as xr

    from napari_cellmapper.core.validation import CellMapperInputError

    with pytest.raises(CellMapperInputError, match="integers"):
        lc.label_centroids(xr.DataArray(np.ones((4, 4), np.float32), dims=("y", "x")))


def test_cell_coordinates_place_labels_exactly_under_an_affine(lab):
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import TableModel
    from spatialdata.transformations import Affine

    from napari_cellmapper.io import spatial

    matrix = np.array([[0.5, -0.2, 10.0], [0.3, 0.8, -4.0], [0, 0, 1]])
    labels = Labels2DModel.parse(
        da.from_array(lab, chunks=(16, 16)),
        dims=("y", "x"),
        scale_factors=[2],
        transformations={"global": Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    ids, xy = _exact(lab)
    order = ids[::-1]  # table rows in another order than the ids
    table = ad.AnnData(
        X=np.zeros((order.size, 1), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * order.size), "label": order},
            index=[f"c{i}" for i in order],
        ),
    )
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="label")
    sdata = sd.SpatialData(labels={"cells": labels}, tables={"table": table})
    expected = xy[::-1] @ matrix[:2, :2].T + matrix[:2, 2]
    np.testing.assert_allclose(spatial.cell_coordinates(sdata, "table", "global"), expected, rtol=1e-12)


def test_concurrent_callers_compute_a_raster_once(lab, monkeypatch):
    import threading
    import time

    lc.clear_cache()
    calls = []
    compute = lc._compute

    def slow(*args):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one computes
        return compute(*args)

    monkeypatch.setattr(lc, "_compute", slow)
    element = Labels2DModel.parse(da.from_array(lab, chunks=16), dims=("y", "x"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(lc.label_centroids(element))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    for out in results[1:]:
        assert out.equals(results[0])
    lc.clear_cache()


def test_large_sparse_ids_are_summed_per_id_not_per_possible_id(lab, monkeypatch):
    monkeypatch.setattr(lc, "MAX_DENSE_ID", 500)  # the fixture's id 1000 makes its blocks sparse
    big = lab.astype(np.int64)
    big[big == 3] = 2**40  # an id no dense array could hold
    ids, xy = _exact(big)
    for element in (big, da.from_array(big, chunks=(16, 11))):
        lc.clear_cache()
        out = lc.label_centroids(Labels2DModel.parse(element, dims=("y", "x")))
        assert out.index.tolist() == ids.tolist()
        np.testing.assert_allclose(out[["x", "y"]].to_numpy(), xy, rtol=1e-12)
    stack = np.stack([big, np.roll(big, 3, axis=1)])
    lc.clear_cache()
    out = lc.label_centroids(
        Labels3DModel.parse(da.from_array(stack, chunks=(1, 20, 20)), dims=("z", "y", "x"))
    )
    _, yy, xx = np.nonzero(stack == 2**40)
    np.testing.assert_allclose(out.loc[2**40, ["x", "y"]].to_numpy(float), [xx.mean() + 0.5, yy.mean() + 0.5])
    lc.clear_cache()
