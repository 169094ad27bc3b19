"""The mapping's advanced options, folded away under the main form: every option the library's
:class:`~napari_cellmapper.core.pipeline.MappingParams` offers beyond the essentials.

Defaults come from ``MappingParams`` itself, so the widget, the command line and the Python API
start from the same values.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_cellmapper.core.joint_embedding import SCALINGS
from napari_cellmapper.core.label_head import HEADS
from napari_cellmapper.core.pipeline import MappingParams
from napari_cellmapper.core.validation import JOINT_METHODS, METRICS

#: "Input values" choices: label -> ``MappingParams.normalize``
INPUT_VALUES: dict[str, str | bool] = {
    "detect (counts or not)": "auto",
    "counts: normalise and log1p": True,
    "already normalised: use as they are": False,
}
#: the number of top genes meaning "all shared genes"
ALL_GENES = 0


class AdvancedOptions(QWidget):
    """A fold-out form: joint space (when built from genes), search, labels, reference graph."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        defaults = MappingParams()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.toggle = QToolButton()
        self.toggle.setText("Advanced options")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("Joint-space construction, distance, classifier head, confidence threshold")
        self.toggle.setArrowType(_arrow(False))
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        outer.addWidget(self.toggle)
        self.body = QWidget()
        form = QFormLayout(self.body)
        form.setContentsMargins(4, 0, 0, 0)
        outer.addWidget(self.body)

        form.addRow(QLabel("<b>Joint space built from shared genes</b>"))
        self.joint_combo = _combo(JOINT_METHODS, defaults.joint, "How the shared genes become a joint space")
        form.addRow("Method", self.joint_combo)
        self.n_comps_spin = _spin(2, 200, defaults.n_comps, "Components of the joint space")
        form.addRow("Components", self.n_comps_spin)
        self.scaling_combo = _combo(
            SCALINGS, defaults.scaling, "Scale genes per dataset (dataset) or over both together (gene)"
        )
        form.addRow("Scaling", self.scaling_combo)
        self.input_combo = QComboBox()
        for label, value in INPUT_VALUES.items():
            self.input_combo.addItem(label, value)
        self.input_combo.setCurrentIndex(list(INPUT_VALUES.values()).index(defaults.normalize))
        self.input_combo.setToolTip(
            "Whether the expression values are raw counts (normalised and log-transformed here) or "
            "already normalised (quantile-normalised integers, log values): 'detect' checks the data"
        )
        form.addRow("Input values", self.input_combo)
        self.top_genes_spin = _spin(ALL_GENES, 100_000, defaults.n_top_genes or ALL_GENES, "")
        self.top_genes_spin.setSpecialValueText("all shared genes")
        self.top_genes_spin.setSingleStep(500)
        self.top_genes_spin.setToolTip("Highly variable genes used to build the joint space (0: all)")
        form.addRow("Top genes", self.top_genes_spin)
        self.joint_widgets = (
            self.joint_combo,
            self.n_comps_spin,
            self.scaling_combo,
            self.input_combo,
            self.top_genes_spin,
        )

        form.addRow(QLabel("<b>Search and labels</b>"))
        self.metric_combo = _combo(METRICS, defaults.metric, "Distance in the joint space")
        form.addRow("Distance", self.metric_combo)
        self.head_combo = _combo(
            HEADS,
            defaults.head,
            "Classifier trained on the reference; its probabilities are mixed with the kNN vote",
        )
        form.addRow("Classifier head", self.head_combo)
        self.head_weight_spin = _fraction(
            defaults.head_weight, "Weight of the head's probabilities (0: kNN only)"
        )
        form.addRow("Head weight", self.head_weight_spin)
        self.self_training_spin = _fraction(
            defaults.self_training or 0.0,
            "Fit the head again with the query cells labelled at least this confidently (off: no)",
        )
        self.self_training_spin.setSpecialValueText("off")
        form.addRow("Self-training", self.self_training_spin)
        self.graph_vote_spin = _fraction(
            defaults.graph_vote or 0.0,
            "Share of the reference graph's vote (reference cells whose neighbourhood overlaps the "
            "cell's) in the kNN class probabilities (off: the kNN vote alone)",
        )
        self.graph_vote_spin.setSpecialValueText("off")
        form.addRow("Graph vote", self.graph_vote_spin)
        self.calibrate_check = QCheckBox("calibrate confidence")
        self.calibrate_check.setChecked(defaults.calibrate)
        self.calibrate_check.setToolTip("Fit a temperature on the reference so confidence matches accuracy")
        form.addRow(self.calibrate_check)
        self.min_confidence_spin = _fraction(
            defaults.min_confidence, "Cells less confident than this are labelled 'unassigned' (0: none)"
        )
        form.addRow("Min. confidence", self.min_confidence_spin)
        self.reference_k_spin = _spin(
            2, 500, defaults.reference_k, "Neighbours in the reference's own graph (presence, quality)"
        )
        form.addRow("Reference graph k", self.reference_k_spin)
        self.seed_spin = _spin(0, 2**31 - 1, defaults.seed, "Random seed (sampling, k-means)")
        form.addRow("Seed", self.seed_spin)

        self.body.setVisible(False)
        self.toggle.toggled.connect(self._fold)
        self.head_combo.currentTextChanged.connect(self._on_head_changed)

    def _fold(self, shown: bool) -> None:
        self.body.setVisible(shown)
        self.toggle.setArrowType(_arrow(shown))

    def _on_head_changed(self, head: str) -> None:
        self.head_weight_spin.setEnabled(head != "none")
        self.self_training_spin.setEnabled(head != "none")

    def set_building_joint_space(self, building: bool) -> None:
        """Enable the joint-space options only when the joint space is built from genes."""
        for widget in self.joint_widgets:
            widget.setEnabled(building)

    def params(self) -> dict[str, Any]:
        """The :class:`MappingParams` fields these controls set."""
        top = int(self.top_genes_spin.value())
        return {
            "joint": self.joint_combo.currentText(),
            "n_comps": int(self.n_comps_spin.value()),
            "scaling": self.scaling_combo.currentText(),
            "normalize": self.input_combo.currentData(),
            "n_top_genes": None if top == ALL_GENES else top,
            "metric": self.metric_combo.currentText(),
            "head": self.head_combo.currentText(),
            "head_weight": float(self.head_weight_spin.value()),
            "self_training": float(self.self_training_spin.value()) or None,
            "graph_vote": float(self.graph_vote_spin.value()) or None,
            "calibrate": self.calibrate_check.isChecked(),
            "min_confidence": float(self.min_confidence_spin.value()),
            "reference_k": int(self.reference_k_spin.value()),
            "seed": int(self.seed_spin.value()),
        }


def _arrow(shown: bool) -> Qt.ArrowType:
    return Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow


def _combo(items: tuple[str, ...], current: str, tip: str) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(items))
    combo.setCurrentText(current)
    combo.setToolTip(tip)
    return combo


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _fraction(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 1.0)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin
