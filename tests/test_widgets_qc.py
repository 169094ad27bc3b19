"""The Label QC panel driven as a person would, after a real run on the built-in example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 60_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's notifications, instead of popping up."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: shown.append(str(message)))
    monkeypatch.setattr(
        notifications, "show_warning", lambda message: shown.append("warning: " + str(message))
    )
    monkeypatch.setattr(notifications, "show_info", lambda message: shown.append("info: " + str(message)))
    return shown


@pytest.fixture
def demo(make_napari_viewer, errors):
    """A viewer with the example loaded and the CellMapper widget docked (not run)."""
    from napari_cellmapper.widgets.demo import open_demo

    viewer, widget = open_demo(make_napari_viewer())
    yield viewer, widget
    widget.controller.cancel()


def _run(qtbot, widget, *, niches: bool = True) -> None:
    widget.niches_check.setChecked(niches)
    widget.run()
    qtbot.waitUntil(lambda: not widget.controller.is_running, timeout=RUN_TIMEOUT_MS)
    assert widget.result is not None, widget.status.text()


def _left_click():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _open_panel(qtbot, viewer, widget):
    qtbot.mouseClick(widget.qc_button, _left_click())
    panel = viewer.window.dock_widgets["Label QC"]
    from napari_cellmapper.widgets.qc.panel import QCWidget

    assert isinstance(panel, QCWidget) and panel.mapper is widget
    return panel


def _hex_rgba(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgba

    return np.asarray(to_rgba(color))


def _move_slider(qtbot, panel, threshold: float) -> None:
    """Drag-like: set the slider, then wait for the (debounced) relabelling."""
    table = panel.table
    panel.threshold_slider.setValue(int(round(threshold * 100)))
    qtbot.waitUntil(
        lambda: table.uns.get("cell_type_pred_thresholded_threshold") == pytest.approx(threshold),
        timeout=5000,
    )


def test_threshold_greys_out_cells_below(demo, qtbot, errors):
    viewer, widget = demo
    _run(qtbot, widget)
    panel = _open_panel(qtbot, viewer, widget)
    assert panel.key_combo.currentText() == "cell_type" and panel.threshold == 0.0
    table, cells, rows = widget.table, widget.scene.cells_layer, widget.scene.geometry.rows
    conf = table.obs["cell_type_conf"].to_numpy(dtype=float)
    mapped = np.isfinite(conf)

    # the histogram: one bar per bin, all mapped cells counted, a line at the threshold
    ax = panel.histogram_canvas.figure.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert len(heights) == 20 and sum(heights) == mapped.sum()
    assert ax.lines[0].get_xdata()[0] == 0.0

    threshold = round(float(np.nanquantile(conf, 0.3)), 2)
    _move_slider(qtbot, panel, threshold)
    assert ax is not None and panel.histogram_canvas.figure.axes[0].lines[0].get_xdata()[0] == threshold
    name = "cell_type_pred_thresholded"
    column = table.obs[name]
    assert isinstance(column.dtype, pd.CategoricalDtype)
    below = mapped & (conf < threshold)
    assert 0 < below.sum() < mapped.sum()
    assert (column[below] == "unassigned").all()
    pred = table.obs["cell_type_pred"].astype(str)
    assert (column[~below].astype(str) == pred[~below]).all()
    colors = table.uns[f"{name}_colors"]
    assert len(colors) == len(column.cat.categories)
    assert table.uns[f"{name}_threshold"] == threshold
    assert list(table.obs["cell_type_pred"].cat.categories) == list(
        widget.result.obs["cell_type_pred"].cat.categories
    )

    # on the tissue: the cells layer carries the column and draws the cells below in grey
    features = cells.features
    assert (features[name].astype(str).to_numpy() == column.astype(str).to_numpy()[rows]).all()
    assert widget.color_combo.currentText() == name
    palette = dict(zip(column.cat.categories, colors, strict=True))
    grey = _hex_rgba(palette["unassigned"])
    assert grey[0] == grey[1] == grey[2]  # a grey (not the reference's own grey: CD34+ is #7f7f7f)
    assert palette["unassigned"] not in [c for label, c in palette.items() if label != "unassigned"]
    below_cells = below[rows]
    np.testing.assert_allclose(
        cells.face_color[below_cells], np.tile(grey, (below_cells.sum(), 1)), atol=1e-3
    )
    first = int(np.flatnonzero(~below_cells)[0])
    np.testing.assert_allclose(
        cells.face_color[first], _hex_rgba(palette[features[name].iloc[first]]), atol=1e-3
    )
    assert "unassigned" in widget.color_key.legend.labels()
    assert f"{below.sum():,} of {mapped.sum():,}" in panel.threshold_info.text()
    for patch in panel.histogram_canvas.figure.axes[0].patches:  # bins below the line: the same grey
        if patch.get_x() + patch.get_width() <= threshold:
            np.testing.assert_allclose(patch.get_facecolor(), grey, atol=1e-3)

    # a higher threshold greys out more; zero gives the predictions back
    _move_slider(qtbot, panel, 0.99)
    assert (table.obs[name] == "unassigned").sum() > below.sum()
    _move_slider(qtbot, panel, 0.0)
    assert (table.obs[name].astype(str) == pred).all()
    assert not np.isclose(cells.face_color, grey).all(axis=1).any()
    assert not [e for e in errors if not e.startswith(("warning", "info"))], errors


def test_agreement_table_and_composition_and_png(demo, qtbot, tmp_path, monkeypatch, errors):
    from PIL import Image
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = demo
    _run(qtbot, widget, niches=True)
    panel = _open_panel(qtbot, viewer, widget)
    _move_slider(qtbot, panel, 0.5)
    table = widget.table
    labels = table.obs["cell_type_pred_thresholded"]

    # agreement with the query's previous annotation: the numbers are pandas' cross table
    options = [panel.annotation_combo.itemText(i) for i in range(panel.annotation_combo.count())]
    assert "cell_type_true" in options and "domain_true" in options
    assert not any(o.endswith(("_pred", "_pred_thresholded")) or o == "niche" for o in options)
    panel.annotation_combo.setCurrentText("domain_true")
    panel.annotation_combo.setCurrentText("cell_type_true")
    expected = pd.crosstab(table.obs["cell_type_true"], labels)
    expected = expected.loc[expected.sum(axis=1) > 0, expected.sum(axis=0) > 0]
    counts = panel.agreement.counts
    assert sorted(counts.index) == sorted(map(str, expected.index))
    assert sorted(counts.columns) == sorted(map(str, expected.columns))
    shown = counts.loc[[str(i) for i in expected.index], [str(c) for c in expected.columns]]
    np.testing.assert_array_equal(shown.to_numpy(), expected.to_numpy())
    ax = panel.agreement_canvas.figure.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), panel.agreement.fractions.to_numpy())
    written = sorted(int(t.get_text()) for t in ax.texts)
    assert written == sorted(int(v) for v in counts.to_numpy().ravel() if v)
    mapped = labels.notna() & table.obs["cell_type_true"].notna()
    overall = (labels[mapped].astype(str) == table.obs["cell_type_true"][mapped].astype(str)).mean()
    assert panel.agreement.overall == pytest.approx(overall)
    assert f"{overall:.1%}" in panel.agreement_label.text()
    predicted = set(labels.cat.categories)
    for row in counts.index:
        same = counts.at[row, row] if row in counts.columns else 0
        expected_row = same / counts.loc[row].sum() if row in predicted else np.nan
        assert panel.agreement.agreement[row] == pytest.approx(expected_row, nan_ok=True)
    panel.annotation_combo.setCurrentText("domain_true")  # regions name no cell type
    assert np.isnan(panel.agreement.overall) and "No domain_true value" in panel.agreement_label.text()

    # composition per niche: one bar segment per niche and label, coloured as on the tissue
    assert panel.group_combo.currentText() == "niche"
    fractions = panel.composition
    niches = table.obs["niche"].dropna().astype(str).unique()
    assert sorted(fractions.index) == sorted(niches)
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    ax = panel.composition_canvas.figure.axes[0]
    bars = [p for p in ax.patches if p.get_width() > 0]
    assert len(bars) == (fractions.to_numpy() > 0).sum() > 0
    colors = dict(zip(labels.cat.categories, table.uns["cell_type_pred_thresholded_colors"], strict=True))
    for patch in ax.patches:
        label = patch.get_gid().split(":", 1)[1]
        np.testing.assert_allclose(patch.get_facecolor(), _hex_rgba(colors[label]), atol=1e-3)
    # and per region (the planted domains)
    panel.group_combo.setCurrentText("domain_true")
    assert sorted(panel.composition.index) == sorted(table.obs["domain_true"].dropna().astype(str).unique())

    # Save plots as PNG: three valid, non-trivial PNGs, no temporary file left
    monkeypatch.setattr(
        QFileDialog,
        "getSaveFileName",
        staticmethod(lambda *a, **k: (str(tmp_path / "qc.png"), "PNG (*.png)")),
    )
    qtbot.mouseClick(panel.save_button, _left_click())
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["qc_agreement.png", "qc_composition.png", "qc_confidence.png"]
    for path in files:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.width > 400 and image.height > 250
    assert any("qc_confidence.png" in e for e in errors)
    # saving again replaces the files in place
    assert panel.save_plots(tmp_path / "qc.png") == [tmp_path / f"qc_{n}.png" for n in panel.figures()]
    assert sorted(f.name for f in tmp_path.iterdir()) == [f.name for f in files]


def test_panel_from_the_plugins_menu_finds_the_widget(demo, qtbot, errors):
    """Opened on its own (npe2 'Label QC'): it finds the docked CellMapper widget and follows its runs."""
    from napari_cellmapper.widgets.qc.panel import NO_RESULT, QCWidget

    viewer, widget = demo
    panel = QCWidget(viewer)
    qtbot.addWidget(panel)
    assert panel.mapper is widget and panel.key_combo.count() == 0
    assert panel.status.text() == NO_RESULT and not panel.threshold_slider.isEnabled()
    _run(qtbot, widget, niches=False)
    assert panel.key_combo.currentText() == "cell_type" and panel.threshold_slider.isEnabled()
    assert panel.group_combo.currentText() == "domain_true"  # no niches: the regions
    # the main widget's button docks a panel once, then raises it
    first = widget.open_qc()
    assert widget.open_qc() is first and viewer.window.dock_widgets["Label QC"] is first
    # a closed panel is no longer fed: the next run goes through without errors
    viewer.window.remove_dock_widget(first)
    panel.close()
    panel.deleteLater()
    qtbot.wait(50)
    _run(qtbot, widget, niches=False)
    assert "Label QC" not in viewer.window.dock_widgets
    assert not [e for e in errors if not e.startswith(("warning", "info"))], errors
