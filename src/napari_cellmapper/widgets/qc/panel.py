"""The Label QC dock panel: question the transferred labels of the CellMapper widget's last run.

Plots (matplotlib canvases): the confidence histogram with the threshold, the agreement with an
annotation the query already carries, and the composition of the labels per niche or region. The
threshold slider relabels the cells below it ``"unassigned"`` (grey) in
``obs["<key>_pred_thresholded"]`` and colours the cells by it; nothing is re-mapped. The panel is
fed by the CellMapper widget's ``resultChanged`` signal and computes nothing itself
(``core/qc.py``, ``plots.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_cellmapper.core.qc import (
    UNASSIGNED,
    UNASSIGNED_COLOR,
    Agreement,
    agreement_table,
    annotation_columns,
    apply_threshold,
    composition,
    confidence_histogram,
    threshold_labels,
    thresholded_key,
)
from napari_cellmapper.widgets.qc.plots import (
    PlotTheme,
    draw_agreement,
    draw_composition,
    draw_histogram,
    draw_message,
    save_png,
)

if TYPE_CHECKING:
    import napari

NICHE = "niche"
NO_RESULT = "Run a mapping in the CellMapper widget: its labels are questioned here."
NO_MAPPER = "Open the CellMapper widget (Plugins > CellMapper) and run a mapping."
#: the layout puts the three plots side by side above this width, else one under the other
WIDE = 900
#: milliseconds between the last slider move and relabelling the cells
APPLY_DELAY_MS = 120
PLOTS = ("confidence", "agreement", "composition")


def find_mapper(viewer: Any) -> Any:
    """The CellMapper widget docked in ``viewer`` (anything with ``resultChanged`` and a scene)."""
    try:
        docked = list(viewer.window.dock_widgets.values())
    except Exception:  # noqa: BLE001 - a viewer without a window (headless) has no docks
        return None
    return next((w for w in docked if hasattr(w, "resultChanged") and hasattr(w, "scene")), None)


def dock_qc(mapper: Any) -> QCWidget:
    """Show the Label QC panel of ``mapper``'s viewer (docked at the bottom once, then raised)."""
    viewer = mapper.viewer
    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, QCWidget):
            widget.attach(mapper)
            dock = widget.parentWidget()
            if dock is not None:
                dock.show()
                dock.raise_()
            return widget
    panel = QCWidget(viewer, mapper)
    viewer.window.add_dock_widget(panel, name="Label QC", area="bottom")
    _fit_height(panel)
    return panel


def _fit_height(panel: QCWidget) -> None:
    """Give the bottom dock the panel's preferred height (Qt docks open at their minimum)."""
    dock = panel.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if isinstance(window, QMainWindow):
        window.resizeDocks([dock], [panel.preferred_height()], Qt.Orientation.Vertical)


def _theme(viewer: Any) -> PlotTheme:
    """Plot colours from the viewer's napari theme (the dark defaults where unavailable)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return PlotTheme(
            background=theme.background.as_hex(),
            text=theme.text.as_hex(),
            muted=theme.highlight.as_hex(),
            line=theme.warning.as_hex(),
        )
    except Exception:  # noqa: BLE001 - any theme problem: the dark defaults
        return PlotTheme()


def _canvas(height: int = 290) -> FigureCanvasQTAgg:
    canvas = FigureCanvasQTAgg(Figure(figsize=(4.2, height / 100), dpi=100, layout="constrained"))
    canvas.setMinimumSize(260, height)
    canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
    return canvas


class QCWidget(QWidget):
    """Confidence histogram with a threshold, agreement table and composition bars, as PNGs."""

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, mapper: Any = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.mapper: Any = None
        self.theme = _theme(napari_viewer)
        self.agreement: Agreement | None = None
        self.composition: pd.DataFrame | None = None
        self._labels: pd.Categorical | None = None
        self._colors: dict[str, str] = {}
        self._apply_timer = QTimer(self)
        self._apply_timer.setSingleShot(True)
        self._apply_timer.setInterval(APPLY_DELAY_MS)
        self._apply_timer.timeout.connect(self.apply_threshold)
        self._find_timer = QTimer(self)  # opened from the Plugins menu before the CellMapper widget
        self._find_timer.setInterval(1000)
        self._find_timer.timeout.connect(self._find_mapper)
        self._build()
        if mapper is not None:
            self.attach(mapper)
        else:
            self._find_mapper()
            if self.mapper is None:
                self._find_timer.start()

    # ================================================================== layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        top = QHBoxLayout()
        self.key_combo = QComboBox()
        self.key_combo.setToolTip("Transferred labels to question (an obs key of the last run)")
        top.addWidget(QLabel("Labels"))
        top.addWidget(self.key_combo, 1)
        self.status = QLabel(NO_MAPPER)
        self.status.setWordWrap(True)
        self.status.setToolTip("What the panel shows")
        top.addWidget(self.status, 3)
        self.save_button = QPushButton("Save plots as PNG…")
        self.save_button.setToolTip("Write the three plots as PNG files (<name>_confidence.png, …)")
        top.addWidget(self.save_button)
        outer.addLayout(top)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = self.body = QWidget()
        self.plots_layout = QBoxLayout(QBoxLayout.Direction.LeftToRight, body)
        self.plots_layout.setContentsMargins(0, 0, 0, 0)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)

        # ---- confidence
        box = QGroupBox("Confidence")
        layout = QVBoxLayout(box)
        self.histogram_canvas = _canvas()
        self.histogram_canvas.setToolTip("Cells per confidence bin; grey bars fall below the threshold")
        layout.addWidget(self.histogram_canvas, 1)
        row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setToolTip(
            "Confidence threshold: cells below it become 'unassigned' (grey) in <key>_pred_thresholded"
        )
        self.threshold_label = QLabel("0.00")
        self.threshold_label.setToolTip("The confidence threshold")
        self.threshold_label.setMinimumWidth(32)
        row.addWidget(QLabel("Threshold"))
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_label)
        layout.addLayout(row)
        self.threshold_info = QLabel("")
        self.threshold_info.setToolTip("Cells below the threshold")
        self.threshold_info.setWordWrap(True)
        layout.addWidget(self.threshold_info)
        self.plots_layout.addWidget(box, 1)

        # ---- agreement
        box, layout, self.annotation_combo, self.agreement_canvas = self._plot_box(
            "Agreement with an annotation",
            "Compare with",
            "A categorical column the query already carries (a previous annotation) to compare with",
            "Cells per annotation (rows) and label (columns); colour: share of the row; "
            "rows name their agreement",
        )
        self.agreement_label = QLabel("")
        self.agreement_label.setWordWrap(True)
        self.agreement_label.setToolTip("Cells labelled as their annotation names them")
        layout.addWidget(self.agreement_label)
        self.plots_layout.addWidget(box, 1)

        # ---- composition
        box, _, self.group_combo, self.composition_canvas = self._plot_box(
            "Composition",
            "Per",
            "Niches, or a region/sample column of the query",
            "Share of each label per niche or region",
        )
        self.plots_layout.addWidget(box, 1)

        for combo in (self.key_combo, self.annotation_combo, self.group_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.key_combo.currentTextChanged.connect(lambda _: self._on_key_changed())
        self.annotation_combo.currentTextChanged.connect(lambda _: self.draw_agreement())
        self.group_combo.currentTextChanged.connect(lambda _: self.draw_composition())
        self.threshold_slider.valueChanged.connect(self._on_slider)
        self.save_button.clicked.connect(self._save_dialog)
        self.refresh()

    @staticmethod
    def _plot_box(
        title: str, label: str, combo_tip: str, plot_tip: str
    ) -> tuple[QGroupBox, QVBoxLayout, QComboBox, FigureCanvasQTAgg]:
        """A titled box: a labelled combo above a plot (the box's layout is returned for more)."""
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        combo = QComboBox()
        combo.setToolTip(combo_tip)
        row.addWidget(QLabel(label))
        row.addWidget(combo, 1)
        layout.addLayout(row)
        canvas = _canvas()
        canvas.setToolTip(plot_tip)
        layout.addWidget(canvas, 1)
        return box, layout, combo, canvas

    def preferred_height(self) -> int:
        """Height showing the plots and their controls side by side without scrolling."""
        return self.body.minimumSizeHint().height() + self.key_combo.sizeHint().height() + 24

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        direction = (
            QBoxLayout.Direction.LeftToRight if self.width() >= WIDE else QBoxLayout.Direction.TopToBottom
        )
        if self.plots_layout.direction() != direction:
            self.plots_layout.setDirection(direction)
        super().resizeEvent(event)

    # ================================================================ sources
    def _find_mapper(self) -> None:
        mapper = find_mapper(self.viewer)
        if mapper is not None:
            self.attach(mapper)

    def attach(self, mapper: Any) -> None:
        """Follow ``mapper``'s results (its ``resultChanged`` signal)."""
        self._find_timer.stop()
        if mapper is self.mapper:
            return
        if self.mapper is not None:
            self.mapper.resultChanged.disconnect(self.refresh)
        self.mapper = mapper
        mapper.resultChanged.connect(self.refresh)
        self.refresh()

    @property
    def table(self) -> Any:
        return None if self.mapper is None else self.mapper.table

    @property
    def key(self) -> str:
        return self.key_combo.currentText()

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    def set_threshold(self, value: float) -> None:
        """Move the slider (the cells are relabelled shortly after, as when dragged)."""
        self.threshold_slider.setValue(int(round(float(value) * 100)))

    def _keys(self) -> list[str]:
        result, table = (None, None) if self.mapper is None else (self.mapper.result, self.table)
        if result is None or table is None:
            return []
        return [
            key
            for key in result.obs_keys
            if f"{key}_conf" in table.obs
            and isinstance(table.obs.get(f"{key}_pred", pd.Series(dtype=float)).dtype, pd.CategoricalDtype)
        ]

    def refresh(self, *_: Any) -> None:
        """Re-list the labels and columns after a run (or a switch of table) and redraw."""
        keys = self._keys()
        _refill(self.key_combo, keys)
        if self.mapper is None:
            self.status.setText(NO_MAPPER)
        elif not keys:
            self.status.setText(NO_RESULT)
        self._on_key_changed()

    def _on_key_changed(self) -> None:
        table, key = self.table, self.key
        enabled = bool(key) and table is not None
        for widget in (self.threshold_slider, self.annotation_combo, self.group_combo, self.save_button):
            widget.setEnabled(enabled)
        if not enabled:
            self._labels = None
            self.agreement, self.composition = None, None
            for canvas in (self.histogram_canvas, self.agreement_canvas, self.composition_canvas):
                draw_message(canvas.figure, NO_RESULT, self.theme)
                canvas.draw_idle()
            self.threshold_info.setText("")
            self.agreement_label.setText("")
            return
        outputs = {f"{key}_pred", thresholded_key(key), f"{key}_conf", f"{key}_entropy"}
        exclude = {c for c in table.obs.columns if str(c).endswith(("_pred", "_pred_thresholded"))} | outputs
        columns = annotation_columns(table.obs, exclude=exclude | {NICHE})
        _refill(self.annotation_combo, columns, prefer=_best_annotation(columns, key))
        groups = ([NICHE] if NICHE in table.obs else []) + columns
        _refill(self.group_combo, groups, prefer=NICHE if NICHE in groups else _best_group(columns))
        self.status.setText(f"{key}: {int(table.obs[f'{key}_pred'].notna().sum()):,} cells mapped.")
        if self.threshold > 0:
            self.apply_threshold()  # a new result keeps the threshold chosen
        else:
            self._relabel()
            self.redraw()

    # ============================================================== threshold
    def _on_slider(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        if self.table is None or not self.key:
            return
        self._relabel()
        self.draw_histogram()
        self._apply_timer.start()

    def _relabel(self) -> None:
        """The thresholded labels in memory (what the plots show)."""
        table, key = self.table, self.key
        conf = table.obs[f"{key}_conf"].to_numpy(dtype=np.float64, na_value=np.nan)
        labels, palette = threshold_labels(
            table.obs[f"{key}_pred"], conf, self.threshold, table.uns.get(f"{key}_pred_colors")
        )
        self._labels = labels
        self._colors = dict(zip([str(c) for c in labels.categories], palette, strict=True))
        below = int((labels == "unassigned").sum())
        mapped = int(np.isfinite(conf).sum())
        share = below / mapped if mapped else 0.0
        self.threshold_info.setText(f"{below:,} of {mapped:,} mapped cells ({share:.0%}) below: unassigned")

    def apply_threshold(self) -> str | None:
        """Write ``obs["<key>_pred_thresholded"]`` and colour the cells by it; returns its name."""
        self._apply_timer.stop()
        table, key, mapper = self.table, self.key, self.mapper
        if table is None or not key:
            return None
        name = apply_threshold(table, key, self.threshold)
        scene = mapper.scene
        if scene.cells_layer is not None and scene.geometry is not None:
            scene.set_cell_values(name, table.obs[name])
            mapper.color_by(name)
        self._relabel()
        self.redraw()
        return name

    # ================================================================== plots
    def redraw(self) -> None:
        self.draw_histogram()
        self.draw_agreement()
        self.draw_composition()

    def draw_histogram(self) -> None:
        table, key = self.table, self.key
        if table is None or not key:
            return
        counts, edges = confidence_histogram(
            table.obs[f"{key}_conf"].to_numpy(dtype=np.float64, na_value=np.nan)
        )
        draw_histogram(
            self.histogram_canvas.figure,
            counts,
            edges,
            self.threshold,
            title=f"{key}_conf",
            below_color=self._colors.get(UNASSIGNED, UNASSIGNED_COLOR),
            theme=self.theme,
        )
        self.histogram_canvas.draw_idle()

    def draw_agreement(self) -> None:
        table, column, figure = self.table, self.annotation_combo.currentText(), self.agreement_canvas.figure
        self.agreement = None
        if table is None or self._labels is None or not column:
            draw_message(figure, "The query has no categorical column to compare with.", self.theme)
            self.agreement_label.setText("")
        else:
            self.agreement = agreement_table(table.obs[column], self._labels)
            overall = self.agreement.overall
            title = f"{column} vs {self.key} labels"
            draw_agreement(figure, self.agreement, title=title, theme=self.theme)
            self.agreement_label.setText(
                f"Agreement: {overall:.1%} of {int(self.agreement.counts.to_numpy().sum()):,} cells"
                if np.isfinite(overall)
                else f"No {column} value names a label: each row shows its most frequent label."
            )
        self.agreement_canvas.draw_idle()

    def draw_composition(self) -> None:
        table, group, figure = self.table, self.group_combo.currentText(), self.composition_canvas.figure
        self.composition = None
        if table is None or self._labels is None or not group:
            draw_message(
                figure, "Compute niches (or open a query with regions) to see compositions.", self.theme
            )
        else:
            groups = table.obs[group]
            self.composition = composition(pd.Series(groups.to_numpy(), name=group), self._labels)
            title = f"{self.key} labels per {group}"
            draw_composition(figure, self.composition, self._colors, title=title, theme=self.theme)
        self.composition_canvas.draw_idle()

    def figures(self) -> dict[str, Figure]:
        """The three figures by name: confidence, agreement, composition."""
        canvases = (self.histogram_canvas, self.agreement_canvas, self.composition_canvas)
        return {name: canvas.figure for name, canvas in zip(PLOTS, canvases, strict=True)}

    # ================================================================== export
    def save_plots(self, path: str | Path) -> list[Path]:
        """Write each plot as ``<stem>_<plot>.png`` next to ``path`` (atomically); returns the files."""
        path = Path(path)
        stem = path.name[: -len(".png")] if path.name.lower().endswith(".png") else path.name
        written = []
        empty = {"agreement": self.agreement is None, "composition": self.composition is None}
        for name, figure in self.figures().items():
            if empty.get(name, False):
                continue
            written.append(save_png(figure, path.with_name(f"{stem}_{name}.png")))
        return written

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save plots as PNG", "cellmapper_qc.png", "PNG (*.png)")
        if not path:
            return
        try:
            written = self.save_plots(path)
        except OSError as error:
            from napari.utils.notifications import show_error

            show_error(f"Could not save the plots: {error}")
            return
        from napari.utils.notifications import show_info

        show_info("Wrote " + ", ".join(str(p) for p in written))

    # ================================================================ cleanup
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self._find_timer.stop()
        self._apply_timer.stop()
        if self.mapper is not None:
            try:
                self.mapper.resultChanged.disconnect(self.refresh)
            except (RuntimeError, TypeError):  # already gone with its widget
                pass
        super().closeEvent(event)


def _refill(combo: QComboBox, items: list[str], prefer: str | None = None) -> None:
    """Replace the items, keeping the current one where it remains (else ``prefer``), no signal."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    choice = current if current in items else prefer
    if choice in items:
        combo.setCurrentText(choice)
    combo.blockSignals(False)


def _best_annotation(columns: list[str], key: str) -> str | None:
    """A column that looks like a previous annotation of ``key`` (``cell_type_true``), if any."""
    for column in columns:
        if column.startswith(key) or key.split("_")[0] in column:
            return column
    return columns[0] if columns else None


def _best_group(columns: list[str]) -> str | None:
    for hint in ("region", "sample", "domain", "fov", "section"):
        for column in columns:
            if hint in column.lower():
                return column
    return columns[0] if columns else None
