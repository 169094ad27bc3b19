"""Issue 11's responsiveness figure: the longest interface stall during a run on 100k cells.

A fresh process starts napari, docks the CellMapper widget, opens a synthetic reference and a
synthetic spatial query of ``--cells`` cells each (``synthetic.make_pair``: 30-dimensional joint
space, 20 types, UMAP, 500-gene expression; the query's positions in ``obsm["spatial"]``, so its
cells are circles drawn as points) and presses Run (labels, UMAP, presence; ``--niches`` adds
niches). A 10 ms QTimer ticks on the interface thread; the longest gap between two ticks is the
longest stall. Reported separately: while the worker maps, and while the result is applied to the
layers (the part that must touch the canvas). The first run after napari starts is the one timed,
so loading or compiling anything on the first run counts.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb PYTHONPATH=src \\
        .venv/bin/python benchmarks/widget_stall.py --cells 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--niches", action="store_true")
    parser.add_argument(
        "--runs", type=int, default=1, help="runs in the same napari (the first is timed apart)"
    )
    parser.add_argument("--trace", help="dump every thread's stack every 50 ms to this file (diagnosis)")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from synthetic import make_pair

    from napari_cellmapper.io.anndata_spatial import spatialdata_from_anndata
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    reference, query = make_pair(args.cells, args.cells)
    query.obsm["spatial"] = np.random.default_rng(0).uniform(0, 20_000, (query.n_obs, 2))
    viewer = napari.Viewer(show=True)
    widget = CellMapperWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CellMapper", area="right")
    widget.add_reference(ReferenceSource("reference", reference))
    widget.add_query(QuerySource("query", spatialdata_from_anndata(query)))
    widget.presence_check.setChecked(True)
    widget.niches_check.setChecked(args.niches)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    for run in range(args.runs):
        _timed_run(widget, app, "first" if run == 0 else "next", args.cells, args.trace)
    viewer.close()


def _timed_run(widget, app, which: str, cells: int, trace_path: str | None) -> None:
    """Press Run and report the longest stalls while mapping and after the result is applied."""
    from qtpy.QtCore import QTimer

    gaps: list[tuple[float, float]] = []  # (when, gap)
    state = {"last": time.perf_counter()}

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((now, now - state["last"]))
        state["last"] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    applied: dict[str, float] = {}
    original = widget._apply_result

    def timed_apply(result) -> None:
        applied["start"] = time.perf_counter()
        original(result)
        applied["end"] = time.perf_counter()

    widget.controller._apply = timed_apply  # the controller calls this on the main thread
    timer.start()
    if trace_path:
        import faulthandler

        trace = open(trace_path, "w")  # noqa: SIM115 - open for the whole run
        faulthandler.dump_traceback_later(0.05, repeat=True, file=trace)
    state["last"] = start = time.perf_counter()
    widget.run()
    while widget.controller.is_running or "end" not in applied:
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - start > 600:
            raise TimeoutError("the run did not finish in 10 minutes")
    for _ in range(10):
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    widget.controller._apply = original
    if trace_path:
        faulthandler.cancel_dump_traceback_later()
    mapping = [g for t, g in gaps if t < applied["start"]]
    applying = [g for t, g in gaps if t >= applied["start"]]
    print(f"{cells:,} x {cells:,} cells, {which} run after napari started: {applied['end'] - start:.1f} s")
    worst = 1000 * max(mapping, default=0)
    print(f"  longest stall while mapping:       {worst:.0f} ms ({len(mapping)} ticks)")
    print(f"  applying the result to the layers: {1000 * (applied['end'] - applied['start']):.0f} ms")
    print(f"  longest stall from then on:        {1000 * max(applying, default=0):.0f} ms")
    ends = sorted(((g, t - start) for t, g in gaps), reverse=True)[:3]
    print("  longest stalls (ms, ended at s):", [(round(1000 * g), round(t, 2)) for g, t in ends])


if __name__ == "__main__":
    main()
