"""Issue 11's linked-selection figure: how long a selection takes to show in the other view.

A synthetic query of ``--cells`` cells (positions in ``obsm["spatial"]``, opened through the
widget as a spatial AnnData) and a reference of ``--reference`` cells (UMAP, 20 types) are loaded
into the real CellMapper widget under Xvfb (window 1600 x 1000); the mapping result (k = 30
neighbours per cell, drawn within the cell's type) is applied as a run would apply it, then the
reference view is docked.
Timed from the call until the canvases have processed the update (``processEvents``):

``legend``   a legend entry of the reference (one type): the query cells mapped there are ringed
``lasso``    a lasso around 1% of the reference cells (``select_reference``)
``tissue``   the reference neighbours of ~1,000 tissue cells (a lasso on the tissue)

Medians of ``--repeats``; the worker-side mapping is not part of this figure. Also printed: the
part spent in the call itself (before the canvases draw) and the process CPU time (all threads,
the software renderer's too), which the machine's other load moves less than the wall time.

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb PYTHONPATH=src \\
        .venv/bin/python benchmarks/linked_selection.py --cells 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def _data(n_query: int, n_ref: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    types = np.array([f"type {i}" for i in range(20)])
    ref_type = rng.integers(0, 20, n_ref)
    centres = rng.normal(scale=10, size=(20, 2))
    reference = AnnData(
        X=sparse.csr_matrix((n_ref, 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(types[ref_type])}, index=[f"r{i}" for i in range(n_ref)]
        ),
    )
    reference.obsm["X_umap"] = centres[ref_type] + rng.normal(size=(n_ref, 2))
    q_type = rng.integers(0, 20, n_query)
    query = AnnData(
        X=sparse.csr_matrix((n_query, 1), dtype=np.float32),
        obs=pd.DataFrame(index=[f"q{i}" for i in range(n_query)]),
    )
    query.obsm["spatial"] = rng.uniform(0, 20_000, (n_query, 2))
    by_type = [np.flatnonzero(ref_type == t) for t in range(20)]
    neighbours = np.empty((n_query, k), dtype=np.int64)
    for t in range(20):
        rows = np.flatnonzero(q_type == t)
        neighbours[rows] = by_type[t][rng.integers(0, len(by_type[t]), (len(rows), k))]
    return reference, query, neighbours, types[q_type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellmapper.io.anndata_spatial import spatialdata_from_anndata
    from napari_cellmapper.widgets.job import MappingResult
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget
    from napari_cellmapper.widgets.sources import QuerySource, ReferenceSource

    reference, query, neighbours, labels = _data(args.cells, args.reference, 30)
    viewer = napari.Viewer(show=True)
    # the window fills the Xvfb screen: napari restores the last session's size otherwise, and the
    # canvases' size changes what the software renderer draws
    viewer.window._qt_window.resize(1600, 1000)
    widget = CellMapperWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CellMapper", area="right")
    start = time.perf_counter()
    widget.add_reference(ReferenceSource("reference", reference))
    widget.add_query(QuerySource("query", spatialdata_from_anndata(query)))
    QApplication.processEvents()
    print(f"open: {time.perf_counter() - start:.1f} s")
    table = widget.table
    obs = pd.DataFrame({"cell_type_pred": pd.Categorical(labels)}, index=table.obs_names)
    result = MappingResult(
        job_id=1, rows=np.arange(table.n_obs), obs=obs, obsm={}, uns={},
        reference_obs=pd.DataFrame(index=reference.obs_names), neighbor_indices=neighbours,
        obs_keys=("cell_type",),
    )  # fmt: skip
    widget._apply_result(result)
    view = widget.open_embedding()
    QApplication.processEvents()

    def timed(action) -> tuple[float, float, float]:
        """(wall s, of which the call before drawing, process CPU s: all threads, llvmpipe's too)."""
        begin, cpu = time.perf_counter(), time.process_time()
        action()
        called = time.perf_counter()
        QApplication.processEvents()
        end = time.perf_counter()
        return end - begin, called - begin, time.process_time() - cpu

    rng = np.random.default_rng(1)
    geometry = widget.scene.geometry
    steps = {
        "legend": lambda: view.select_category("cell_type", "type 3"),
        "lasso": lambda: view.select_reference(rng.random(args.reference) < 0.01),
        "tissue": lambda: view.show_neighbours_of(
            np.asarray(geometry.rows)[rng.integers(0, len(geometry.rows), 1000)]
        ),
    }
    canvas = viewer.window._qt_viewer.canvas._scene_canvas  # sizes only: what is drawn
    print(
        f"{args.cells:,} query cells, {args.reference:,} reference cells, k = 30; canvases "
        f"{'x'.join(map(str, canvas.size))} (tissue), {'x'.join(map(str, view.canvas.size))} (reference)"
    )
    for name, action in steps.items():
        walls, calls, cpus = zip(*(timed(action) for _ in range(args.repeats)), strict=True)
        low, high = min(walls), max(walls)
        print(
            f"  {name:8s} median {statistics.median(walls):.3f} s  (min {low:.3f}, max {high:.3f}); "
            f"call {statistics.median(calls):.3f} s, CPU {statistics.median(cpus):.3f} s"
        )
    viewer.close()


if __name__ == "__main__":
    main()
