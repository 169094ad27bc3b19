"""The worker controller: napari's activity bar is updated at each new stage, and within a stage at
most every PROGRESS_INTERVAL seconds (each update repaints the interface)."""

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
    ctrl = C.MappingController(lambda result: None)
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
