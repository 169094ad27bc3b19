"""Curate transferred labels in the viewer: pick cells with a lasso or a click, give them a
reference type or a new label, undo and redo. The labels go to ``obs[f"{key}_curated"]`` with
their provenance (:mod:`napari_cellmapper.core.curation`) and are exported with the rest.

The panel works on the main CellMapper widget's table and cells; it holds no mapping logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_cellmapper.core.curation import LabelCuration
from napari_cellmapper.viewer.selection import SELECTION, cells_in_selection, selection_layer
from napari_cellmapper.widgets.rows import row as _row

if TYPE_CHECKING:
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget


class CurationWidget(QWidget):
    """Select cells and relabel them; ``main`` is the docked CellMapper widget."""

    def __init__(self, main: CellMapperWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.main, self.viewer = main, main.viewer
        self._curations: dict[tuple[int, str], LabelCuration] = {}
        self._clicked: set[int] = set()
        self._watched: Any = None  # the selection layer whose edits update the count
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.key_combo = QComboBox()
        self.key_combo.setToolTip("Which transferred labels to curate")
        form.addRow("Labels of", self.key_combo)
        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setToolTip(f"Draw around cells on the tissue (layer '{SELECTION}')")
        self.add_clicked_button = QPushButton("Add clicked cell")
        self.add_clicked_button.setToolTip("Add the cell last clicked on the tissue to the selection")
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Empty the selection (lasso shapes and clicked cells)")
        form.addRow("Select", _row(self.lasso_button, self.add_clicked_button, self.clear_button))
        self.selection_label = QLabel("No cells selected.")
        form.addRow(self.selection_label)
        self.label_combo = QComboBox()
        self.label_combo.setEditable(True)
        self.label_combo.setToolTip("A reference type, or type a new label")
        form.addRow("Label", self.label_combo)
        self.assign_button = QPushButton("Assign to selection")
        self.assign_button.setToolTip("Give the selected cells this label (in the '<key>_curated' column)")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        form.addRow(_row(self.assign_button, self.undo_button, self.redo_button))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.lasso_button.clicked.connect(self.start_lasso)
        self.add_clicked_button.clicked.connect(self.add_clicked_cell)
        self.clear_button.clicked.connect(self.clear_selection)
        self.assign_button.clicked.connect(lambda: self.assign(self.label_combo.currentText()))
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.key_combo.currentTextChanged.connect(self.refresh)
        main.resultChanged.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------ state
    def curation(self) -> LabelCuration | None:
        """The curation of the chosen key in the main widget's current table (None before a run)."""
        table, key = self.main.table, self.key_combo.currentText()
        if table is None or not key or f"{key}_pred" not in table.obs:
            return None
        slot = (id(table), key)
        if slot not in self._curations:
            self._curations[slot] = LabelCuration(table, key)
        return self._curations[slot]

    def refresh(self, *_: Any) -> None:
        """Follow the main widget: keys that can be curated, labels, buttons."""
        result = self.main.result
        keys = list(result.obs_keys) if result is not None and self.main.table is not None else []
        current = self.key_combo.currentText()
        self.key_combo.blockSignals(True)
        self.key_combo.clear()
        self.key_combo.addItems(list(keys))
        if current in keys:
            self.key_combo.setCurrentText(current)
        self.key_combo.blockSignals(False)
        curation = self.curation()
        label = self.label_combo.currentText()
        self.label_combo.clear()
        if curation is not None:
            self.label_combo.addItems(curation.categories())
            if label:
                self.label_combo.setCurrentText(label)
        for widget in (self.lasso_button, self.add_clicked_button, self.assign_button, self.label_combo):
            widget.setEnabled(curation is not None)
        self.undo_button.setEnabled(curation is not None and curation.can_undo)
        self.redo_button.setEnabled(curation is not None and curation.can_redo)
        if curation is None:
            self.status.setText("Run a mapping that transfers labels, then curate them here.")
        self._show_count()

    # ------------------------------------------------------------------ selection
    def selection_layer(self, create: bool = True) -> Any:
        layer = selection_layer(self.viewer, create=create)
        if layer is not None and layer is not self._watched:
            layer.events.data.connect(lambda _: self._show_count())
            self._watched = layer
        return layer

    def start_lasso(self) -> Any:
        """Activate the selection layer in lasso mode: drag around cells on the tissue."""
        layer = self.selection_layer()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon_lasso"
        self.status.setText("Drag around the cells to select (several lassos add up).")
        return layer

    def add_clicked_cell(self) -> None:
        index = self.main.last_clicked_cell
        if index is None:
            self.status.setText("Click a cell on the tissue first.")
            return
        self._clicked.add(int(index))
        self._show_count()

    def clear_selection(self) -> None:
        self._clicked.clear()
        layer = self.selection_layer(create=False)
        if layer is not None:
            layer.data = []
        self._show_count()

    def selected_rows(self) -> np.ndarray:
        """Table rows of the selected cells: inside a lasso shape, or clicked."""
        scene = self.main.scene
        if scene.geometry is None:
            return np.empty(0, dtype=np.int64)
        inside = cells_in_selection(self.viewer, scene.geometry.coords_yx)
        clicked = [i for i in self._clicked if i < len(inside)]
        inside[clicked] = True
        return np.asarray(scene.geometry.rows, dtype=np.int64)[inside]

    def _show_count(self) -> None:
        n = len(self.selected_rows())
        self.selection_label.setText(f"{n:,} cells selected." if n else "No cells selected.")

    # ------------------------------------------------------------------ edits
    def assign(self, label: str) -> bool:
        curation = self.curation()
        if curation is None:
            return False
        rows = self.selected_rows()
        try:
            edit = curation.assign(rows, label)
        except (ValueError, IndexError) as error:
            self.status.setText(str(error))
            return False
        self.status.setText(f"Edit {edit.number + 1}: {len(edit.rows):,} cells labelled {edit.label!r}.")
        self.clear_selection()
        self._show_curated(curation)
        return True

    def undo(self) -> None:
        self._step("undo", "Undid")

    def redo(self) -> None:
        self._step("redo", "Redid")

    def _step(self, action: str, done: str) -> None:
        """Undo or redo (``action``) the curation's last edit and show it."""
        curation = self.curation()
        edit = getattr(curation, action)() if curation is not None else None
        if edit is not None:
            self.status.setText(f"{done}: {len(edit.rows):,} cells labelled {edit.label!r}.")
            self._show_curated(curation)

    def _show_curated(self, curation: LabelCuration) -> None:
        """Colour the cells by the curated labels (the cells layer is updated in place)."""
        table = self.main.table
        self.main.scene.set_cell_values(curation.column, table.obs[curation.column])
        self.main.scene.set_cell_values(curation.edit_column, table.obs[curation.edit_column])
        self.main.color_by(curation.column)
        self.refresh()
