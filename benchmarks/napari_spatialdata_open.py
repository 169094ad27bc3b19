"""The same Xenium-like store opened in napari-spatialdata, the tool users also have, and in plain
napari: the side-by-side of ``xenium_widget.py``'s open. Each step is timed the same way (until a
frame shows it) with the same interface-stall probe (10 ms ``QTimer``) and peak RSS.

``--tool napari-spatialdata`` (its own path, as a user clicks it):

``read``    ``spatialdata.read_zarr`` (napari-spatialdata's reader reads on the interface thread)
``image``   the morphology image added (``add_sdata_image``, what a double-click in its list does)
``cells``   the element the table annotates (``add_sdata_circles`` / ``_shapes`` / ``_labels``)
``colour``  the cells coloured by an obs column from its table view (``obs_widget``)

``--tool napari`` (the floor for any plugin drawing with napari's layers, no plugin code): the
read, then ``add_image`` and ``add_labels`` of the stored pyramids (dask) and ``add_points`` of the
cells' centres, each one call, then one colour per cell set on the points.

Both end with one timed full garbage collection of the process (the store open).

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb PYTHONPATH=src \\
        .venv/bin/python benchmarks/napari_spatialdata_open.py --query /tmp/x300k.zarr [--tool napari]

napari-spatialdata is in the project's ``test`` extra; without it that tool is skipped. Its
circles and polygons paths join the table to the element with ``np.isin`` over string cell ids,
which numpy does pairwise for object arrays: a 300k store with string ids does not finish (use a
store whose table annotates ``cell_labels``, or expect tens of minutes).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_points_layer import FrameClock  # noqa: E402
from xenium_widget import Probe, step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", required=True, help="SpatialData .zarr from xenium_store.py")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    parser.add_argument("--colour-by", default="cell_area", help="obs column of the table to colour by")
    parser.add_argument("--screenshot", default=None, help="a PNG of the canvas after the last step")
    parser.add_argument(
        "--tool",
        choices=("napari-spatialdata", "napari"),
        default="napari-spatialdata",
        help="napari-spatialdata's path, or plain napari's layers (the floor)",
    )
    args = parser.parse_args(argv)
    if args.tool == "napari-spatialdata":
        try:
            import napari_spatialdata  # noqa: F401
        except ImportError:
            print("napari-spatialdata is not installed (pip install napari-spatialdata): skipped")
            return 0
    import napari
    import spatialdata as sd

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)  # benchmark only: a fixed window size
    clock = FrameClock(viewer)
    app = clock.app
    for _ in range(5):
        app.processEvents()
    probe = Probe()
    held: dict[str, object] = {}

    def record(name: str, result: dict[str, float]) -> None:
        print(
            f"{name:<40s} {result['seconds']:8.2f} s  longest stall {result['stall_s']:7.2f} s  "
            f"peak {result['peak_gb']:.2f} GB",
            flush=True,
        )

    def run(name: str, action) -> None:
        record(name, step(clock, probe, action, lambda: True, args.timeout))

    run("read (spatialdata.read_zarr)", lambda: held.update(sdata=sd.read_zarr(args.query)))
    sdata = held["sdata"]
    table_name = next(iter(sdata.tables))
    element = sdata.tables[table_name].uns["spatialdata_attrs"]["region"]
    element = element if isinstance(element, str) else element[0]
    cs = next(iter(sd.transformations.get_transformation(sdata[element], get_all=True)))
    if args.tool == "napari":
        _plain_napari(viewer, sdata, sdata.tables[table_name], run)
    else:
        _napari_spatialdata(viewer, sdata, element, cs, run, args.colour_by)
    if args.screenshot:
        viewer.reset_view()
        viewer.screenshot(args.screenshot, canvas_only=True)
    t = time.perf_counter()
    gc.collect()
    seconds = time.perf_counter() - t
    print(f"{'a full garbage collection':<40s} {seconds:8.2f} s  ({len(gc.get_objects())} tracked objects)")
    probe.close()
    viewer.close()
    return 0


def _plain_napari(viewer, sdata, table, run) -> None:
    """The floor: napari's own layers for the same data, no plugin code (each one call)."""

    def levels(element) -> list:
        if hasattr(element, "children"):  # a DataTree pyramid: its levels' dask arrays
            return [next(iter(element[k].values())).data for k in sorted(element.children)]
        return [element.data]

    for name, image in sdata.images.items():
        data = [lvl[0] if lvl.ndim == 3 else lvl for lvl in levels(image)]
        run(
            f"add_image({name}, {len(data)} levels)",
            lambda data=data: viewer.add_image(data, multiscale=len(data) > 1),
        )
    for name, labels in sdata.labels.items():
        data = levels(labels)
        run(
            f"add_labels({name}, {len(data)} levels)",
            lambda data=data: viewer.add_labels(data, multiscale=len(data) > 1),
        )
    centres = np.asarray(table.obsm["spatial"], dtype=np.float32)[:, ::-1]
    run(f"add_points({len(centres)} centres)", lambda: viewer.add_points(centres, size=20))
    layer = viewer.layers[-1]
    codes = np.arange(len(centres)) % 20
    colours = np.asarray(
        [[(i * 0.61) % 1, (i * 0.37) % 1, (i * 0.83) % 1, 1.0] for i in range(20)], dtype=np.float32
    )[codes]
    run("points.face_color = (one colour per cell)", lambda: setattr(layer, "face_color", colours))


def _napari_spatialdata(viewer, sdata, element, cs, run, colour_by) -> None:
    """napari-spatialdata's own path: its element list's add (a double-click) and its table view."""
    from napari.utils.events import EventedList
    from napari_spatialdata._sdata_widgets import SdataWidget
    from napari_spatialdata._view import QtAdataViewWidget

    widget = SdataWidget(viewer, EventedList([sdata]))
    viewer.window.add_dock_widget(widget, name="SpatialData")
    model = widget.viewer_model
    for name in sdata.images:
        run(f"image {name}", lambda name=name: model.add_sdata_image(sdata, name, cs, False))
    if element in sdata.labels:
        add = model.add_sdata_labels
    elif "radius" in sdata.shapes[element].columns:
        add = model.add_sdata_circles
    else:
        add = model.add_sdata_shapes
    run(f"cells {element} ({add.__name__})", lambda: add(sdata, element, cs, False))
    viewer.layers.selection.active = viewer.layers[element]
    view = QtAdataViewWidget(viewer)
    viewer.window.add_dock_widget(view, name="View (napari-spatialdata)")
    run(f"colour by {colour_by}", lambda: view.obs_widget._onAction([colour_by]))


if __name__ == "__main__":
    sys.exit(main())
