"""widgets.repaint: napari's canvas repaints in an event-loop turn of its own."""

from __future__ import annotations

from qtpy.QtWidgets import QWidget

from napari_cellmapper.widgets.repaint import deferred_repaint, viewer_canvases


def test_deferred_repaint_turns_updates_off_inside_and_back_on_by_a_timer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docked = QWidget()
    viewer.window.add_dock_widget(docked, name="docked")
    canvases = viewer_canvases(docked)
    assert len(canvases) == 1 and canvases[0].updatesEnabled()
    with deferred_repaint(docked):
        assert not canvases[0].updatesEnabled()
    assert not canvases[0].updatesEnabled()  # still off until the event loop turns
    qtbot.waitUntil(canvases[0].updatesEnabled, timeout=2000)


def test_then_runs_after_the_canvas_may_paint_again(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docked = QWidget()
    viewer.window.add_dock_widget(docked, name="docked")
    (canvas,) = viewer_canvases(docked)
    seen: list[bool] = []
    with deferred_repaint(docked, then=lambda: seen.append(canvas.updatesEnabled())):
        pass
    assert seen == []  # not before the event loop turns
    qtbot.waitUntil(lambda: bool(seen), timeout=2000)
    assert seen == [True]


def test_a_widget_outside_a_main_window_has_no_canvas(qtbot):
    lone = QWidget()
    qtbot.addWidget(lone)
    assert viewer_canvases(lone) == []
    with deferred_repaint(lone):  # nothing to defer, nothing fails
        pass
