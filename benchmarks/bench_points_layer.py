"""Benchmark: 1M cells as a napari Points layer, time to the first rendered frame.

Run under a display (Xvfb on headless machines)::

    xvfb-run -a -s "-screen 0 1600x1000x24" env PYTHONPATH=src \\
        .venv/bin/python benchmarks/bench_points_layer.py --n 1000000 --repeats 5

Times, each from the call until the canvas has drawn a frame showing the result:

1. napari's straightforward path, once (slow; ``--skip-naive`` leaves it out): ``add_points``
   with ``features=`` and ``face_color="cell_type"`` plus a colour cycle, then
   ``layer.face_color = "confidence"``;
2. ``add_cell_points`` (coloured by cell type);
3. ``color_points_by``: cell type -> confidence -> niche -> cell type.

"First rendered frame": a callback on the vispy canvas' draw event (connected last, so it runs
after the scene was drawn) flushes vispy's GL command queue and calls ``glFinish``, so the time is
taken when the GL implementation (llvmpipe under Xvfb) has really rasterised the frame. After each
operation Qt's event loop is run (``QApplication.processEvents``) until such a frame has been
drawn. Columns:

``returned``  the call itself (CPU side; no frame is drawn inside ``color_points_by``)
``frame``     until the first frame finished after the call returned (it shows the result)
``idle``      until Qt's event queue is drained after that frame
The last row ("baseline") only redraws the unchanged canvas: the GL cost of drawing the points
as the layer is set up (``GL_POINTS`` for large layers; ``gl_floor.py`` gives the renderer's
floor). 1% of the cells have no cell type (NaN); napari's
colour cycle raises on NaN, so the straightforward path gets them as an extra "unmapped" category.

A screenshot (``viewer.screenshot(canvas_only=True)``) of the final state checks the pixels, not
timed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

N_TYPES = 20
N_NICHES = 8
TISSUE_UM = 10_000.0


def make_cells(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """n cells in a 10k x 10k um tissue: (y, x), cell type (20), confidence [0, 1], niche (8)."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, TISSUE_UM, size=(n, 2)).astype(np.float32)
    types = [f"type_{i:02d}" for i in range(N_TYPES)]
    niches = [f"niche_{i}" for i in range(N_NICHES)]
    type_codes = rng.integers(0, N_TYPES, n).astype(np.int8)
    type_codes[rng.random(n) < 0.01] = -1  # 1% unmapped cells
    features = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(type_codes, categories=types),
            "confidence": rng.random(n).astype(np.float32),
            "niche": pd.Categorical.from_codes(rng.integers(0, N_NICHES, n), categories=niches),
        }
    )
    palette = [
        "#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2", "#b5bd61",
        "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
        "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31",
    ]  # fmt: skip
    return coords, features, palette


class FrameClock:
    """Times of frames the canvas has finished drawing (glFinish'ed)."""

    def __init__(self, viewer) -> None:
        from qtpy.QtWidgets import QApplication
        from vispy.gloo import gl

        self.app = QApplication.instance()
        self.gl = gl
        self.canvas = viewer.window._qt_viewer.canvas._scene_canvas  # benchmark only
        self.frames: list[float] = []
        self.canvas.events.draw.connect(self._on_draw, position="last")

    def _on_draw(self, event=None) -> None:
        self.canvas.context.flush_commands()
        self.gl.glFinish()
        self.frames.append(time.perf_counter())

    def first_after(self, t: float) -> float | None:
        return next((f for f in self.frames if f > t), None)

    def run(self, op: Callable[[], object], timeout: float = 300.0) -> dict[str, float]:
        """Time op() to returned / first frame / idle."""
        self.app.processEvents()
        gc.collect()
        t0 = time.perf_counter()
        op()
        t1 = time.perf_counter()
        deadline = t1 + timeout
        # a frame drawn inside op() (Qt repaints synchronously when e.g. the layer controls
        # resize the canvas) may show an intermediate state: count the first one after it returned
        while self.first_after(t1) is None:
            self.app.processEvents()
            if self.first_after(t1) is None:
                self.canvas.update()
            if time.perf_counter() > deadline:
                raise TimeoutError("no frame was drawn")
        t_frame = self.first_after(t1)
        self.app.processEvents()
        t_idle = time.perf_counter()
        return {"returned": t1 - t0, "frame": t_frame - t0, "idle": t_idle - t0}  # type: ignore[operator]


def _row(label: str, runs: list[dict[str, float]]) -> str:
    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)

    all_frames = " ".join(f"{r['frame']:.2f}" for r in runs)
    return (
        f"| {label:<50} | {med('returned'):8.2f} | {med('frame'):8.2f} | {med('idle'):8.2f} "
        f"| {len(runs):2d} | {all_frames} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="number of cells")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-naive", action="store_true", help="leave out napari's straightforward path")
    parser.add_argument("--size", type=float, default=5.0, help="point size in um")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellmapper.viewer.points import add_cell_points, categorical_rgba, color_points_by

    coords, features, palette = make_cells(args.n)
    colors = {"cell_type": palette}

    viewer = napari.Viewer(show=True, title="bench_points_layer")
    app = QApplication.instance()
    for _ in range(5):
        app.processEvents()
    clock = FrameClock(viewer)
    # the canvas extent: the camera is fit to the tissue by the first layer of each add
    rows: list[str] = []
    layer_counts: list[int] = []

    if not args.skip_naive:
        holder: dict[str, object] = {}
        # napari's colour cycle cannot sort NaN with strings (TypeError in np.unique): give the
        # straightforward path the unmapped cells as one more category
        naive_features = features.copy()
        naive_features["cell_type"] = (
            naive_features["cell_type"].cat.add_categories(["unmapped"]).fillna("unmapped")
        )

        def naive_add() -> None:
            holder["layer"] = viewer.add_points(
                coords,
                features=naive_features,
                face_color="cell_type",
                face_color_cycle=[*palette, "#d3d3d3"],
                size=args.size,
                name="naive",
            )

        def naive_switch() -> None:
            holder["layer"].face_color = "confidence"  # type: ignore[attr-defined]

        r_add = clock.run(naive_add)
        rows.append(_row("napari naive: add_points(face_color='cell_type')", [r_add]))
        print(rows[-1], flush=True)
        r_sw = clock.run(naive_switch)
        rows.append(_row("napari naive: face_color = 'confidence'", [r_sw]))
        print(rows[-1], flush=True)
        viewer.layers.clear()
        holder.clear()
        app.processEvents()

    add_runs = []
    layer = None
    for _ in range(args.repeats):
        if layer is not None:
            viewer.layers.clear()
            layer = None
            app.processEvents()
        box: dict[str, object] = {}

        def ours_add(box=box) -> None:
            box["layer"] = add_cell_points(
                viewer, coords, features, "cell_type", colors=colors, size=args.size, name="cells"
            )

        add_runs.append(clock.run(ours_add))
        layer = box["layer"]
        print(f"  add_cell_points: {add_runs[-1]}", file=sys.stderr, flush=True)
    rows.append(_row("ours: add_cell_points(color_by='cell_type')", add_runs))
    print(rows[-1], flush=True)

    n_layers = len(viewer.layers)
    sequence = ["confidence", "niche", "cell_type"]
    switch_runs: dict[str, list[dict[str, float]]] = {k: [] for k in sequence}
    for _ in range(args.repeats):
        for key in sequence:
            switch_runs[key].append(clock.run(lambda key=key: color_points_by(layer, key)))
            layer_counts.append(len(viewer.layers))
    prev = "cell_type"
    for key in sequence:
        rows.append(_row(f"ours: color_points_by {prev} -> {key}", switch_runs[key]))
        print(rows[-1], flush=True)
        prev = key

    base_runs = [clock.run(lambda: clock.canvas.update()) for _ in range(args.repeats)]
    rows.append(_row("baseline: redraw unchanged canvas (GL only)", base_runs))

    # correctness of what was drawn last (cell type) and that no layer was added
    expected = categorical_rgba(features["cell_type"], palette)
    idx = np.random.default_rng(1).integers(0, args.n, 1000)
    ok_colors = np.allclose(np.asarray(layer.face_color)[idx], expected[idx], atol=1e-6)
    ok_layers = all(c == n_layers for c in layer_counts)
    shot = viewer.screenshot(canvas_only=True)
    drawn = float((np.asarray(shot)[..., :3].sum(-1) > 0).mean())

    header = (
        f"\nn = {args.n:,} points, repeats = {args.repeats}, seconds (median; 'all' lists 'frame' "
        f"per repeat)\n"
        f"| {'operation':<50} | returned |    frame |     idle |  n | all (frame) |\n"
        f"|{'-' * 52}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 4}|{'-' * 13}|"
    )
    print(header)
    for r in rows:
        print(r)
    print(
        f"\nchecks: face colours match categorical_rgba: {ok_colors}; layers unchanged by "
        f"recolouring: {ok_layers} ({n_layers}); canvas pixels drawn: {drawn:.2f}"
    )
    try:
        from vispy.gloo import gl

        print(f"GL: {gl.glGetParameter(gl.GL_RENDERER)}")
    except Exception:  # pragma: no cover
        pass
    viewer.close()
    return 0 if (ok_colors and ok_layers) else 1


if __name__ == "__main__":
    sys.exit(main())
