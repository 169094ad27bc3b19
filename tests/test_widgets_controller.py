"""The worker controller: napari's activity bar (opt-in) is updated at each new stage, and within a
stage at most every PROGRESS_INTERVAL seconds (each update repaints the interface)."""

from __future__ import annotations

import pytest

from napari_cellmapper.core.progress import Progress

pytestmark = pytest.mark.gui


class _Bar:
    made: list[_Bar] = []

    def __init__(self, total: int = 1, desc: str = "") -> None:
        self.total, self.desc, self.n, self.updates = total, desc, 0, 0
        _Bar.made.append(self)

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int) -> None:
        self.n += n
        self.updates += 1

    def close(self) -> None:
        pass


def test_activity_bar_updates_are_throttled_within_a_stage(qtbot, monkeypatch):
    import napari.utils

    from napari_cellmapper.widgets import controller as C

    monkeypatch.setattr(napari.utils, "progress", _Bar)
    clock = {"now": 100.0}
    monkeypatch.setattr(C.time, "monotonic", lambda: clock["now"])
    ctrl = C.MappingController(lambda result: None, activity=True)
    seen: list[tuple[str, int]] = []
    ctrl.progressed.connect(lambda stage, done, total: seen.append((stage, done)))
    for i in range(100):  # 100 events within 0.1 s: one bar update
        clock["now"] += 0.001
        ctrl._on_progress(Progress("search", i + 1, 100))
    (bar,) = _Bar.made
    assert bar.updates == 1 and len(seen) == 100  # the widget's own status still sees every event
    ctrl._on_progress(Progress("transfer", 1, 10))  # a new stage is shown at once
    assert bar.updates == 2 and bar.desc == "transfer"
    clock["now"] += C.PROGRESS_INTERVAL
    ctrl._on_progress(Progress("transfer", 5, 10))
    assert bar.updates == 3 and bar.n == 5


def test_activity_panel_is_opt_in(qtbot, monkeypatch):
    """Off by default (its animation slows software-rendered viewers); NAPARI_CELLMAPPER_ACTIVITY=1
    turns it on. The widget's own status and progress bar see every event either way."""
    import napari.utils

    from napari_cellmapper.widgets import controller as C

    _Bar.made.clear()
    monkeypatch.setattr(napari.utils, "progress", _Bar)
    monkeypatch.delenv(C.ACTIVITY_ENV, raising=False)
    ctrl = C.MappingController(lambda result: None)
    seen: list[str] = []
    ctrl.progressed.connect(lambda stage, done, total: seen.append(stage))
    ctrl.prepare_activity_bar()
    ctrl._on_progress(Progress("search", 1, 10))
    assert not ctrl.activity and _Bar.made == [] and seen == ["search"]
    monkeypatch.setenv(C.ACTIVITY_ENV, "1")
    ctrl = C.MappingController(lambda result: None)
    ctrl._on_progress(Progress("search", 1, 10))
    assert ctrl.activity and len(_Bar.made) == 1


def test_background_tasks_follow_the_activity_setting(qtbot, monkeypatch):
    """Reads, placements and exports appear in napari's activity panel only when asked, as runs."""
    import napari.utils

    from napari_cellmapper.widgets import controller as C
    from napari_cellmapper.widgets.background import BackgroundTask

    _Bar.made.clear()
    monkeypatch.setattr(napari.utils, "progress", _Bar)
    for setting, shown in ((None, False), ("1", True)):
        if setting is None:
            monkeypatch.delenv(C.ACTIVITY_ENV, raising=False)
        else:
            monkeypatch.setenv(C.ACTIVITY_ENV, setting)
        task = BackgroundTask("query", lambda: 1, desc="Reading", on_returned=lambda v: v, on_errored=repr)
        assert task.activity is shown
        assert task.start().wait(timeout=10) == 1
    assert len(_Bar.made) == 1 and _Bar.made[0].desc == "Reading"
    forced = BackgroundTask(
        "export", lambda: 2, desc="x", on_returned=lambda v: v, on_errored=repr, activity=False
    )
    assert not forced.activity


def test_the_reading_worker_warms_up_what_napari_loads_lazily(monkeypatch):
    import sys

    from napari_cellmapper.widgets import background

    monkeypatch.setattr(background, "_WARM", False)
    background.warm_up()
    assert "PIL.Image" in sys.modules and background._WARM
    calls = []
    monkeypatch.setattr(background, "_import", lambda names: calls.append(names))  # once only
    background.warm_up()
    assert calls == []


def test_the_session_warm_up_loads_the_kernels_and_k_means(monkeypatch):
    import sys

    from napari_cellmapper.core import jit
    from napari_cellmapper.widgets import background

    loaded = []
    monkeypatch.setattr(background, "_WARM", False)
    monkeypatch.setattr(jit, "load_kernels", lambda: loaded.append(True))
    monkeypatch.setattr(jit, "kernels_ready", lambda: False)  # not compiled: the fallbacks run
    background.warm_session().join(60)
    assert not loaded
    monkeypatch.setattr(jit, "kernels_ready", lambda: True)
    thread = background.warm_session()
    thread.join(60)
    assert not thread.is_alive() and thread.daemon and loaded == [True]
    assert background._WARM  # the reader's warm-up done too: off the reader's path
    assert {"sklearn.cluster", "spatialdata", "anndata"} <= set(sys.modules)


def test_the_reading_worker_collects_garbage_once_after_reading(tmp_path, monkeypatch):
    """While the worker reads and places the cells, the garbage collector is paused (no full
    collections holding the interpreter lock as the objects pile up); then the one full
    collection runs in the worker, not in the interface thread's turn that builds the layers
    (issue 15)."""
    import gc

    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.widgets import background

    path = tmp_path / "circles.zarr"
    spatial_example("circles").write(path)
    calls, enabled_while = [], []
    real_place = background.place_cells

    def place(*args):
        enabled_while.append(gc.isenabled())
        return real_place(*args)

    monkeypatch.setattr(background, "place_cells", place)
    monkeypatch.setattr(background, "collect_garbage", lambda: calls.append(gc.isenabled()))
    assert gc.isenabled()
    opened = background.read_query(path)
    assert enabled_while == [False] and calls == [True] and opened.geometry is not None
    assert gc.isenabled()


def test_the_reading_worker_places_cells_with_text_ids(tmp_path):
    """Xenium's shapes carry text cell ids ("aaaceima-1"): the worker places them and finds each
    cell by its id, where a number finds none (a regression of the index of instance ids)."""
    from napari_cellmapper.datasets import spatial_example
    from napari_cellmapper.widgets import background

    sdata = spatial_example("circles")
    table = sdata.tables["table"]
    circles = sdata.shapes["cells"]
    circles.index = [f"cell-{i}" for i in circles.index]
    table.obs["cell_id"] = [f"cell-{i}" for i in table.obs["cell_id"]]
    path = tmp_path / "text_ids.zarr"
    sdata.write(path)
    opened = background.read_query(path)
    geometry = opened.geometry
    assert geometry is not None and geometry.kind == "circles"
    first = str(geometry.instance_ids[0])
    assert first.startswith("cell-") and geometry.row_of_instance(first) == 0
    assert geometry.row_of_instance(1) is None
