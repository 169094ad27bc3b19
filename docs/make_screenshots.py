"""Screenshots of the real CellMapper widget after a real run on the built-in example.

Run (needs a display; Xvfb works)::

    xvfb-run -a -s "-screen 0 1600x1000x24" env PYTHONPATH=src python docs/make_screenshots.py [NAME ...]

Writes ``docs/images/*.png`` (each kept under 500 KB), or only the named ones (e.g. ``qc_panel``).
Re-run whenever the interface changes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
MAX_BYTES = 500_000
WINDOW = (1600, 1000)
ONLY = set(sys.argv[1:])  # names to write; empty: all


def _settle(app, seconds: float = 0.6) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def _save(viewer, name: str) -> Path:
    """Grab the whole main window (canvas + dock) and save it as an optimised PNG < 500 KB."""
    from PIL import Image

    if ONLY and name not in ONLY:
        return OUT / f"{name}.png"

    image = Image.fromarray(np.asarray(viewer.screenshot(canvas_only=False, flash=False))).convert("RGB")
    path = OUT / f"{name}.png"
    for colors in (None, 256, 128, 64):
        out = image if colors is None else image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
        out.save(path, optimize=True)
        if path.stat().st_size < MAX_BYTES:
            break
    print(f"{path.relative_to(OUT.parent.parent)}: {path.stat().st_size / 1000:.0f} KB")
    return path


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellmapper.widgets.demo import open_demo

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-cellmapper demo")
    viewer.window._qt_window.resize(*WINDOW)
    viewer, widget = open_demo(viewer, run=True)
    app = QApplication.instance()
    start = time.time()
    while widget.controller.is_running and time.time() - start < 300:
        app.processEvents()
        time.sleep(0.02)
    if widget.result is None:
        print("the mapping did not finish:", widget.status.text(), file=sys.stderr)
        return 1
    viewer.reset_view()
    viewer.layers.selection.active = widget.scene.cells_layer
    _settle(app)
    _save(viewer, "overview")
    widget.scroll_to(widget.color_combo)

    widget.color_combo.setCurrentText("cell_type_conf")
    _settle(app)
    _save(viewer, "confidence")

    widget.color_combo.setCurrentText("niche")
    _settle(app)
    _save(viewer, "niches")

    panel = widget.open_qc()  # the Label QC panel, docked at the bottom
    conf = widget.table.obs["cell_type_conf"].to_numpy(dtype=float)
    panel.set_threshold(round(float(np.nanquantile(conf, 0.2)), 2))
    panel.apply_threshold()
    panel.annotation_combo.setCurrentText("cell_type_true")
    viewer.reset_view()
    _settle(app, 1.0)
    _save(viewer, "qc_panel")
    viewer.window.remove_dock_widget(panel)

    widget.color_combo.setCurrentText("cell_type_pred")
    geometry = widget.scene.geometry
    index = int(np.argmin(widget.table.obs["cell_type_conf"].to_numpy()[geometry.rows]))
    widget.show_cell(index)
    _settle(app)
    widget.scroll_to(widget.color_combo)
    _settle(app)
    _save(viewer, "cell_click")

    region = widget.add_region()
    lo, hi = widget.scene.tissue_bounds()
    mid = (lo + hi) / 2
    region.add_polygons(
        [np.array([[lo[0], lo[1]], [lo[0], mid[1]], [mid[0], mid[1] + 80], [mid[0] + 60, lo[1]]])]
    )
    region.mode = "pan_zoom"
    viewer.layers.selection.active = widget.scene.cells_layer
    widget.scroll_to(widget.region_button)
    widget.run()
    start = time.time()
    while widget.controller.is_running and time.time() - start < 300:
        app.processEvents()
        time.sleep(0.02)
    _settle(app)
    _save(viewer, "region")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
