"""The CellMapper dock widget driven as a person would: fields, Run, Cancel, click, region, export."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from napari_cellmapper.viewer.scene import layer_kind

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 60_000


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (and show_warning), instead of popping up."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: shown.append(str(message)))
    monkeypatch.setattr(
        notifications, "show_warning", lambda message: shown.append("warning: " + str(message))
    )
    monkeypatch.setattr(notifications, "show_info", lambda message: None)
    return shown


@pytest.fixture
def demo(make_napari_viewer, errors):
    """A viewer with the example reference and spatial query loaded and the widget docked."""
    from napari_cellmapper.widgets.demo import open_demo

    viewer = make_napari_viewer()
    viewer, widget = open_demo(viewer)
    yield viewer, widget
    widget.controller.cancel()
    if widget.controller.worker is not None:
        widget.controller.worker.await_workers(5000) if hasattr(
            widget.controller.worker, "await_workers"
        ) else None


def _wait_done(qtbot, widget, timeout=RUN_TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.controller.is_running, timeout=timeout)


def _slow_runner(delay: float = 0.05, steps: int = 200):
    """A runner that yields many progress events slowly before the real mapping."""
    from napari_cellmapper.core.progress import Progress
    from napari_cellmapper.widgets.job import run_mapping

    def runner(job):
        for i in range(steps):
            time.sleep(delay)
            yield Progress("waiting", i + 1, steps)
        return (yield from run_mapping(job))

    return runner


def test_widget_lists_inputs(demo):
    viewer, widget = demo
    assert widget.reference is not None and widget.table is not None
    assert "491 cells" in widget.sizes_label.text() and "765 shared genes" in widget.sizes_label.text()
    reps = [widget.rep_combo.itemText(i) for i in range(widget.rep_combo.count())]
    assert reps[0] == "X_joint" and reps[-1] == "build from shared genes"
    assert widget.rep_combo.currentText() == "X_joint"
    assert widget.obs_list.checked() == ["cell_type"]
    assert widget.k_spin.value() == 30 and widget.kernel_combo.currentText() == "gauss"
    assert widget.backend_combo.currentData() == "auto" and widget.niches_spin.value() == 8
    from napari_cellmapper.widgets.mapper.panel import _gpu_available

    gpu_index = widget.backend_combo.findData("cupy")
    assert widget.backend_combo.model().item(gpu_index).isEnabled() == _gpu_available()
    for child in widget.findChildren(type(widget.run_button)):
        assert child.toolTip(), child.text()
    names = [layer.name for layer in viewer.layers]
    assert "tissue" in names and "cellmapper cells" in names and "example reference" in names


def test_run_draws_transferred_cell_types(demo, qtbot, errors):
    viewer, widget = demo
    cells = widget.scene.cells_layer
    n_layers = len(viewer.layers)
    widget.presence_check.setChecked(True)
    widget.niches_check.setChecked(True)
    qtbot.mouseClick(widget.run_button, qtbot_button())
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    assert not widget.progress_bar.isHidden()  # the dock shows the run's progress
    _wait_done(qtbot, widget)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.isHidden()
    assert not [e for e in errors if not e.startswith("warning")], errors
    assert widget.scene.cells_layer is cells and len(viewer.layers) == n_layers  # updated in place
    features = cells.features
    for column in ("cell_type_pred", "cell_type_conf", "cell_type_entropy", "niche"):
        assert column in features
    table = widget.table
    assert "cell_type_pred" in table.obs and "X_umap_pred" in table.obsm
    # cells coloured in the reference's colours
    assert widget.color_combo.currentText() == "cell_type_pred"
    reference = widget.reference
    palette = dict(
        zip(reference.obs["cell_type"].cat.categories, reference.uns["cell_type_colors"], strict=True)
    )
    from matplotlib.colors import to_rgba

    first = str(features["cell_type_pred"].iloc[0])
    np.testing.assert_allclose(cells.face_color[0][:3], to_rgba(palette[first])[:3], atol=1e-3)
    assert first in widget.color_key.legend.labels()
    # accuracy sanity: the example's true labels are known
    truth = features["cell_type_true"].astype(str).to_numpy()
    assert (features["cell_type_pred"].astype(str).to_numpy() == truth).mean() > 0.7
    # presence on the reference embedding
    assert "presence_score" in widget.scene.reference_layer.features
    assert widget.reference_color_combo.currentText() == "presence_score"
    # switching the colouring recolours in place
    before = cells.face_color.copy()
    widget.color_combo.setCurrentText("cell_type_conf")
    assert widget.scene.cells_layer is cells and len(viewer.layers) == n_layers
    assert widget.color_key.currentWidget() is widget.color_key.colorbar
    assert not np.allclose(before, cells.face_color)
    widget.color_combo.setCurrentText("niche")
    assert widget.color_key.currentWidget() is widget.color_key.legend
    assert widget.color_key.legend.count() >= 2
    assert "%" in widget.color_key.legend.labels()[0]  # niches named by their main cell types


def qtbot_button():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_cancel_leaves_everything_as_it_was(demo, qtbot, errors):
    viewer, widget = demo
    widget.controller.runner = _slow_runner()
    obs_before = widget.table.obs.copy()
    features_before = widget.scene.cells_layer.features.copy()
    names_before = [layer.name for layer in viewer.layers]
    widget.run()
    qtbot.waitUntil(lambda: "waiting" in widget.status.text(), timeout=10_000)
    with qtbot.waitSignal(widget.controller.cancelled, timeout=10_000):
        qtbot.mouseClick(widget.cancel_button, qtbot_button())
    _wait_done(qtbot, widget)
    pd.testing.assert_frame_equal(widget.table.obs, obs_before)
    pd.testing.assert_frame_equal(widget.scene.cells_layer.features, features_before)
    assert [layer.name for layer in viewer.layers] == names_before
    assert widget.run_button.isEnabled() and widget.result is None


def test_failed_run_notifies_and_changes_nothing(demo, qtbot, errors):
    from napari_cellmapper.core.validation import CellMapperInputError

    viewer, widget = demo

    def failing(job):
        yield from ()
        raise CellMapperInputError("The query and the reference share no genes. Use a joint space.")

    widget.controller.runner = failing
    obs_before = widget.table.obs.copy()
    widget.run()
    _wait_done(qtbot, widget)
    assert any("share no genes" in e for e in errors)
    pd.testing.assert_frame_equal(widget.table.obs, obs_before)
    assert "cell_type_pred" not in widget.scene.cells_layer.features


def test_real_input_error_from_core(demo, qtbot, errors):
    viewer, widget = demo
    widget.obs_list.set_items(["cell_type", "no_such_column"], {"no_such_column"})
    widget.run()
    _wait_done(qtbot, widget)
    assert errors and "no_such_column" in errors[-1]
    assert "no_such_column_pred" not in widget.table.obs


def test_bad_files_notify_and_change_nothing(demo, tmp_path, errors):
    viewer, widget = demo
    bad = tmp_path / "broken.h5ad"
    bad.write_text("not an h5ad file")
    reference = widget.reference
    assert widget.open_reference(bad, wait=True) is False
    assert errors and "broken.h5ad" in errors[-1]
    assert widget.reference is reference
    not_zarr = tmp_path / "empty.zarr"
    not_zarr.mkdir()
    table = widget.table
    assert widget.open_query(not_zarr, wait=True) is False
    assert widget.table is table and "empty.zarr" in errors[-1]


def test_stale_result_is_dropped(demo, qtbot, errors):
    viewer, widget = demo
    widget.controller.runner = _slow_runner(delay=0.01, steps=30)
    dropped: list[int] = []
    widget.controller.dropped.connect(dropped.append)
    worker = widget.run()
    job = widget.controller.current_job
    widget.controller.invalidate()  # e.g. the user picked another query while it ran
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert dropped == [job.job_id]
    assert "cell_type_pred" not in widget.table.obs and widget.result is None


def test_region_restricts_the_run(demo, qtbot, errors):
    viewer, widget = demo
    widget.niches_check.setChecked(True)
    widget.run()  # a first run over all cells: the region run must replace its results
    _wait_done(qtbot, widget)
    assert widget.scene.cells_layer.features["cell_type_pred"].notna().all()
    region = widget.add_region()
    assert region.name == "cellmapper region" and region.mode == "add_polygon"
    lo, hi = widget.scene.tissue_bounds()
    mid = (lo + hi) / 2
    polygon = np.array([[lo[0] - 1, lo[1] - 1], [lo[0] - 1, mid[1]], [mid[0], mid[1]], [mid[0], lo[1] - 1]])
    region.add_polygons([polygon])
    inside = widget.scene.region_mask()
    assert 0 < inside.sum() < len(inside)
    widget.run()
    _wait_done(qtbot, widget)
    pred = widget.scene.cells_layer.features["cell_type_pred"]
    assert pred.notna().to_numpy()[inside].all()
    assert pred.isna().to_numpy()[~inside].all()
    assert widget.table.obs["cellmapper_unmapped"].to_numpy()[~inside].all()
    assert widget.result.rows.size == inside.sum()
    assert widget.scene.cells_layer.features["niche"].isna().to_numpy()[~inside].all()
    assert not [e for e in errors if "Niches need" in e]
    widget.clear_region()
    assert widget.scene.region_mask() is None


def test_empty_region_refuses_to_run(demo, errors):
    viewer, widget = demo
    region = widget.add_region()
    region.add_polygons([np.array([[-100, -100], [-100, -90], [-90, -90], [-90, -100]], float)])
    assert widget.run() is None
    assert "No cells lie inside" in errors[-1]


def test_click_shows_cell_and_reference_neighbours(demo, qtbot, errors):
    viewer, widget = demo
    widget.run()
    _wait_done(qtbot, widget)
    geometry = widget.scene.geometry
    index = 7
    # simulate a click on the canvas through the viewer's mouse callback
    callback = widget._click

    class Event:
        button = 1
        type = "mouse_press"
        position = tuple(geometry.coords_yx[index])

    generator = callback(viewer, Event())
    next(generator)
    Event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(generator)
    text = widget.cell_label.text()
    label = str(widget.table.obs["cell_type_pred"].iloc[geometry.rows[index]])
    assert f"cell_type: {label}" in text and "top:" in text and "30 reference neighbours" in text
    assert "cellmapper selected cell" in viewer.layers
    # the reference is drawn in its own view by default: the neighbours light up there
    rows = widget.result.neighbor_indices[index]
    view = widget.embedding_view
    assert view is not None and not widget.scene.reference_layer.visible
    np.testing.assert_array_equal(np.flatnonzero(view.selected), np.unique(rows))
    assert "cellmapper reference neighbours" not in viewer.layers
    # with that view closed, the reference is drawn beside the tissue and ringed there
    viewer.window.remove_dock_widget(view)
    view.deleteLater()
    qtbot.waitUntil(lambda: widget.embedding_view is None, timeout=5000)
    assert widget.scene.reference_layer.visible
    widget.show_cell(index)
    neighbours = viewer.layers["cellmapper reference neighbours"]
    assert len(neighbours.data) == 30
    np.testing.assert_allclose(neighbours.data, np.asarray(widget.scene.reference_layer.data)[rows])


def test_export_writes_and_asks_before_overwriting(demo, qtbot, tmp_path, monkeypatch, errors):
    import spatialdata
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = demo
    widget.expression_check.setChecked(True)
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.export_button.isEnabled()
    out = widget.export(tmp_path / "annotated.zarr", wait=True)
    assert out is not None and out.exists()
    written = spatialdata.read_zarr(out)
    table, imputed = written.tables["table"], written.tables["table_imputed"]
    assert "cell_type_pred" in table.obs
    assert list(imputed.var_names) == list(widget.result.imputed.var_names)
    assert imputed.n_obs == widget.result.imputed.n_obs
    asked: list[str] = []

    def answer_no(*args, **kwargs):
        asked.append(args[2] if len(args) > 2 else "")
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", staticmethod(answer_no))
    stamp = out.stat().st_mtime_ns
    assert widget.export(out, wait=True) is None and asked
    assert out.stat().st_mtime_ns == stamp


def test_imputed_expression_colours_cells(demo, qtbot, errors):
    viewer, widget = demo
    widget.expression_check.setChecked(True)
    widget.run()
    _wait_done(qtbot, widget)
    assert widget.result.imputed is not None and widget.gene_edit.isEnabled()
    gene = str(widget.result.imputed.var_names[0])
    assert widget.show_gene(f"{gene} (imputed)")
    assert widget.color_combo.currentText() == f"{gene} (imputed)"
    assert widget.color_key.currentWidget() is widget.color_key.colorbar
    assert widget.show_gene("NOT_A_GENE") is False and "NOT_A_GENE" in errors[-1]


def test_colour_by_measured_imputed_gene_and_type_probability(demo, qtbot, errors):
    """Without 'impute expression' a reference gene is imputed on demand (M times that gene's
    column only); a measured gene comes from the query; P(type) from the transferred probabilities;
    scores on 0-1 keep that range unless autoscaled, and carry a one-line explanation."""
    from napari_cellmapper.viewer.cell_values import value_choices

    viewer, widget = demo
    table, reference = widget.table, widget.reference
    gene = str(table.var_names.intersection(reference.var_names)[0])
    assert widget.gene_edit.isEnabled()  # measured genes need no run
    assert widget.show_gene(gene) and widget.color_combo.currentText() == f"{gene} (measured)"
    assert widget.show_gene(f"{gene} (imputed)") is False and "Run a mapping" in errors[-1]
    widget.run()
    _wait_done(qtbot, widget)
    result = widget.result
    assert result.imputed is None and result.mapping is not None
    choices = value_choices(table, reference, result)
    assert f"{gene} (imputed)" in choices and f"{gene} (measured)" in choices
    assert widget.show_gene(f"{gene} (imputed)")
    cells = widget.scene.cells_layer
    column = reference[:, gene].X
    column = np.asarray(column.toarray() if hasattr(column, "toarray") else column).ravel()
    expected = result.mapping @ column
    rows = widget.scene.geometry.rows
    full = np.full(table.n_obs, np.nan)
    full[result.rows] = expected
    np.testing.assert_allclose(cells.features[f"{gene} (imputed)"].to_numpy(), full[rows], rtol=1e-5)
    kind = str(table.obs["cell_type_pred"].cat.categories[0])
    assert widget.show_gene(kind) and widget.color_combo.currentText() == f"P({kind})"
    stored = table.obsm["cell_type_proba"].iloc[:, 0].to_numpy()  # the first type's column
    np.testing.assert_allclose(cells.features[f"P({kind})"].to_numpy(), stored[rows])
    colorbar = widget.color_key.colorbar
    assert colorbar.clim == (0.0, 1.0) and "Probability" in colorbar.note.text()
    widget.autoscale_check.setChecked(True)
    values = cells.features[f"P({kind})"].to_numpy()
    assert colorbar.clim == (values.min(), values.max())
    widget.autoscale_check.setChecked(False)
    widget.color_combo.setCurrentText("mapping_quality")
    assert colorbar.clim == (0.0, 1.0) and "reference covers" in colorbar.note.text()
    assert colorbar.colormap.endswith("_bright")  # no near-black end on the dark canvas
    assert cells.metadata["cellmapper_colormap"] == colorbar.colormap  # the cells drawn as the bar shows


def test_labels_query_maps_and_colours_labels(make_napari_viewer, qtbot, errors):
    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    viewer = make_napari_viewer()
    widget = CellMapperWidget(viewer)
    reference, _ = pbmc_example()
    widget.add_reference(ReferenceSource("reference", reference))
    widget.add_query(QuerySource("labels example", spatial_example("labels")))
    cells = widget.scene.cells_layer
    assert layer_kind(cells) == "labels"
    widget.run()
    _wait_done(qtbot, widget)
    assert "cell_type_pred" in cells.features and widget.color_combo.currentText() == "cell_type_pred"
    first_id = int(cells.features["index"].iloc[0])

    def code(label):  # the raster shows colour codes (viewer.label_codes)
        return int(cells.cell_codes.encode(np.array([label]))[0])

    assert cells.colormap.map(code(first_id))[3] > 0
    from matplotlib.colors import to_rgba

    table = widget.table
    palette = dict(
        zip(table.obs["cell_type_pred"].cat.categories, table.uns["cell_type_pred_colors"], strict=True)
    )
    for i in range(5):  # each label in its type's colour
        label = int(cells.features["index"].iloc[i])
        expected = to_rgba(palette[str(cells.features["cell_type_pred"].iloc[i])])[:3]
        np.testing.assert_allclose(cells.colormap.map(code(label))[:3], expected, atol=1.5 / 255)
    assert "cell_type" in widget.show_cell(0)


@pytest.mark.parametrize("kernel", ["gauss", "hnoca"])
def test_build_from_shared_genes_with_presence(demo, qtbot, errors, kernel):
    viewer, widget = demo
    widget.rep_combo.setCurrentText("build from shared genes")
    widget.kernel_combo.setCurrentText(kernel)
    widget.backend_combo.setCurrentIndex(widget.backend_combo.findData("faiss-exact"))
    widget.presence_check.setChecked(True)
    job = widget.build_job()
    p = job.params
    assert p.use_rep is None and p.kernel == kernel and p.backend == "faiss-exact" and p.presence
    widget.run()
    _wait_done(qtbot, widget)
    assert not errors, errors
    scores = widget.scene.reference_layer.features["presence_score"]
    assert scores.between(0, 1).all() and scores.max() > 0.5


def test_identifier_columns_never_colour_cells(demo):
    """Issue 15: a unique-per-cell column (cell_id) is not offered nor picked as the default."""
    viewer, widget = demo
    keys = [widget.color_combo.itemText(i) for i in range(widget.color_combo.count())]
    assert "cell_id" in widget.table.obs and "cell_id" not in keys
    assert widget.color_combo.currentText() != "cell_id"
    assert widget.scene.cells_layer.metadata.get("cellmapper_color_by") != "cell_id"


def test_run_freezes_job_fields_and_click_names_the_cell(demo, qtbot, errors):
    """Issue 11 defect 8: k, kernel, checkboxes are read-only during a run; a click shows the id."""
    viewer, widget = demo
    widget.controller.runner = _slow_runner(delay=0.01, steps=50)
    widget.niches_check.setChecked(True)
    widget.run()
    frozen = (
        widget.k_spin,
        widget.kernel_combo,
        widget.presence_check,
        widget.niches_check,
        widget.niches_spin,
        widget.rep_combo,
        widget.obs_list,
        widget.backend_combo,
    )
    assert widget.controller.is_running and not any(w.isEnabled() for w in frozen)
    _wait_done(qtbot, widget)
    assert all(w.isEnabled() for w in frozen)
    text = widget.show_cell(5)
    row = int(widget.scene.geometry.rows[5])
    obs = widget.table.obs
    assert text.splitlines()[0] == f"cell {obs.index[row]} (cell_id {obs['cell_id'].iloc[row]})"


def test_cell_size_control_scales_point_cells(demo, qtbot):
    """Issue 11 defect 1: the cells' drawn size is the user's to choose, kept across redraws."""
    viewer, widget = demo
    cells = widget.scene.cells_layer
    before = np.array(cells.size, dtype=float)
    widget.size_spin.setValue(3.0)
    np.testing.assert_allclose(cells.size, 3.0 * before, rtol=1e-5)
    widget.size_spin.setValue(0.5)
    np.testing.assert_allclose(cells.size, 0.5 * before, rtol=1e-5)
    widget.cs_combo.currentIndexChanged.emit(widget.cs_combo.currentIndex())  # redraw the query
    np.testing.assert_allclose(widget.scene.cells_layer.size, 0.5 * before, rtol=1e-5)
    uploads = []  # napari's size setter refreshes (re-uploads) every point: only on a change
    layer = widget.scene.cells_layer
    refresh = layer.refresh
    layer.refresh = lambda *args, **kwargs: (uploads.append(1), refresh(*args, **kwargs))
    assert widget.scene.set_cell_size(0.5) and not uploads
    assert widget.scene.set_cell_size(2.0) and uploads
    np.testing.assert_allclose(layer.size, 2.0 * before, rtol=1e-5)


def test_switching_queries_keeps_results_and_shows_one_sample(demo, qtbot, tmp_path, errors):
    """Issue 11 defect 3 / issue 15: back to a mapped query, Export works; only its images show;
    no stale selection ring."""
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.widgets.sources import QuerySource

    viewer, widget = demo
    widget.run()
    _wait_done(qtbot, widget)
    first = widget.query_combo.currentIndex()
    first_table = widget.table
    widget.show_cell(3)
    assert "cellmapper selected cell" in viewer.layers
    widget.add_query(QuerySource("second sample", spatial_example("circles", seed=1)))
    ring = viewer.layers["cellmapper selected cell"]  # kept for the next click, but empty
    assert len(ring.data) == 0
    assert list(viewer.layers).index(ring) > list(viewer.layers).index(widget.scene.cells_layer)
    assert not widget.export_button.isEnabled()  # the second sample is not mapped
    second_images = [
        layer for layer in viewer.layers if layer.metadata.get("cellmapper_role") == "image" and layer.visible
    ]
    assert second_images and all(layer.metadata["sdata"] is widget.query.sdata for layer in second_images)
    widget.query_combo.setCurrentIndex(first)
    assert widget.table is first_table and widget.result is not None
    assert widget.export_button.isEnabled()
    assert widget.color_combo.currentText() == "cell_type_pred"
    images = [layer for layer in viewer.layers if isinstance(layer, type(second_images[0])) and layer.visible]
    assert images and all(layer.metadata.get("sdata") is widget.query.sdata for layer in images)
    assert widget.export(tmp_path / "back.zarr", wait=True) is not None


def test_labels_cells_are_not_painted_and_ring_fits_one_cell(make_napari_viewer, errors):
    """Issue 11 defect 4: the segmentation is not left in a paint mode; the ring marks one cell."""
    from scipy.spatial import cKDTree

    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    viewer = make_napari_viewer()
    widget = CellMapperWidget(viewer)
    widget.add_reference(ReferenceSource("reference", pbmc_example()[0]))
    widget.add_query(QuerySource("labels example", spatial_example("labels")))
    cells = widget.scene.cells_layer
    assert not cells.editable and cells.mode == "pan_zoom"
    widget.show_cell(0)
    ring = viewer.layers["cellmapper selected cell"]
    yx = widget.scene.geometry.coords_yx
    distance, _ = cKDTree(yx).query(yx[0], k=2)
    assert float(np.max(ring.size)) < 2 * distance[1]  # no neighbouring cell inside the ring


def test_reference_without_embedding_is_explained(make_napari_viewer, errors):
    """Issue 11 defect 6: no 2-D embedding: say so, and grey out 'Colour reference by'."""
    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.widgets.mapper.panel import NO_EMBEDDING, CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    viewer = make_napari_viewer()
    widget = CellMapperWidget(viewer)
    widget.add_query(QuerySource("example", spatial_example("circles")))
    reference = pbmc_example()[0]
    for key in list(reference.obsm.keys()):
        del reference.obsm[key]
    widget.add_reference(ReferenceSource("no embedding", reference))
    assert widget.scene.reference_layer is None
    assert widget.status.text() == NO_EMBEDDING and "warning: " + NO_EMBEDDING in errors
    assert not widget.reference_color_combo.isEnabled()
    assert widget.reference_color_combo.toolTip() == NO_EMBEDDING


def test_spatial_h5ad_query_opens_maps_and_exports(demo, qtbot, tmp_path, errors):
    """An .h5ad with positions in obsm["spatial"] (squidpy's convention) is a query like a store."""
    import spatialdata

    from napari_cellmapper.io.spatial import cell_coordinates

    viewer, widget = demo
    source = widget.query.sdata
    table = widget.table.copy()
    table.obsm["spatial"] = cell_coordinates(source, widget.table_combo.currentText())
    del table.uns["spatialdata_attrs"]
    path = tmp_path / "spots.h5ad"
    table.write_h5ad(path)
    assert widget.open_query(path, wait=True)
    assert widget.query_combo.currentText() == "spots.h5ad (file)"
    assert widget.element_combo.currentText() == "cells" and widget.table.n_obs == table.n_obs
    widget.run()
    _wait_done(qtbot, widget)
    assert not [e for e in errors if not e.startswith("warning")], errors
    assert "cell_type_pred" in widget.scene.cells_layer.features
    out = widget.export(tmp_path / "spots.zarr", confirm=False, wait=True)
    written = spatialdata.read_zarr(out)
    assert "cell_type_pred" in written.tables["table"].obs and "cells" in written.shapes


def test_advanced_options_reach_the_job_and_the_result(demo, qtbot, errors):
    """Every option the library offers is reachable: its defaults are the library's, its values
    go into the job, and the min. confidence labels low-confidence cells 'unassigned'."""
    from napari_cellmapper.core.pipeline import MappingParams

    viewer, widget = demo
    advanced = widget.advanced
    assert advanced.body.isHidden()  # folded away: the Run button stays in view
    defaults = MappingParams()
    job = widget.build_job()
    for name, value in advanced.params().items():
        assert getattr(job.params, name) == getattr(defaults, name) == value, name
    qtbot.mouseClick(advanced.toggle, qtbot_button())
    assert not advanced.body.isHidden()
    widget.rep_combo.setCurrentText("X_joint")
    assert not advanced.n_comps_spin.isEnabled()  # joint-space options only when building one
    widget.rep_combo.setCurrentText("build from shared genes")
    assert advanced.n_comps_spin.isEnabled()
    advanced.n_comps_spin.setValue(12)
    advanced.input_combo.setCurrentIndex(2)  # already normalised
    advanced.top_genes_spin.setValue(0)
    advanced.metric_combo.setCurrentText("cosine")
    advanced.self_training_spin.setValue(0.0)
    assert advanced.self_training_spin.text() == "off" and widget.build_job().params.self_training is None
    advanced.self_training_spin.setValue(0.8)
    assert widget.build_job().params.self_training == 0.8
    assert widget.build_job().params.graph_vote == 0.75  # the library's default
    advanced.graph_vote_spin.setValue(0.0)
    assert advanced.graph_vote_spin.text() == "off" and widget.build_job().params.graph_vote is None
    advanced.graph_vote_spin.setValue(0.5)
    assert widget.build_job().params.graph_vote == 0.5
    advanced.head_combo.setCurrentText("none")
    assert not advanced.head_weight_spin.isEnabled() and not advanced.self_training_spin.isEnabled()
    advanced.calibrate_check.setChecked(False)
    advanced.min_confidence_spin.setValue(0.9)
    params = widget.build_job().params
    assert (params.n_comps, params.normalize, params.n_top_genes) == (12, False, None)
    assert (params.metric, params.head, params.calibrate) == ("cosine", "none", False)
    assert params.min_confidence == 0.9
    widget.run()
    assert not advanced.isEnabled()  # frozen while the run uses them
    _wait_done(qtbot, widget)
    assert advanced.isEnabled() and not advanced.head_weight_spin.isEnabled()
    assert not [e for e in errors if not e.startswith("warning")], errors
    table = widget.table
    low = table.obs["cell_type_conf"].to_numpy() < 0.9
    assert low.any()
    assert (table.obs["cell_type_pred"].astype(str).to_numpy()[low] == "unassigned").all()


def test_reopened_export_restores_the_results_without_a_run(demo, qtbot, tmp_path, errors):
    """An exported store opened again shows its labels, legend, confidence and cell information,
    and can be exported again, with no new run."""
    viewer, widget = demo
    widget.niches_check.setChecked(True)
    widget.run()
    _wait_done(qtbot, widget)
    out = widget.export(tmp_path / "annotated.zarr", confirm=False, wait=True)
    predicted = widget.table.obs["cell_type_pred"].astype(str).to_numpy()
    assert widget.open_query(out, wait=True)
    assert widget.query_combo.currentText() == "annotated.zarr (file)"
    result = widget.result
    assert result is not None and result.obs_keys == ("cell_type",) and result.job_id == 0
    assert "restored" in widget.status.text() and widget.export_button.isEnabled()
    assert widget.color_combo.currentText() == "cell_type_pred"
    legend = widget.color_key.legend.labels()
    assert set(np.unique(predicted)) <= set(legend)
    assert (widget.table.obs["cell_type_pred"].astype(str).to_numpy() == predicted).all()
    info = widget.show_cell(3)
    assert f"cell_type: {predicted[widget.scene.geometry.rows[3]]}" in info and "top:" in info
    assert "niche" in widget.scene.color_keys()
    kind = str(widget.table.obs["cell_type_pred"].cat.categories[1])
    assert widget.show_gene(f"P({kind})")
    again = widget.export(tmp_path / "again.zarr", confirm=False, wait=True)
    assert again is not None and again.exists()
    panel = widget.open_qc()  # the QC panel works on the restored result too
    assert panel.key_combo.currentText() == "cell_type" and panel.table is widget.table
    panel.set_threshold(0.9)
    panel.apply_threshold()
    below = widget.table.obs["cell_type_conf"].to_numpy() < 0.9
    assert f"{below.sum():,} of" in panel.threshold_info.text()


def _two_slides():
    """The example query twice, as two regions ("slide_a", "slide_b") of one table, overlapping in
    space (as two sections imaged at the same stage position)."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    from napari_cellmapper.datasets import spatial_example

    sdata = spatial_example()
    table = sdata.tables["table"]
    circles = sdata.shapes["cells"]
    shapes, tables = {}, []
    for name in ("slide_a", "slide_b"):
        part = table.copy()
        part.obs_names = [f"{name}_{i}" for i in part.obs_names]
        part.obs["region"] = pd.Categorical([name] * part.n_obs)
        del part.uns["spatialdata_attrs"]
        tables.append(part)
        shapes[name] = ShapesModel.parse(circles.copy())
    both = ad.concat(tables, merge="first")
    both.obs["region"] = pd.Categorical(both.obs["region"].astype(str))
    both = TableModel.parse(both, region=["slide_a", "slide_b"], region_key="region", instance_key="cell_id")
    return SpatialData(shapes=shapes, tables={"table": both})


def test_all_regions_of_a_table_map_in_one_run(demo, qtbot, tmp_path, errors):
    """Two slides in one store: one run maps both (niches per slide, presence per slide), the
    widget switches between them without losing results, and the export writes both."""
    import spatialdata

    from napari_cellmapper.widgets.sources import QuerySource

    viewer, widget = demo
    widget.add_query(QuerySource("two slides", _two_slides()))
    assert widget.all_regions_check.isEnabled() and widget.element_combo.currentText() == "slide_a"
    widget.all_regions_check.setChecked(True)
    widget.niches_check.setChecked(True)
    widget.presence_check.setChecked(True)
    job = widget.build_job()
    table = widget.table
    assert len(job.rows) == table.n_obs and set(job.groups) == {"slide_a", "slide_b"}
    widget.run()
    _wait_done(qtbot, widget)
    assert not [e for e in errors if not e.startswith("warning")], errors
    assert table.obs["cell_type_pred"].notna().all()  # both slides mapped
    # the two slides are the same cells: the same labels on both (niches too, up to their numbers)
    a = table.obs["region"].astype(str).to_numpy() == "slide_a"
    pred = table.obs["cell_type_pred"].astype(str).to_numpy()
    assert (pred[a] == pred[~a]).all()
    niche = table.obs["niche"].astype(str).to_numpy()
    pairs = set(zip(niche[a], niche[~a], strict=True))
    assert len(pairs) == len(set(niche[a]))  # each niche of slide a is one niche of slide b
    widget.element_combo.setCurrentText("slide_b")  # switch: the results stay
    assert widget.result is not None and widget.export_button.isEnabled()
    assert "cell_type_pred" in widget.scene.cells_layer.features
    out = widget.export(tmp_path / "two.zarr", confirm=False, wait=True)
    written = spatialdata.read_zarr(out).tables["table"]
    assert written.obs["cell_type_pred"].notna().all() and written.n_obs == table.n_obs


def test_a_xenium_table_is_drawn_as_each_element_of_its_cells(demo, errors):
    """A stock Xenium table annotates one element; the element box offers the store's other
    elements of the same cells, and each is drawn (issue 15)."""
    import sys
    from pathlib import Path

    from napari_cellmapper.widgets.sources import QuerySource

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import xenium_store

    viewer, widget = demo
    widget.add_query(QuerySource("xenium", xenium_store.make_sdata(300, n_genes=60, region="cell_circles")))
    items = [widget.element_combo.itemText(i) for i in range(widget.element_combo.count())]
    assert items == ["cell_circles", "cell_boundaries", "cell_labels"]
    assert not widget.all_regions_check.isEnabled()  # one region: the others are the same cells
    centres = widget.scene.geometry.coords_yx.copy()
    for element, kind in (
        ("cell_boundaries", "polygons"),
        ("cell_labels", "labels"),
        ("cell_circles", "circles"),
    ):
        widget.element_combo.setCurrentText(element)
        widget.scene.finish_drawing()
        geometry = widget.scene.geometry
        assert (geometry.element, geometry.kind) == (element, kind)
        np.testing.assert_allclose(geometry.coords_yx, centres, atol=1.5)
        assert widget.scene.cells_layer is not None and widget.scene.cells_layer in viewer.layers
    assert len(widget.build_job().rows) == 300
    assert not errors, errors


# ------------------------------------------------------------------ background reads and exports
class _Ticks:
    """Counts the ticks of a 10 ms QTimer: they only come while the interface thread is free."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.count = 0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        self.count += 1

    def stop(self) -> int:
        self.timer.stop()
        return self.count


def _slowed(monkeypatch, name: str, delay: float = 0.5) -> list[bool]:
    """Slow down the widget's background function ``name``; records whether it ran on the main thread."""
    import threading

    from napari_cellmapper.widgets.mapper import panel as mapper_panel

    real = getattr(mapper_panel, name)
    on_main: list[bool] = []

    def slow(*args, **kwargs):
        on_main.append(threading.current_thread() is threading.main_thread())
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(mapper_panel, name, slow)
    return on_main


def test_export_runs_in_a_worker_and_writes_the_table_as_frozen(demo, qtbot, tmp_path, monkeypatch, errors):
    """Issue 15: the export is written by a worker; the interface keeps processing events, Export
    is off meanwhile, and what changes in the table after Export was pressed is not written."""
    import spatialdata

    from napari_cellmapper.widgets.background import BackgroundTask

    viewer, widget = demo
    widget.run()
    _wait_done(qtbot, widget)
    on_main = _slowed(monkeypatch, "write_export")
    out = tmp_path / "background.zarr"
    ticks = _Ticks()
    task = widget.export(out, confirm=False)
    assert isinstance(task, BackgroundTask) and not task.done
    assert not out.exists() and not widget.export_button.isEnabled() and widget.busy("export")
    assert "Exporting" in widget.status.text()
    assert widget.export(tmp_path / "second.zarr", confirm=False) is None  # one export at a time
    assert "being written" in errors[-1]
    widget.table.obs["changed_after_export"] = 1.0  # e.g. a curation while it writes
    qtbot.waitUntil(lambda: task.done, timeout=RUN_TIMEOUT_MS)
    assert ticks.stop() >= 10  # the interface thread was free while the store was written
    assert on_main == [False]
    assert task.outcome == out and out.exists() and widget.export_button.isEnabled()
    assert widget.status.text() == f"Exported to {out}" and not widget.busy()
    written = spatialdata.read_zarr(out).tables["table"]
    assert "cell_type_pred" in written.obs and "changed_after_export" not in written.obs
    assert errors == ["An export is being written; wait for it to finish."]


def test_failed_export_is_reported_and_writes_nothing(demo, qtbot, tmp_path, monkeypatch, errors):
    from napari_cellmapper.widgets.mapper import panel as mapper_panel

    viewer, widget = demo
    widget.run()
    _wait_done(qtbot, widget)

    def broken(job):
        raise OSError("disk full")

    monkeypatch.setattr(mapper_panel, "write_export", broken)
    out = tmp_path / "broken.zarr"
    assert widget.export(out, confirm=False, wait=True) is None
    assert errors[-1] == "Export failed: OSError: disk full"
    assert not out.exists() and widget.export_button.isEnabled() and not widget.busy()
    assert "failed" in widget.status.text()


def test_large_query_opened_in_stages_fits_the_view_and_counts_as_busy(
    demo, qtbot, tmp_path, monkeypatch, errors
):
    """Issue 15: a large query's layers are added over several event-loop turns (the scene's
    staged drawing); the widget is busy until the last one, and the view is fitted to the
    cells even while they are still hidden (not to the reference beside them)."""
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.viewer import scene as scene_module
    from napari_cellmapper.viewer.transforms import viewer_camera

    viewer, widget = demo
    monkeypatch.setattr(scene_module, "STAGE_FROM", 1)  # every query counts as large
    path = tmp_path / "staged.zarr"
    spatial_example("circles", seed=3).write(path)
    busy_while_drawing: list[bool] = []
    real_show_images = scene_module.CellMapperScene._show_images

    def show_images(scene, *args, **kwargs):  # a step with another one after it
        busy_while_drawing.append(widget.busy())
        real_show_images(scene, *args, **kwargs)

    monkeypatch.setattr(scene_module.CellMapperScene, "_show_images", show_images)
    assert widget.open_query(path, wait=True)
    layer = widget.scene.cells_layer
    assert widget.busy() and not layer.visible  # the query's read is done, its drawing is not
    widget.wait_idle(timeout=RUN_TIMEOUT_MS / 1000)
    assert not widget.busy() and layer.visible and busy_while_drawing == [True]
    sdata = widget.query.sdata
    images = [lay for lay in viewer.layers if lay.metadata.get("sdata") is sdata and lay is not layer]
    assert images and viewer.layers.index(images[0]) < viewer.layers.index(layer)
    # fitted to the cells: their centre is the camera's (the reference lies beside them)
    centre = np.asarray(viewer_camera(viewer).center)[-2:]
    yx = widget.scene.geometry.coords_yx
    lo, hi = np.nanmin(yx, axis=0), np.nanmax(yx, axis=0)
    assert np.all(centre >= lo) and np.all(centre <= hi)
    assert not [e for e in errors if not e.startswith("warning")], errors


def test_open_reads_and_computes_geometry_in_a_worker(demo, qtbot, tmp_path, monkeypatch, errors):
    """Issue 15: the files are read, and the query's cells placed, by workers; only the layers are
    built on the interface thread, after the read; the Open buttons are off meanwhile."""
    import threading

    from napari_cellmapper.datasets import pbmc_example, spatial_example
    from napari_cellmapper.viewer import scene as scene_module
    from napari_cellmapper.widgets.background import BackgroundTask

    viewer, widget = demo
    reference_path = tmp_path / "reference.h5ad"
    pbmc_example()[0].write_h5ad(reference_path)
    query_path = tmp_path / "labels.zarr"
    spatial_example("labels").write(query_path)
    on_main_reference = _slowed(monkeypatch, "load_reference")
    on_main_query = _slowed(monkeypatch, "read_query")
    geometry_threads: list[bool] = []
    real_geometry = scene_module.cell_geometry

    def recorded(*args, **kwargs):
        geometry_threads.append(threading.current_thread() is threading.main_thread())
        return real_geometry(*args, **kwargs)

    monkeypatch.setattr(scene_module, "cell_geometry", recorded)
    reference, query = widget.reference, widget.query
    ticks = _Ticks()
    tasks = [widget.open_reference(reference_path), widget.open_query(query_path)]
    assert all(isinstance(task, BackgroundTask) for task in tasks)
    assert widget.reference is reference and widget.query is query  # nothing changed yet
    assert not widget.open_reference_button.isEnabled() and not widget.open_query_button.isEnabled()
    widget.wait_idle(timeout=RUN_TIMEOUT_MS / 1000)
    assert ticks.stop() >= 10
    assert on_main_reference == [False] and on_main_query == [False]
    assert [task.outcome for task in tasks] == [True, True]
    assert widget.reference_combo.currentText() == "reference.h5ad (file)"
    assert widget.query_combo.currentText() == "labels.zarr (file)"
    assert layer_kind(widget.scene.cells_layer) == "labels"
    assert widget.scene.geometry.kind == "labels" and len(widget.scene.geometry.rows) == widget.table.n_obs
    assert geometry_threads == []  # the geometry came from the worker
    assert "_instance_index" in vars(widget.scene.geometry)  # a clicked label's cell: built there
    circles_path = tmp_path / "circles.zarr"
    spatial_example("circles").write(circles_path)
    from napari_cellmapper.widgets.background import read_query

    opened = read_query(circles_path)  # the worker's function: the click's KD-tree built there too
    assert {"centre_tree", "spacing", "_display_obs"} <= set(vars(opened.geometry))  # and the features
    assert widget.open_reference_button.isEnabled() and widget.open_query_button.isEnabled()
    assert not [e for e in errors if not e.startswith("warning")], errors


def test_large_elements_are_placed_in_a_worker_and_only_the_last_choice_is_drawn(
    demo, qtbot, monkeypatch, errors
):
    """Issue 15: choosing the sample, element or coordinate system of a large table places its
    cells in a worker (label centroids over a big raster take seconds); Run waits for them; a
    choice overtaken by another one is not drawn."""
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.widgets.mapper import panel as mapper_panel
    from napari_cellmapper.widgets.sources import QuerySource

    viewer, widget = demo
    monkeypatch.setattr(mapper_panel, "BACKGROUND_CELLS", 1)  # every table counts as large
    on_main = _slowed(monkeypatch, "place_cells", delay=0.3)
    old_cells = widget.scene.cells_layer
    ticks = _Ticks()
    widget.add_query(QuerySource("labels sample", spatial_example("labels")))
    assert widget.busy("geometry") and widget.scene.cells_layer is old_cells  # not drawn yet
    assert "Placing" in widget.status.text()
    assert widget.run() is None  # refused while the cells are placed
    assert "still being placed" in errors.pop()
    widget.wait_idle(timeout=30)
    assert ticks.stop() >= 10 and on_main == [False]
    assert widget.scene.geometry.kind == "labels" and layer_kind(widget.scene.cells_layer) == "labels"
    assert widget.scene.geometry.element == widget.element_combo.currentText()
    # two samples chosen in a row: the first one's placement is dropped, the second one drawn
    widget.add_query(QuerySource("circles sample", spatial_example("circles", seed=2)))
    widget.add_query(QuerySource("third sample", spatial_example("circles", seed=3)))
    widget.wait_idle(timeout=30)
    assert widget.scene.cells_layer.metadata["sdata"] is widget.query.sdata
    assert widget.query.label == "third sample"
    assert widget.run() is not None
    _wait_done(qtbot, widget)
    assert widget.result is not None and not [e for e in errors if not e.startswith("warning")], errors


def test_open_failure_in_a_worker_changes_nothing(demo, qtbot, tmp_path, errors):
    viewer, widget = demo
    reference, query, layers = widget.reference, widget.query, list(viewer.layers)
    bad = tmp_path / "broken.h5ad"
    bad.write_text("not an h5ad file")
    no_table = tmp_path / "no_table.zarr"
    from spatialdata import SpatialData

    SpatialData().write(no_table)
    tasks = [widget.open_reference(bad), widget.open_query(no_table)]
    widget.wait_idle(timeout=RUN_TIMEOUT_MS / 1000)
    assert [task.outcome for task in tasks] == [False, False]
    assert len(errors) == 2  # the two reads finish in either order
    assert any("broken.h5ad" in e for e in errors) and any("no table annotating cells" in e for e in errors)
    assert widget.reference is reference and widget.query is query and list(viewer.layers) == layers
    assert widget.open_reference_button.isEnabled() and widget.open_query_button.isEnabled()


def test_a_large_result_is_coloured_in_the_next_turn_and_painted_in_its_own(demo, qtbot, errors, monkeypatch):
    """From DEFER_COLOURS_FROM cells the colouring runs after the rest of the application, with
    napari's canvas not asking for a paint until a zero timer (issue 11's stall after a run)."""
    from napari_cellmapper.widgets.mapper import panel as mapper_panel
    from napari_cellmapper.widgets.repaint import viewer_canvases

    viewer, widget = demo
    monkeypatch.setattr(mapper_panel, "DEFER_COLOURS_FROM", 1)
    canvases = viewer_canvases(widget)
    assert len(canvases) == 1  # napari's canvas, found through Qt (the reference view is a dock)
    updates_during_colouring: list[list[bool]] = []
    fill_colors = widget._fill_colors

    def recording_fill_colors(prefer=None):
        updates_during_colouring.append([c.updatesEnabled() for c in canvases])
        fill_colors(prefer=prefer)

    monkeypatch.setattr(widget, "_fill_colors", recording_fill_colors)
    coloured_when_applied: list[int] = []
    apply = widget.controller._apply

    def recording_apply(result):
        apply(result)
        coloured_when_applied.append(len(updates_during_colouring))

    monkeypatch.setattr(widget.controller, "_apply", recording_apply)
    view, refreshes = widget.embedding_view, []
    assert view is not None  # the demo's reference is drawn in its own view
    refresh_later = widget._refresh_embedding_later

    def recording_refresh_later():
        refreshes.append(canvases[0].updatesEnabled())
        refresh_later()

    monkeypatch.setattr(widget, "_refresh_embedding_later", recording_refresh_later)
    qtbot.mouseClick(widget.run_button, qtbot_button())
    _wait_done(qtbot, widget)
    qtbot.waitUntil(lambda: bool(updates_during_colouring), timeout=5000)
    assert coloured_when_applied == [0]  # not coloured in the turn that applied the result
    assert updates_during_colouring == [[False]]  # no paint asked while the colours changed
    qtbot.waitUntil(lambda: all(c.updatesEnabled() for c in canvases), timeout=5000)
    assert widget.color_combo.currentText() == "cell_type_pred"
    cells = widget.scene.cells_layer
    reference = widget.reference
    palette = dict(
        zip(reference.obs["cell_type"].cat.categories, reference.uns["cell_type_colors"], strict=True)
    )
    from matplotlib.colors import to_rgba

    first = str(cells.features["cell_type_pred"].iloc[0])
    np.testing.assert_allclose(cells.face_color[0][:3], to_rgba(palette[first])[:3], atol=1e-3)
    # the reference view was asked to redraw once, after the tissue's canvas could paint again
    qtbot.waitUntil(lambda: bool(refreshes) and not view.refresh_pending, timeout=5000)
    assert refreshes == [True]
    widget._show_result_colours(object())  # a result no longer shown: nothing happens
    assert len(updates_during_colouring) == 1
    assert not [e for e in errors if not e.startswith("warning")], errors


def test_progress_is_painted_later_never_at_once_nor_animated(make_napari_viewer, qtbot, monkeypatch):
    """A repaint of any widget recomposes the window with its OpenGL canvas (30-40 ms each in
    software OpenGL): QProgressBar.setValue repaints at once unless updates are held, and its
    busy mode animates."""
    from qtpy.QtCore import QEvent, QObject

    from napari_cellmapper.widgets.demo import open_demo

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)
    viewer, widget = open_demo(viewer)
    bar = widget.progress_bar

    class Paints(QObject):
        count = 0

        def eventFilter(self, obj, event):
            if obj is bar and event.type() == QEvent.Type.Paint:
                Paints.count += 1
            return False

    counter = Paints()
    bar.installEventFilter(counter)
    widget._set_running(True)
    assert not bar.isHidden() and (bar.minimum(), bar.maximum()) == (0, 100)  # not Qt's busy mode
    held = []
    set_value = bar.setValue
    monkeypatch.setattr(bar, "setValue", lambda value: (held.append(bar.updatesEnabled()), set_value(value)))
    qtbot.waitUntil(bar.isVisible, timeout=2000)
    scroll = bar.parent()
    while scroll is not None and not hasattr(scroll, "ensureWidgetVisible"):
        scroll = scroll.parent()
    if scroll is not None:  # the dock scrolls: bring the bar into view, else nothing paints it
        scroll.ensureWidgetVisible(bar)
    qtbot.waitUntil(lambda: not bar.visibleRegion().isEmpty(), timeout=2000)
    before = Paints.count
    for done in (10, 20, 35, 50):
        widget._on_progress("neighbour search", done, 100)
    assert held == [False] * 4  # no repaint inside the call
    assert bar.value() == 50 and bar.updatesEnabled() and widget.updatesEnabled()
    qtbot.waitUntil(lambda: Paints.count > before, timeout=2000)  # painted afterwards
    widget._set_running(False)
    assert widget.updatesEnabled() and bar.isHidden()
    bar.removeEventFilter(counter)


def test_the_widget_loads_the_kernels_when_it_opens(make_napari_viewer, monkeypatch):
    from napari_cellmapper.widgets.mapper import panel as mapper_panel
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

    started = []
    monkeypatch.setattr(mapper_panel, "warm_session", lambda: started.append(True) or _Done())
    CellMapperWidget(make_napari_viewer()).wait_idle(timeout=5)
    assert started == [True]


class _Done:
    """A finished thread, as far as the widget asks."""

    def is_alive(self) -> bool:
        return False
