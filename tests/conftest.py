"""Shared fixtures. io_* fixtures: small hand-made SpatialData objects for the io tests."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

# numba kernels compiled in the test process on first use, as before core.jit: deterministic paths,
# no background compiling process; tests of the other policies set it themselves
os.environ.setdefault("NAPARI_CELLMAPPER_JIT", "always")

# x' = -y + 5, y' = 2 x + 1 : a rotation-and-scale, so that a missing transform is obvious
IO_AFFINE = np.array([[0.0, -1.0, 5.0], [2.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def _apply_affine(xy: np.ndarray) -> np.ndarray:
    """IO_AFFINE applied to (n, 2) x, y."""
    xy = np.asarray(xy, float)
    return xy @ IO_AFFINE[:2, :2].T + IO_AFFINE[:2, 2]


def _table(ids, region, *, region_key="region", instance_key="cell_id", names=None):
    from spatialdata.models import TableModel

    n = len(ids)
    regions = [region] * n if isinstance(region, str) else list(region)
    obs = pd.DataFrame(
        {region_key: pd.Categorical(regions), instance_key: np.asarray(ids)},
        index=names if names is not None else [f"c{i}" for i in range(n)],
    )
    adata = AnnData(X=np.arange(n * 3, dtype=np.float32).reshape(n, 3), obs=obs)
    adata.var_names = ["g0", "g1", "g2"]
    declared = sorted(set(regions)) if not isinstance(region, str) else region
    return TableModel.parse(adata, region=declared, region_key=region_key, instance_key=instance_key)


def _build_toy(*, chunks: int | None = None):
    """A SpatialData with circles, polygons, points and labels, all with IO_AFFINE to "global".

    Intrinsic positions (x, y):
      circles (ids 10, 11, 12): (1, 2), (3, 4), (5, 6)
      polygons (ids 0, 1): squares [0,2]x[0,2] -> (1, 1), [4,8]x[2,4] -> (6, 3)
      points (index 0, 1, 2): (0.5, 1.5), (2, 2), (7, 1)
      labels (ids 3, 7) on a 6 x 8 (y, x) grid: label 3 = rows 0..1, cols 0..3 -> (2, 1);
        label 7 = rows 4..5, cols 6..7 -> (7, 5)  (pixel centres at i + 0.5)
    Tables: t_circles (rows in shuffled order), t_polygons, t_points, t_labels, t_multi
    (circles + polygons), t_plain (no spatialdata_attrs), t_ghost (annotates a missing element),
    t_noshared (ids that match nothing), t_partial (one id missing).
    """
    import dask.dataframe as dd
    import geopandas as gpd
    from shapely.geometry import Point, Polygon
    from spatialdata import SpatialData
    from spatialdata.models import Labels2DModel, PointsModel, ShapesModel
    from spatialdata.transformations import Affine, Identity

    def tf():
        return {
            "global": Affine(IO_AFFINE.tolist(), input_axes=("x", "y"), output_axes=("x", "y")),
            "local": Identity(),
        }

    circles = gpd.GeoDataFrame(
        {"radius": [0.5, 0.5, 0.5]},
        geometry=[Point(1, 2), Point(3, 4), Point(5, 6)],
        index=pd.Index([10, 11, 12]),
    )
    polys = gpd.GeoDataFrame(
        geometry=[Polygon([(0, 0), (2, 0), (2, 2), (0, 2)]), Polygon([(4, 2), (8, 2), (8, 4), (4, 4)])],
        index=pd.Index([0, 1]),
    )
    points = dd.from_pandas(pd.DataFrame({"x": [0.5, 2.0, 7.0], "y": [1.5, 2.0, 1.0]}), npartitions=1)
    lab = np.zeros((6, 8), dtype=np.int32)
    lab[0:2, 0:4] = 3
    lab[4:6, 6:8] = 7
    labels = Labels2DModel.parse(lab, dims=("y", "x"), transformations=tf(), chunks=chunks)
    labels_ms = Labels2DModel.parse(lab, dims=("y", "x"), transformations=tf(), scale_factors=[2])

    tables = {
        "t_circles": _table([12, 10, 11], "circles", names=["a", "b", "c"]),
        "t_polygons": _table([1, 0], "polygons"),
        "t_points": _table([0, 1, 2], "points"),
        "t_labels": _table([7, 3], "labels"),
        "t_labels_ms": _table([3, 7], "labels_ms"),
        "t_multi": _table([11, 0, 12, 1], ["circles", "polygons", "circles", "polygons"]),
        "t_plain": AnnData(X=np.zeros((2, 1), dtype=np.float32)),
        "t_ghost": _table([1, 2], "ghost"),
        "t_noshared": _table([98, 99], "circles"),
        "t_partial": _table([10, 99], "circles"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpatialData(
            shapes={
                "circles": ShapesModel.parse(circles, transformations=tf()),
                "polygons": ShapesModel.parse(polys, transformations=tf()),
            },
            points={"points": PointsModel.parse(points, transformations=tf())},
            labels={"labels": labels, "labels_ms": labels_ms},
            tables=tables,
        )


@pytest.fixture(scope="session")
def io_toy():
    """In-memory toy SpatialData (see _build_toy), shared: do not modify it."""
    return _build_toy()


@pytest.fixture(scope="session")
def io_toy_path(tmp_path_factory) -> Path:
    """The toy written to disk once per session (read it back, do not modify it)."""
    path = tmp_path_factory.mktemp("io_toy") / "toy.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _build_toy(chunks=3).write(path)
    return path


@pytest.fixture(scope="session")
def io_toy_read(io_toy_path):
    """The toy read back from disk (lazy labels in 3 x 3 chunks), shared: do not modify it."""
    import spatialdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spatialdata.read_zarr(io_toy_path)


def _tree_digest(path: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative file path: sha256} of every file under ``path`` (paths starting with ``exclude`` skipped)."""
    root = Path(path)
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            f = Path(dirpath) / name
            rel = f.relative_to(root).as_posix()
            if exclude and rel.startswith(exclude):
                continue
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture
def io_digest():
    """{relative path: sha256} of every file under a directory (see _tree_digest)."""
    return _tree_digest


@pytest.fixture
def io_apply():
    """IO_AFFINE (the toy's transform to "global") applied to (n, 2) x, y."""
    return _apply_affine


@pytest.fixture
def io_build_toy():
    """The toy builder, for tests that need a fresh copy with options."""
    return _build_toy
