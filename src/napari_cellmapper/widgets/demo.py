"""``napari-cellmapper demo``: napari with the built-in example loaded and the widget docked."""

from __future__ import annotations

from typing import Any


def open_demo(viewer: Any = None, *, run: bool = False) -> tuple[Any, Any]:
    """Load the example into ``viewer`` (a new one by default), dock the widget; optionally run.

    Returns ``(viewer, widget)``; with ``run=True`` the mapping is started (in the background).
    """
    import napari

    from napari_cellmapper.widgets._npe2 import sample_both
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

    own_window = viewer is None
    viewer = napari.Viewer(title="napari-cellmapper demo") if own_window else viewer
    for data, meta, kind in sample_both():
        viewer.add_layer(_layer(data, meta, kind)) if "channel_axis" not in meta else viewer.add_image(
            data, **meta
        )
    widget = CellMapperWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CellMapper", area="right")
    _fit(viewer, widget, fill_screen=own_window)
    if run:
        widget.presence_check.setChecked(True)
        widget.niches_check.setChecked(True)
        widget.run()
    return viewer, widget


def _fit(viewer: Any, widget: Any, *, fill_screen: bool) -> None:
    """Open the window at the screen's available size (so the widget's controls, Run included, show
    without scrolling) and fit what is drawn on the canvas into it once it has its final size."""
    from qtpy.QtWidgets import QApplication

    if fill_screen and (screen := QApplication.primaryScreen()) is not None:
        area = screen.availableGeometry()
        viewer.window.set_geometry(area.left(), area.top(), area.width(), area.height())
    widget.fit_view()  # (and again once the dock widgets have taken their room)


def _layer(data: Any, meta: dict[str, Any], kind: str) -> Any:
    from napari.layers import Layer

    return Layer.create(data, meta, kind)


def launch_demo(run: bool = False) -> None:
    """Open the demo and start napari's event loop (blocks until the window is closed)."""
    import napari

    open_demo(run=run)
    napari.run()
