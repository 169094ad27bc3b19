"""Repaint napari's canvas in an event-loop turn of its own.

Qt paints a widget in the event-loop turn after the one that changed it, ahead of that turn's
timers: a change to 100k cells' colours and the frame that draws them (about 80 ms in software
OpenGL) then stall the interface as one block. :func:`deferred_repaint` keeps the canvas from
asking for a paint while the layers change and asks for it from a zero timer, which runs after
the timers already due: the interface answers between the change and the frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMainWindow, QWidget


def viewer_canvases(widget: QWidget) -> list[QWidget]:
    """The OpenGL canvases of the main window ``widget`` is docked in (napari's central widget;
    dock widgets' own canvases, such as the reference view, not)."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    window = widget.window()
    central = window.centralWidget() if isinstance(window, QMainWindow) else None
    return [] if central is None else list(central.findChildren(QOpenGLWidget))


@contextlib.contextmanager
def deferred_repaint(
    widget: QWidget, canvases: list[QWidget] | None = None, then: Callable[[], object] | None = None
) -> Iterator[None]:
    """Inside: napari's canvas (or ``canvases``) ignores update requests. After: a zero timer
    turns updates back on, which schedules one paint (``setUpdatesEnabled(True)`` calls
    ``update()``), and ``then`` runs from another zero timer, after that paint's turn (another
    canvas of the same window that repaints then is not composed in the same frame)."""
    canvases = viewer_canvases(widget) if canvases is None else canvases
    canvases = [c for c in canvases if c.updatesEnabled()]
    for canvas in canvases:
        canvas.setUpdatesEnabled(False)
    try:
        yield
    finally:

        def enable() -> None:
            for canvas in canvases:
                with contextlib.suppress(RuntimeError):  # the window closed meanwhile
                    canvas.setUpdatesEnabled(True)
            if then is not None:
                QTimer.singleShot(0, then)

        QTimer.singleShot(0, enable)


@contextlib.contextmanager
def updates_held(widget: QWidget) -> Iterator[None]:
    """Inside: ``widget`` (and its children) is not repainted, not even by a call that repaints at
    once (``QProgressBar.setValue``); after: one paint, in a later turn. Every repaint of a widget
    recomposes the window with its OpenGL canvases (30-40 ms each in software OpenGL)."""
    widget.setUpdatesEnabled(False)
    try:
        yield
    finally:
        widget.setUpdatesEnabled(True)
