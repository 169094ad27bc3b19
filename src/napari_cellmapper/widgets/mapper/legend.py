"""Small Qt widgets for the dock: a categorical legend and a continuous colorbar."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QImage, QPixmap
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from napari_cellmapper.viewer.colors import ColorInfo


def _swatch(hex_color: str, size: int = 12) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(hex_color))
    return pixmap


class LegendWidget(QListWidget):
    """Categories with colour swatches."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Categories shown on the cells, with their colours")
        self.setMaximumHeight(170)
        self.setMinimumHeight(60)

    def set_entries(self, entries: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> None:
        self.clear()
        for label, color in entries:
            item = QListWidgetItem(str(label))
            item.setIcon(_swatch_icon(color))
            item.setToolTip(f"{label}: {color}")
            self.addItem(item)

    def labels(self) -> list[str]:
        return [self.item(i).text() for i in range(self.count())]


def _swatch_icon(color: str):  # noqa: ANN202 - QIcon
    from qtpy.QtGui import QIcon

    return QIcon(_swatch(color))


class ColorbarWidget(QWidget):
    """A horizontal colormap strip with its limits."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Colormap of the continuous value shown on the cells")
        self.bar = QLabel()
        self.bar.setFixedHeight(14)
        self.bar.setScaledContents(True)
        self.low = QLabel("0")
        self.high = QLabel("1")
        self.high.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.title = QLabel("")
        row = QHBoxLayout()
        row.addWidget(self.low)
        row.addStretch(1)
        row.addWidget(self.high)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.bar)
        layout.addLayout(row)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setVisible(False)
        layout.addWidget(self.note)
        layout.addStretch(1)
        self.colormap = "viridis"
        self.clim = (0.0, 1.0)

    def set_colormap(self, name: str, clim: tuple[float, float], title: str = "", note: str = "") -> None:
        import matplotlib

        self.colormap, self.clim = name, (float(clim[0]), float(clim[1]))
        rgba = (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :4] * 255).astype(np.uint8)
        strip = np.ascontiguousarray(np.repeat(rgba[None], 8, axis=0))
        image = QImage(strip.data, 256, 8, 256 * 4, QImage.Format.Format_RGBA8888).copy()
        self.bar.setPixmap(QPixmap.fromImage(image))
        self.low.setText(f"{self.clim[0]:.3g}")
        self.high.setText(f"{self.clim[1]:.3g}")
        self.title.setText(title)
        self.note.setText(note)
        self.note.setVisible(bool(note))


class ColorKey(QStackedWidget):
    """Legend for categories or colorbar for numbers, whichever the current colouring needs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.legend = LegendWidget()
        self.colorbar = ColorbarWidget()
        self.addWidget(self.legend)
        self.addWidget(self.colorbar)
        self.setMaximumHeight(170)

    def show_info(self, info: ColorInfo | None) -> None:
        if info is None:
            self.legend.set_entries([])
            self.setCurrentWidget(self.legend)
        elif info.categorical:
            self.legend.set_entries(list(info.entries))
            self.setCurrentWidget(self.legend)
        else:
            self.colorbar.set_colormap(info.colormap, info.clim, info.key, info.note)
            self.setCurrentWidget(self.colorbar)
