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
    widget.fit_view()
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
    widget.fit_view()
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

    widget.clear_region()
    _run(widget, app)
    view = widget.open_embedding()  # the reference in its own canvas, linked to the tissue
    predicted = widget.table.obs["cell_type_pred"].astype(str)
    view.select_category("cell_type", str(predicted.value_counts().index[0]))
    widget.fit_view()
    _settle(app, 1.0)
    _save(viewer, "linked_view")

    view.clear()
    curation = widget.open_curation()
    lasso = curation.start_lasso()
    yx = widget.scene.geometry.coords_yx
    (y0, x0), (y1, x1) = yx.min(0), yx.max(0)
    lasso.add_polygons([np.array([[y0, x0], [y0, x0 + (x1 - x0) / 3], [(y0 + y1) / 2, x0]])])
    lasso.mode = "pan_zoom"
    curation.label_combo.setCurrentText("Doublets")
    curation.assign("Doublets")
    _settle(app, 1.0)
    _save(viewer, "curation")
    viewer.close()
    return merfish()


def _run(widget, app) -> None:
    widget.run()
    start = time.time()
    while widget.controller.is_running and time.time() - start < 300:
        app.processEvents()
        time.sleep(0.02)


def merfish() -> int:
    """The same loop on real data, MERFISH hypothalamus from ``../shared/data`` (when present): the
    query opened as a spatial AnnData, the joint space built from the shared genes."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "merfish_hypothalamus").is_dir():
        print(f"{data} not found: no real-data screenshots")
        return 0
    import napari
    import scanpy as sc
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _shared_data import merfish_hypothalamus

    from napari_cellmapper.io.anndata_spatial import spatialdata_from_anndata
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    reference, query = merfish_hypothalamus(data)
    umap = reference.copy()  # a UMAP of the reference for its view (scanpy's standard recipe)
    sc.pp.normalize_total(umap)
    sc.pp.log1p(umap)
    sc.pp.pca(umap, n_comps=30)
    sc.pp.neighbors(umap)
    sc.tl.umap(umap, random_state=0)
    reference.obsm["X_umap"] = umap.obsm["X_umap"]
    app = QApplication.instance()
    viewer = napari.Viewer(title="napari-cellmapper: MERFISH hypothalamus")
    viewer.window._qt_window.resize(*WINDOW)
    widget = CellMapperWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CellMapper", area="right")
    widget.add_reference(ReferenceSource("MERFISH reference (scRNA-seq)", reference))
    widget.add_query(QuerySource("MERFISH query", spatialdata_from_anndata(query, source="MERFISH")))
    widget.niches_check.setChecked(True)
    _run(widget, app)
    if widget.result is None:
        print("the MERFISH mapping did not finish:", widget.status.text(), file=sys.stderr)
        return 1
    view = widget.open_embedding()
    view.select_category("cell_type", "Astrocytes")
    _settle(app, 1.0)
    _save(viewer, "merfish_linked")
    viewer.window.remove_dock_widget(view)
    panel = widget.open_qc()
    panel.annotation_combo.setCurrentText("cell_type_true")
    _settle(app, 1.0)
    _save(viewer, "merfish_qc")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
