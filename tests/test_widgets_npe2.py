"""npe2 manifest, reader, writer, sample data and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"


def test_manifest_validates_and_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-cellmapper"
    manifest.validate_imports()  # every python_name resolves
    contributions = manifest.contributions
    assert contributions.widgets and contributions.readers and contributions.writers
    assert {s.key for s in contributions.sample_data} >= {"example", "spatial_example", "reference_example"}
    assert (ROOT / "src" / "napari_cellmapper" / "napari.yaml").resolve() == MANIFEST.resolve()


def test_reader_dispatch(tmp_path):
    from napari_cellmapper.widgets._npe2 import get_reader

    assert get_reader(str(tmp_path / "nothing.tif")) is None
    (tmp_path / "plain.zarr").mkdir()
    assert get_reader(str(tmp_path / "plain.zarr")) is None


def test_sample_data_layers():
    from napari_cellmapper.widgets._npe2 import sample_both

    layers = sample_both()
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "points", "points"]
    image, cells, reference = layers
    assert image[1]["multiscale"] and image[1]["rgb"]
    assert cells[1]["metadata"]["cellmapper_role"] == "cells" and cells[1]["metadata"]["sdata"] is not None
    assert len(cells[0]) == 209 and "cell_type_true" in cells[1]["features"]
    np.testing.assert_allclose(cells[1]["size"], 2 * 3.0 * 2.0)  # radius 3 px, 2 microns per px
    assert reference[1]["metadata"]["adata"].n_obs == 491 and "cell_type" in reference[1]["features"]


@pytest.fixture(scope="module")
def example_paths(tmp_path_factory):
    from napari_cellmapper.datasets import pbmc_example, write_spatial_example

    root = tmp_path_factory.mktemp("npe2")
    spatial = write_spatial_example(root / "example.zarr")
    reference, _ = pbmc_example()
    reference.write_h5ad(root / "reference.h5ad")
    return spatial, root / "reference.h5ad"


def test_reader_reads_spatialdata_and_h5ad(example_paths):
    from napari_cellmapper.widgets._npe2 import get_reader

    spatial, h5ad = example_paths
    layers = get_reader(str(spatial))(str(spatial))
    assert [kind for _, _, kind in layers] == ["image", "points"]
    cells_meta = layers[1][1]["metadata"]
    assert cells_meta["path"] == str(spatial) and cells_meta["table"] == "table"
    # cells sit on the tissue: image affine and cell positions share the "global" system
    affine = layers[0][1]["affine"]
    assert np.all(layers[1][0].min(axis=0) >= affine[:2, 2])
    layers = get_reader(str(h5ad))(str(h5ad))
    assert layers[0][2] == "points" and layers[0][1]["metadata"]["adata"].n_obs == 491


def test_export_without_source_store_drops_unused_categories(tmp_path):
    """The full write (no source store) leaves out categories no cell has, with their colours."""
    import pandas as pd
    import spatialdata

    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.widgets._npe2 import export_query

    sdata = spatial_example()
    table = sdata.tables["table"]
    types = np.resize(["A", "B"], table.n_obs)
    table.obs["cell_type_pred"] = pd.Categorical(types, categories=["A", "Ghost", "B"])
    table.uns["cell_type_pred_colors"] = ["#aa0000", "#00aa00", "#0000aa"]
    written = spatialdata.read_zarr(export_query(sdata, "table", tmp_path / "out.zarr")).tables["table"]
    assert list(written.obs["cell_type_pred"].cat.categories) == ["A", "B"]
    assert list(written.uns["cell_type_pred_colors"]) == ["#aa0000", "#0000aa"]
    assert list(table.obs["cell_type_pred"].cat.categories) == ["A", "Ghost", "B"]  # in memory: unchanged
    assert len(table.uns["cell_type_pred_colors"]) == 3


@pytest.mark.gui
def test_writer_and_demo_run(make_napari_viewer, qtbot, example_paths, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications
    import spatialdata

    from napari_cellmapper.widgets._npe2 import get_reader, write_annotated
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

    monkeypatch.setattr(notifications, "show_info", lambda message: None)
    spatial, h5ad = example_paths
    viewer = make_napari_viewer()
    for path in (spatial, h5ad):
        for data, meta, kind in get_reader(str(path))(str(path)):
            viewer.add_layer(__import__("napari").layers.Layer.create(data, meta, kind))
    widget = CellMapperWidget(viewer)
    assert widget.query is not None and widget.query.path == str(spatial)
    widget.expression_check.setChecked(True)
    widget.run()
    qtbot.waitUntil(lambda: not widget.controller.is_running, timeout=60_000)
    cells = widget.scene.cells_layer
    assert "cell_type_pred" in cells.features
    out = tmp_path / "saved.zarr"
    written = write_annotated(str(out), [(cells.data, cells._get_state(), "points")])
    assert written == [str(out)]
    saved = spatialdata.read_zarr(out)
    assert "cell_type_pred" in saved.tables["table"].obs
    assert saved.tables["table_imputed"].n_vars == widget.result.imputed.n_vars


@pytest.mark.gui
def test_open_demo_with_run(make_napari_viewer, qtbot):
    from napari_cellmapper.widgets.demo import open_demo

    viewer, widget = open_demo(make_napari_viewer(), run=True)
    qtbot.waitUntil(lambda: not widget.controller.is_running, timeout=60_000)
    assert widget.result is not None
    assert "niche" in widget.scene.cells_layer.features
    assert "presence_score" in widget.scene.reference_layer.features


@pytest.fixture
def registered_plugin(npe2pm):
    """The manifest registered with a test npe2 plugin manager (as `pip install` would make it found)."""
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)) as plugin:
        yield plugin


@pytest.mark.gui
def test_napari_open_and_save_through_the_plugin(
    make_napari_viewer, registered_plugin, example_paths, tmp_path
):
    import spatialdata

    spatial, h5ad = example_paths
    viewer = make_napari_viewer()
    layers = viewer.open(str(spatial), plugin="napari-cellmapper")
    assert [layer.__class__.__name__ for layer in layers] == ["Image", "Points"]
    reference = viewer.open(str(h5ad), plugin="napari-cellmapper")
    assert reference[0].metadata["adata"].n_obs == 491
    viewer.layers.selection = {layers[1]}
    out = tmp_path / "saved_via_napari.zarr"
    written = viewer.layers.save(str(out), selected=True, plugin="napari-cellmapper")
    assert written == [str(out)]
    assert "table" in spatialdata.read_zarr(out).tables
