"""Issue 15's table through the real widget under Xvfb: open, run, switch colouring, click, export.

For one Xenium-like store (``xenium_store.py``; the table annotates circles, polygons or labels)
and a reference ``.h5ad``, each step is driven through the dock widget's public methods and
widgets, and timed from the call until the step is complete and the canvas has drawn a frame
showing it:

``open``     ``open_reference`` then ``open_query`` (the Open buttons' slots: both read in the
             background), until both reads are done, the cells layer exists and a frame has been
             drawn
``run``      ``run()`` with the form's defaults plus presence and 8 niches (joint space from the
             shared genes), until the result is applied and drawn
``colour``   ``color_combo`` switched to confidence, then to niches, then back (each timed)
``click``    the camera centred on a cell, then a real mouse click (press + release) on the
             canvas' centre, until the cell info is shown
``export``   ``export(path, confirm=False)`` (written in the background), until the store is
             written

Every step also reports the longest interface stall (the largest gap between ticks of a 10 ms
``QTimer`` while the step ran and for a second after its frame, so that work it leaves for later
event-loop turns counts; a blocking call stalls for its whole duration) and the peak RSS
while it ran (sampled every 20 ms by a thread). Screenshots at whole-slide zoom and zoomed to
about 60 µm are written with ``--screenshots DIR``.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb PYTHONPATH=src \\
        .venv/bin/python benchmarks/xenium_widget.py --query /tmp/x300k.zarr --reference /tmp/ref.h5ad
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_points_layer import FrameClock  # noqa: E402

PIXEL_SIZE_UM = 0.2125


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StackSampler:
    """The interface thread's stack every 5 ms (``XENIUM_WIDGET_STACKS=1``, with ``--gaps``): where a
    stall's time went, as the innermost frames seen most often while it lasted."""

    def __init__(self) -> None:
        self.main = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import traceback

        while True:
            time.sleep(0.005)
            frame = sys._current_frames().get(self.main)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-12:]
            names = tuple(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.name}" for f in stack)
            self.samples.append((time.perf_counter(), names))

    def summary(self, start: float, end: float, top: int = 4) -> list[str]:
        from collections import Counter

        window = [names[-7:] for t, names in self.samples if start <= t <= end]
        lines = []
        for names, n in Counter(window).most_common(top):
            lines.append(f"{n}/{len(window)} samples:")
            lines += [f"   {name}" for name in names]
        return lines


class Probe:
    """The longest gap between 10 ms QTimer ticks (interface stall) and the peak RSS, per step."""

    def __init__(self, log_over: float | None = None) -> None:
        from qtpy.QtCore import QTimer

        self.log_over = log_over  # seconds: print every gap longer than this (``--gaps``)
        self.stacks = StackSampler() if os.environ.get("XENIUM_WIDGET_STACKS") else None
        self.t0 = time.perf_counter()

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.longest = 0.0
        self.peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = now - self.last
        self.longest = max(self.longest, gap)
        if self.log_over is not None and gap > self.log_over:
            print(f"    gap {gap * 1e3:6.0f} ms ending at +{now - self.t0:6.2f} s", flush=True)
            if self.stacks is not None:
                for line in self.stacks.summary(self.last, now):
                    print(f"      {line}", flush=True)
        self.last = now

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_bytes())

    def reset(self) -> None:
        self.last = self.t0 = time.perf_counter()
        self.longest = 0.0
        self.peak = _rss_bytes()

    def close(self) -> None:
        self._stop.set()
        self.timer.stop()


def _log_full_collections(probe: Probe) -> None:
    """Print each full garbage collection: its thread, start (from the step's start) and length."""
    import gc

    started: dict[int, float] = {}

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        ident = threading.get_ident()
        if phase == "start":
            started[ident] = time.perf_counter()
            return
        t = started.pop(ident, None)
        if t is not None:
            name, ms = threading.current_thread().name, (time.perf_counter() - t) * 1e3
            print(f"    full collection in {name}: +{t - probe.t0:6.2f} s, {ms:.0f} ms", flush=True)

    gc.callbacks.append(callback)


def step(
    clock: FrameClock,
    probe: Probe,
    action: Callable[[], object],
    done: Callable[[], bool],
    timeout: float,
    settle: float = 1.0,
) -> dict[str, float]:
    """Time ``action()`` until ``done()`` holds and a frame was drawn after that; the interface
    stall is the longest until ``settle`` seconds after that frame (work a step leaves for later
    event-loop turns, such as the reference's colouring after a run, stalls the interface too)."""
    app = clock.app
    app.processEvents()
    probe.reset()
    t0 = time.perf_counter()
    action()
    returned = time.perf_counter() - t0
    deadline = t0 + timeout
    while not done():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() > deadline:
            raise TimeoutError("the step did not complete")
    t_done = time.perf_counter()
    clock.canvas.update()
    while clock.first_after(t_done) is None:
        app.processEvents()
        if time.perf_counter() > deadline:
            raise TimeoutError("no frame was drawn")
    frame = clock.first_after(t_done) - t0  # type: ignore[operator]
    settle_until = time.perf_counter() + settle  # the turns a step leaves for later are its own
    while time.perf_counter() < settle_until:
        app.processEvents()
        time.sleep(0.002)
    probe._tick()
    return {
        "returned_s": returned,
        "seconds": frame,
        "stall_s": probe.longest,
        "peak_gb": probe.peak / 1e9,
    }


def click_centre(viewer) -> None:
    """A real left click (press, release) at the centre of the canvas."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    native = viewer.window._qt_viewer.canvas.native  # benchmark only: the canvas' Qt widget
    centre = QPoint(native.width() // 2, native.height() // 2)
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, centre)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", required=True, help="SpatialData .zarr from xenium_store.py")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    parser.add_argument("--screenshots", default=None, help="folder for the two screenshots")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument(
        "--gaps",
        type=float,
        default=None,
        metavar="MS",
        help="print every interface stall longer than MS milliseconds and every full garbage collection",
    )
    parser.add_argument("--open-only", action="store_true", help="stop after the open step")
    parser.add_argument(
        "--elements",
        action="store_true",
        help="after the open, draw the cells as each other element the element box offers, then back",
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellmapper.viewer.transforms import viewer_camera
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)  # benchmark only: a fixed window size
    app = QApplication.instance()
    widget = CellMapperWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    t_warm = time.perf_counter()
    widget.wait_idle(timeout=args.timeout)  # its start-up warm-up, done while a user picks the files
    print(f"start-up warm-up (imports, kernels) done after {time.perf_counter() - t_warm:.2f} s", flush=True)
    for _ in range(5):
        app.processEvents()
    clock = FrameClock(viewer)
    probe = Probe(None if args.gaps is None else args.gaps / 1e3)
    if args.gaps is not None:
        _log_full_collections(probe)
    rows: dict[str, dict[str, float]] = {}
    out_dir = Path(tempfile.mkdtemp(prefix="xenium_widget_"))

    def record(name: str, result: dict[str, float]) -> None:
        rows[name] = result
        print(
            f"{name:<28s} {result['seconds']:8.2f} s  (call returned {result['returned_s']:.2f} s)  "
            f"longest stall {result['stall_s']:7.2f} s  peak {result['peak_gb']:.2f} GB",
            flush=True,
        )

    try:
        record(
            "open reference + query",
            step(
                clock,
                probe,
                lambda: (widget.open_reference(args.reference), widget.open_query(args.query)),
                lambda: widget.scene.cells_layer is not None and not widget.busy(),
                args.timeout,
            ),
        )
        kind = widget.scene.cells_layer.__class__.__name__
        print(f"  element {widget.element_combo.currentText()!r} drawn as a {kind} layer", flush=True)
        if args.open_only and not args.elements:
            return 0
        if args.elements:
            combo = widget.element_combo
            first = combo.currentText()
            others = [combo.itemText(i) for i in range(combo.count()) if combo.itemText(i) != first]
            for element in [*others, first]:
                record(
                    f"draw as {element}",
                    step(
                        clock,
                        probe,
                        lambda element=element: combo.setCurrentText(element),
                        lambda element=element: (
                            widget.scene.geometry is not None
                            and widget.scene.geometry.element == element
                            and not widget.busy()
                            and not widget.scene.drawing
                        ),
                        args.timeout,
                    ),
                )
            if args.open_only:
                return 0
        widget.presence_check.setChecked(True)
        widget.niches_check.setChecked(True)
        widget.niches_spin.setValue(8)
        record(
            "run (genes, presence, niches 8)",
            step(
                clock,
                probe,
                widget.run,
                lambda: not widget.controller.is_running and widget.result is not None,
                args.timeout,
            ),
        )
        keys = [widget.color_combo.itemText(i) for i in range(widget.color_combo.count())]
        first = widget.color_combo.currentText()
        switches = (
            [k for k in keys if k.endswith("_conf")][:1] + [k for k in keys if k == "niche"][:1] + [first]
        )
        for key in switches:
            record(
                f"colour by {key}",
                step(
                    clock,
                    probe,
                    lambda key=key: widget.color_combo.setCurrentText(key),
                    lambda: True,
                    args.timeout,
                ),
            )
        if args.screenshots:
            Path(args.screenshots).mkdir(parents=True, exist_ok=True)
            viewer.reset_view()
            viewer.screenshot(str(Path(args.screenshots) / "whole_slide.png"), canvas_only=True)
        # a cell near the tissue's centre, in world (y, x) coordinates
        coords = widget.scene.geometry.coords_yx
        middle = np.nanmedian(coords, axis=0)
        target = coords[np.nanargmin(((coords - middle) ** 2).sum(axis=1))]
        camera = viewer_camera(viewer)
        camera.center = tuple(float(v) for v in target)
        camera.zoom = viewer.window._qt_viewer.canvas.native.width() / (60 / PIXEL_SIZE_UM)
        for _ in range(3):
            app.processEvents()
        if args.screenshots:
            viewer.screenshot(str(Path(args.screenshots) / "zoom_60um.png"), canvas_only=True)
        before = widget.cell_label.text()
        record(
            "click a cell",
            step(
                clock,
                probe,
                lambda: click_centre(viewer),
                lambda: widget.cell_label.text() != before,
                args.timeout,
            ),
        )
        print(f"  clicked: {widget.cell_label.text().splitlines()[0] if widget.cell_label.text() else ''}")
        target_path = out_dir / "annotated.zarr"
        written: list[object] = []
        record(
            "export",
            step(
                clock,
                probe,
                lambda: written.append(widget.export(target_path, confirm=False)),
                lambda: bool(written) and (written[0] is None or written[0].done),
                args.timeout,
            ),
        )
        if not written or written[0] is None or written[0].outcome is None:
            print("  export failed (see the notification above)")
    finally:
        probe.close()
        shutil.rmtree(out_dir, ignore_errors=True)
    peak = max(r["peak_gb"] for r in rows.values()) if rows else 0.0
    print(f"peak RSS over all steps: {peak:.2f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
