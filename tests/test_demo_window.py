"""`napari-cellmapper demo` opens at the screen's size, with everything fitted and Run in view."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.gui
def test_demo_fills_the_screen_fits_the_layers_and_shows_run(qtbot, monkeypatch):
    pytest.importorskip("napari")
    from qtpy.QtWidgets import QApplication

    from napari_cellmapper.widgets.demo import open_demo

    viewer, widget = open_demo()  # its own window, as the command opens it
    try:
        viewer.window._qt_window.show()
        qtbot.wait(200)
        area = QApplication.primaryScreen().availableGeometry()
        assert viewer.window.geometry()[2:] == (area.width(), area.height())
        assert not widget.run_button.visibleRegion().isEmpty()
        height, width = viewer.window._qt_viewer.canvas.size  # the canvas's size in screen pixels
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
        centre = np.asarray(camera.center[-2:])
        half = np.array([height, width]) / camera.zoom / 2
        assert widget.embedding_view is not None  # the reference in its own view, below the canvas
        assert not widget.embedding_view.visibleRegion().isEmpty()
        for layer in viewer.layers:
            low, high = np.asarray(layer.extent.world)[:, -2:]
            if not layer.visible or not np.isfinite([low, high]).all():  # hidden (the reference
                continue  # beside the tissue while in its own view) or empty (selection layers)
            assert np.all(low >= centre - half) and np.all(high <= centre + half), layer.name
    finally:
        viewer.close()
