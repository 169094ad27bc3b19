"""napari_cellmapper.datasets: shipped pbmc example and the synthetic spatial sample."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_cellmapper import datasets
from napari_cellmapper.io import spatial

ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = ROOT / "src" / "napari_cellmapper" / "_data" / datasets.PBMC_FILE


@pytest.fixture(scope="module")
def io_pbmc():
    return datasets.pbmc_example()


@pytest.fixture(scope="module")
def io_spatial_circles():
    return datasets.spatial_example()


def test_shipped_file_is_small():
    assert DATA_FILE.is_file()
    assert DATA_FILE.stat().st_size < 3_000_000


def test_pbmc_example_shapes_and_keys(io_pbmc):
    ref, query = io_pbmc
    assert ref.n_obs + query.n_obs == 700
    assert ref.n_vars == query.n_vars == 765
    assert ref.var_names.equals(query.var_names)
    assert not set(ref.obs_names) & set(query.obs_names)
    for adata in (ref, query):
        assert adata.X.dtype == np.float32
        assert adata.obsm["X_pca"].shape == (adata.n_obs, 50)
        np.testing.assert_array_equal(adata.obsm["X_joint"], adata.obsm["X_pca"])
        assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert "cell_type" not in query.obs
    cats = list(ref.obs["cell_type"].cat.categories)
    assert len(cats) == 10 and list(query.obs["cell_type_true"].cat.categories) == cats
    assert len(ref.uns["cell_type_colors"]) == 10
    assert list(query.uns["cell_type_true_colors"]) == list(ref.uns["cell_type_colors"])


def test_pbmc_split_is_stratified_70_30(io_pbmc):
    ref, query = io_pbmc
    n_ref = ref.obs["cell_type"].value_counts()
    n_query = query.obs["cell_type_true"].value_counts()
    for cell_type in n_ref.index:
        total = n_ref[cell_type] + n_query[cell_type]
        assert abs(n_query[cell_type] - 0.3 * total) <= 0.5 + 1e-9, cell_type


def test_pbmc_example_is_deterministic_and_fresh(io_pbmc):
    ref, query = io_pbmc
    ref2, query2 = datasets.pbmc_example()
    assert ref2.obs_names.equals(ref.obs_names) and query2.obs_names.equals(query.obs_names)
    np.testing.assert_array_equal(ref2.X, ref.X)
    ref2.obs["cell_type"] = "changed"
    ref2.X[:] = 0
    ref3, _ = datasets.pbmc_example()
    assert (ref3.obs["cell_type"] != "changed").all() and ref3.X.any()


def test_spatial_example_structure(io_spatial_circles):
    sdata = io_spatial_circles
    _, query = datasets.pbmc_example()
    summary = spatial.describe(sdata)
    assert summary.images == ("tissue",)
    assert set(summary.coordinate_systems) == {"global", "pixels"}
    info = summary.tables["table"]
    assert (info.regions, info.region_key, info.instance_key) == (("cells",), "region", "cell_id")
    assert spatial.element_kind(sdata, "table") == "circles"
    table = sdata.tables["table"]
    assert table.n_obs == query.n_obs and table.obs_names.equals(query.obs_names)
    assert list(table.obs["domain_true"].cat.categories) == list(datasets.DOMAINS)
    assert len(table.uns["domain_true_colors"]) == len(datasets.DOMAINS)
    assert "X_joint" in table.obsm and table.obs["cell_type_true"].equals(query.obs["cell_type_true"])
    image = sdata.images["tissue"]["scale0"]["image"]
    assert image.shape == (3, datasets.IMAGE_SIZE, datasets.IMAGE_SIZE) and image.dtype == np.uint8
    assert (sdata.shapes["cells"]["radius"] == datasets.CELL_RADIUS).all()


def test_spatial_example_transform_and_planted_domains(io_spatial_circles):
    sdata = io_spatial_circles
    pixels = spatial.cell_coordinates(sdata, "table", "pixels")
    glob = spatial.cell_coordinates(sdata, "table", "global")
    np.testing.assert_allclose(glob, datasets.GLOBAL_SCALE * pixels + np.array(datasets.GLOBAL_TRANSLATION))
    assert (pixels >= 0).all() and (pixels <= datasets.IMAGE_SIZE).all()
    obs = sdata.tables["table"].obs
    # planted composition: every type only in the domains it prefers
    for cell_type, prefs in datasets.DOMAIN_PREFERENCES.items():
        assert set(obs.loc[obs["cell_type_true"] == cell_type, "domain_true"]) <= set(prefs), cell_type
    # domains are spatially compact: cells sit in their own domain's Voronoi region
    domain_map = datasets._domain_map(datasets.IMAGE_SIZE)
    codes = domain_map[pixels[:, 1].astype(int), pixels[:, 0].astype(int)]
    np.testing.assert_array_equal(codes, obs["domain_true"].cat.codes.to_numpy())
    d = np.sqrt(((pixels[:, None] - pixels[None]) ** 2).sum(-1)) + np.eye(len(pixels)) * 1e9
    assert d.min() >= datasets.MIN_CELL_DISTANCE


def test_spatial_example_is_deterministic(io_spatial_circles):
    again = datasets.spatial_example()
    other = datasets.spatial_example(seed=1)
    a = spatial.cell_coordinates(io_spatial_circles, "table", "global")
    np.testing.assert_array_equal(a, spatial.cell_coordinates(again, "table", "global"))
    assert not np.array_equal(a, spatial.cell_coordinates(other, "table", "global"))
    img = io_spatial_circles.images["tissue"]["scale0"]["image"].data.compute()
    np.testing.assert_array_equal(img, again.images["tissue"]["scale0"]["image"].data.compute())
    assert (
        io_spatial_circles.tables["table"].obs["domain_true"].equals(again.tables["table"].obs["domain_true"])
    )


def test_spatial_example_with_labels():
    sdata = datasets.spatial_example("labels")
    assert spatial.element_kind(sdata, "table") == "labels"
    labels = np.asarray(sdata.labels["cells"]["scale0"]["image"].data)
    n = sdata.tables["table"].n_obs
    assert set(np.unique(labels)) == set(range(n + 1))
    with pytest.raises(ValueError, match="circles' or 'labels"):
        datasets.spatial_example("polygons")  # type: ignore[arg-type]


def test_write_spatial_example(tmp_path):
    path = datasets.write_spatial_example(tmp_path / "example.zarr", cells="labels")
    assert spatial.element_kind(path, "table") == "labels"
    coords = spatial.cell_coordinates(path, "table", "global")
    assert coords.shape == (datasets.spatial_example().tables["table"].n_obs, 2)
    with pytest.raises(ValueError):
        datasets.write_spatial_example(path)  # exists; overwrite=False
    datasets.write_spatial_example(path, overwrite=True)
    assert spatial.element_kind(path, "table") == "circles"


@pytest.mark.slow
def test_make_example_data_reproduces_the_shipped_file():
    pytest.importorskip("scanpy")
    import anndata

    spec = importlib.util.spec_from_file_location(
        "make_example_data", ROOT / "tools" / "make_example_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    shipped = anndata.read_h5ad(DATA_FILE)
    assert built.obs_names.equals(shipped.obs_names)
    assert built.obs["split"].equals(shipped.obs["split"])
    np.testing.assert_array_equal(built.X, shipped.X)
    np.testing.assert_array_equal(built.obsm["X_pca"], shipped.obsm["X_pca"])
