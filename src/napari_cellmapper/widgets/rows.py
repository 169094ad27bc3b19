"""Small layout helpers shared by the dock panels."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QWidget


def row(*widgets: QWidget) -> QWidget:
    """The widgets side by side, without margins (one form row)."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return box
