"""benchmarks/xenium_store.py: a tiny Xenium-like store (element names, transforms, table) and its
reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import xenium_store as xs  # noqa: E402

from napari_cellmapper.io import spatial  # noqa: E402

N = 400


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import spatialdata as sd

    path = xs.write_store(tmp_path_factory.mktemp("xenium") / "x.zarr", N, n_genes=60)
    return sd.read_zarr(path)


def test_elements_kinds_and_pyramids(store):
    assert set(store.images) == {"morphology_focus"}
    assert set(store.labels) == {"cell_labels"}
    assert set(store.shapes) == {"cell_circles", "cell_boundaries"}
    image = store.images["morphology_focus"]
    labels = store.labels["cell_labels"]
    assert [k for k in image.children] == ["scale0", "scale1", "scale2", "scale3"]
    assert [k for k in labels.children] == ["scale0", "scale1", "scale2", "scale3"]
    assert next(iter(image["scale0"].values())).dtype == np.uint16 and next(
        iter(image["scale0"].values())
    ).dims == ("c", "y", "x")
    assert next(iter(labels["scale0"].values())).dtype == np.int32
    assert spatial.kind_of_element(store, "cell_circles") == "circles"
    assert spatial.kind_of_element(store, "cell_boundaries") == "polygons"
    vertices = store.shapes["cell_boundaries"].geometry.apply(lambda p: len(p.exterior.coords) - 1)
    assert vertices.between(8, 16).all()
    assert (store.shapes["cell_circles"]["radius"] > 0).all()


def test_transforms_microns_to_pixels(store):
    from spatialdata.transformations import get_transformation

    for name in ("cell_circles", "cell_boundaries"):
        m = get_transformation(store.shapes[name], "global").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(m, np.diag([1 / xs.PIXEL_SIZE, 1 / xs.PIXEL_SIZE, 1]))
    for element in (store.images["morphology_focus"], store.labels["cell_labels"]):
        m = get_transformation(element, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(m, np.eye(3))


def test_table_annotates_labels_and_every_element_places_cells_alike(store):
    table = store.tables["table"]
    assert table.shape == (N, 60)
    assert table.X.format == "csr"
    assert spatial.element_kind(store, "table") == "labels"
    on_labels = spatial.cell_coordinates(store, "table", "global")
    np.testing.assert_allclose(on_labels, table.obsm["spatial"] / xs.PIXEL_SIZE, atol=1.0)
    assert labels_ids_match(store)
    for region, kind in (("cell_circles", "circles"), ("cell_boundaries", "polygons")):
        store.tables["other"] = xs.reannotate(table, region)
        assert spatial.element_kind(store, "other") == kind
        np.testing.assert_allclose(spatial.cell_coordinates(store, "other", "global"), on_labels, atol=1.0)
        del store.tables["other"]


def labels_ids_match(store) -> bool:
    raster = np.asarray(next(iter(store.labels["cell_labels"]["scale0"].values())))
    return set(np.unique(raster[raster > 0])) == set(store.tables["table"].obs["cell_labels"])


def test_reference_shares_the_panel_and_types(store):
    ref = xs.make_reference(300, 200, 60)
    panel = store.tables["table"].var_names
    assert set(panel) <= set(ref.var_names)
    assert ref.obs["cell_type"].cat.categories.size == xs.N_TYPES
    assert len(ref.uns["cell_type_colors"]) == xs.N_TYPES
    assert ref.X.nnz > 0


def test_layout_has_no_overlaps_and_exact_count():
    layout = xs.make_layout(1000, seed=3)
    assert layout.n == 1000
    assert np.count_nonzero(layout.grid) == 1000
    gx = (layout.x // xs.SPACING).astype(int)
    gy = (layout.y // xs.SPACING).astype(int)
    assert (layout.grid[gy, gx] == np.arange(1, 1001)).all()  # every cell inside its own square
    assert (layout.r < xs.SPACING / 2).all()


def test_unknown_region_is_refused():
    with pytest.raises(ValueError, match="region"):
        xs.make_sdata(10, region="transcripts")


def test_annotated_copy_shares_rasters_and_rewrites_only_the_table(store, tmp_path):
    import spatialdata as sd

    src = Path(store.path)
    out = xs.annotated_copy(src, "cell_circles", tmp_path / "circles.zarr")
    copy = sd.read_zarr(out)
    assert spatial.element_kind(copy, "table") == "circles"
    assert spatial.element_kind(sd.read_zarr(src), "table") == "labels"  # the original is untouched
    raster = next(p for p in (out / "labels" / "cell_labels").rglob("*") if p.is_file() and "c" in p.parts)
    assert raster.stat().st_nlink == 2  # a hard link, not a copy
    np.testing.assert_allclose(
        spatial.cell_coordinates(copy, "table", "global"),
        spatial.cell_coordinates(store, "table", "global"),
        atol=1.0,
    )


def test_labels_block_is_each_cells_disc():
    layout = xs.make_layout(500, seed=1)
    y0, y1, x0, x1 = 37, 301, 5, 260  # not aligned to the grid
    ys = np.arange(y0, y1) + 0.5
    xx = np.arange(x0, x1) + 0.5
    ids = layout.grid[(ys // xs.SPACING).astype(int)[:, None], (xx // xs.SPACING).astype(int)[None, :]]
    idx = np.maximum(ids - 1, 0)
    d2 = (xx[None, :] - layout.x[idx]) ** 2 + (ys[:, None] - layout.y[idx]) ** 2
    expected = np.where((ids > 0) & (d2 <= layout.r[idx] ** 2), ids, 0)
    np.testing.assert_array_equal(xs.labels_block(layout, y0, y1, x0, x1), expected)
    image = xs.image_block(layout, y0, y1, x0, x1)
    assert image.dtype == np.uint16
    assert image[expected > 0].mean() > 2 * image[expected == 0].mean()  # cells are brighter
    np.testing.assert_array_equal(image, xs.image_block(layout, y0, y1, x0, x1))  # deterministic
