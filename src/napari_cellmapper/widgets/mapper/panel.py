"""The CellMapper dock widget: pick reference and query, set parameters, run, look, export.

The widget only builds a :class:`~napari_cellmapper.widgets.job.MappingJob` from its fields and
hands it to the :class:`~napari_cellmapper.widgets.controller.MappingController`; drawing is done
by :class:`~napari_cellmapper.viewer.scene.CellMapperScene`. No mapping logic lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_cellmapper.core.pipeline import MappingParams
from napari_cellmapper.core.search import neighbors
from napari_cellmapper.viewer.cell_values import cell_values, value_choices
from napari_cellmapper.viewer.points import LARGE_LAYER
from napari_cellmapper.viewer.samples import Samples, side_by_side
from napari_cellmapper.viewer.scene import CellMapperScene
from napari_cellmapper.viewer.selection import cell_info
from napari_cellmapper.viewer.spatial_layers import cell_elements
from napari_cellmapper.widgets.background import (
    BackgroundTask,
    ExportJob,
    OpenedQuery,
    place_cells,
    read_query,
    wait_until,
    warm_session,
    write_export,
)
from napari_cellmapper.widgets.controller import MappingController, error_message
from napari_cellmapper.widgets.job import BACKENDS, BUILD_FROM_GENES, KERNELS, MappingJob, MappingResult
from napari_cellmapper.widgets.mapper.advanced_options import AdvancedOptions
from napari_cellmapper.widgets.mapper.legend import ColorKey
from napari_cellmapper.widgets.repaint import deferred_repaint, updates_held
from napari_cellmapper.widgets.rows import row as _row
from napari_cellmapper.widgets.sources import (
    QuerySource,
    ReferenceSource,
    element_coordinate_systems,
    load_reference,
    queries_in_layers,
    references_in_layers,
    shared_genes,
    shared_representations,
    table_elements,
    table_names,
    transferable_obs,
    transferable_obsm,
)

if TYPE_CHECKING:
    import napari

GPU_LABEL = "GPU (cupy)"
CLICK_HINT = "Click a cell to see its transferred label and reference neighbours."
REFERENCE_COLOR_TIP = "What colours the reference embedding (e.g. presence_score)"
#: from this many cells in a table, an element or coordinate system is placed by a worker
BACKGROUND_CELLS = 100_000
#: fit_view fits again after these delays (ms): docks added in the same turn lay out meanwhile
FIT_AGAIN_MS = (0, 150, 500)
#: from this many cells a result's colouring (which repaints the canvas: 80-140 ms at 100k
#: points in software OpenGL) runs in the event-loop turn after the rest of its application
DEFER_COLOURS_FROM = LARGE_LAYER
NO_EMBEDDING = (
    "The reference has no 2-D embedding (obsm such as X_umap): it is not drawn. Mapping works; "
    "presence scores are written to the reference's obs."
)


def _gpu_available() -> bool:
    try:
        from napari_cellmapper.core.search.neighbors import gpu_available

        return bool(gpu_available())
    except Exception:  # noqa: BLE001 - no cupy, no driver: no GPU
        return False


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


class CheckList(QListWidget):
    """A list of checkable names."""

    def set_items(self, names: list[str], checked: set[str] | None = None) -> None:
        checked = checked or set()
        self.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.addItem(item)

    def checked(self) -> list[str]:
        return [
            self.item(i).text()
            for i in range(self.count())
            if self.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_checked(self, names: set[str] | list[str]) -> None:
        names = set(names)
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)


def _cells_of(sdata: Any, table: str) -> int:
    """Rows of a table of ``sdata`` (0 when there is none)."""
    tables = getattr(sdata, "tables", {})
    return int(tables[table].n_obs) if table in tables else 0


def under_the_canvas(dock: Any, share: float = 0.3) -> None:
    """Let a bottom dock widget sit under the canvas only (the side docks, this widget's among
    them, keep the window's full height) and take about ``share`` of the window's height."""
    window = dock.window() if hasattr(dock, "window") else None
    if not isinstance(window, QMainWindow):
        return
    window.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
    window.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
    window.resizeDocks([dock], [max(180, int(window.height() * share))], Qt.Orientation.Vertical)


class CellMapperWidget(QWidget):
    """Dock widget mapping a single-cell reference onto a SpatialData sample."""

    #: the result shown changed (a run applied, or another table chosen): MappingResult or None
    resultChanged = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.scene = CellMapperScene(napari_viewer)
        self.controller = MappingController(self._apply_result, parent=self)
        QTimer.singleShot(0, self.controller.prepare_activity_bar)
        neighbors.preload()  # not inside the first run's worker, where it freezes the interface
        self._warming = warm_session()  # imports and kernels, while the user picks the data
        self.controller.running.connect(self._set_running)
        self.controller.progressed.connect(self._on_progress)
        self.controller.failed.connect(lambda msg: self.status.setText(f"Failed: {msg}"))
        self.controller.cancelled.connect(lambda: self.status.setText("Cancelled; nothing changed."))
        self.controller.dropped.connect(
            lambda job_id: self.status.setText(f"Dropped stale result of run {job_id}.")
        )
        self.references: list[ReferenceSource] = []
        self.queries: list[QuerySource] = []
        self.result: MappingResult | None = None
        self._results: list[tuple[Any, MappingResult]] = []  # (table, its last applied result)
        self.last_clicked_cell: int | None = None  # index into the cells layer
        self.curation_panel: Any = None
        self.embedding_view: Any = None
        #: draw the reference embedding in its own docked canvas when a reference is chosen
        #: (False after the user closes that view: it is then drawn beside the tissue)
        self.open_reference_view = True
        self._syncing = False
        self._closed = False
        #: reads and exports running in the background (see widgets.background)
        self.tasks: list[BackgroundTask] = []
        #: cells' geometry computed by a background read, taken by the next _on_cs_changed
        self._prepared: tuple[Any, str, str, str, Any] | None = None
        self._build()
        self.resultChanged.connect(self._update_value_choices)
        # colours a large result in a later turn: a zero timer, not a queued call, so that the
        # timers and input already due run first (Qt handles posted calls ahead of timers)
        self._colours_due: MappingResult | None = None
        self._colours_timer = QTimer(self)
        self._colours_timer.setSingleShot(True)
        self._colours_timer.setInterval(0)
        self._colours_timer.timeout.connect(self._show_due_colours)
        self._click = self.scene.click_callback(self.show_cell)
        self.viewer.mouse_drag_callbacks.append(self._click)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.refresh_sources()

    # ================================================================== layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        layout = QVBoxLayout(body)
        scroll.setWidget(body)
        outer.addWidget(scroll)

        # ---- data
        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.reference_combo = QComboBox()
        self.reference_combo.setToolTip("Single-cell reference: an open layer or a file (.h5ad or .zarr)")
        self.open_reference_button = QPushButton("Open…")
        self.open_reference_button.setToolTip("Read a reference from an .h5ad file or a .zarr store")
        form.addRow("Reference", _row(self.reference_combo, self.open_reference_button))
        self.query_combo = QComboBox()
        self.query_combo.setToolTip(
            "Spatial query: a SpatialData open in the viewer, a .zarr store or a spatial .h5ad"
        )
        self.open_query_button = QPushButton("Open…")
        self.open_query_button.setToolTip(
            "Read the spatial query: a SpatialData .zarr store, or an .h5ad with positions in "
            "obsm['spatial'] (squidpy's convention)"
        )
        form.addRow("Query", _row(self.query_combo, self.open_query_button))
        self.table_combo = QComboBox()
        self.table_combo.setToolTip("Query table whose rows are the cells to annotate")
        form.addRow("Table", self.table_combo)
        self.element_combo = QComboBox()
        self.element_combo.setToolTip(
            "Element holding the cells' geometry (points, circles, polygons or labels)"
        )
        self.all_regions_check = QCheckBox("all")
        self.all_regions_check.setToolTip(
            "Map the cells of every region (sample, slide) this table annotates in one run; "
            "niches never span two samples and presence is scored per sample"
        )
        self.all_regions_check.setEnabled(False)
        form.addRow("Element", _row(self.element_combo, self.all_regions_check))
        self.cs_combo = QComboBox()
        self.cs_combo.setToolTip("Coordinate system the tissue and the cells are drawn in")
        form.addRow("Coordinates", self.cs_combo)
        self.sizes_label = QLabel("–")
        self.sizes_label.setWordWrap(True)
        self.sizes_label.setToolTip("Sizes of the reference and query and the genes they share")
        form.addRow(self.sizes_label)
        layout.addWidget(data)

        # ---- mapping
        mapping = QGroupBox("Mapping")
        form = QFormLayout(mapping)
        self.rep_combo = QComboBox()
        self.rep_combo.setToolTip(
            "Joint latent space: an obsm key both datasets share, or build one from the shared genes "
            "(normalise, log1p, scale, PCA)"
        )
        form.addRow("Joint space", self.rep_combo)
        self.obs_list = CheckList()
        self.obs_list.setToolTip("Reference obs columns to transfer (cell types, labels, numbers)")
        self.obs_list.setMaximumHeight(62)
        form.addRow("Transfer obs", self.obs_list)
        self.obsm_list = CheckList()
        self.obsm_list.setToolTip("Reference embeddings (obsm) to transfer, e.g. X_umap")
        self.obsm_list.setMaximumHeight(48)
        form.addRow("Transfer obsm", self.obsm_list)
        self.expression_check = QCheckBox("impute expression (reference X)")
        self.expression_check.setToolTip("Also transfer the reference's expression matrix (can be large)")
        form.addRow(self.expression_check)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 500)
        self.k_spin.setValue(30)
        self.k_spin.setToolTip("Number of reference neighbours per query cell (k)")
        self.kernel_combo = QComboBox()
        self.kernel_combo.addItems(list(KERNELS))
        self.kernel_combo.setToolTip("How neighbour distances become weights (gauss is a good default)")
        form.addRow("Neighbours (k)", self.k_spin)
        form.addRow("Kernel", self.kernel_combo)
        self.backend_combo = QComboBox()
        self.backend_combo.setToolTip("Nearest-neighbour search backend")
        self._fill_backends()
        form.addRow("Backend", self.backend_combo)
        self.presence_check = QCheckBox("presence scores")
        self.presence_check.setToolTip(
            "How well each reference cell is represented in the query (HNOCA-tools)"
        )
        form.addRow(self.presence_check)
        self.niches_check = QCheckBox("niches")
        self.niches_check.setToolTip("Cluster the cells by the cell-type mix of their spatial neighbourhood")
        self.niches_spin = QSpinBox()
        self.niches_spin.setRange(2, 50)
        self.niches_spin.setValue(8)
        self.niches_spin.setToolTip("Number of niches (k-means clusters)")
        form.addRow(_row(self.niches_check, self.niches_spin))
        self.region_button = QPushButton("Draw region")
        self.region_button.setToolTip(
            "Add a 'cellmapper region' shapes layer; the next run maps only the cells inside"
        )
        self.clear_region_button = QPushButton("Clear region")
        self.clear_region_button.setToolTip("Remove the region: the next run maps all cells")
        form.addRow(_row(self.region_button, self.clear_region_button))
        self.advanced = AdvancedOptions()
        form.addRow(self.advanced)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Map the reference onto the query (runs in the background)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running mapping; nothing is changed")
        self.cancel_button.setEnabled(False)
        form.addRow(_row(self.run_button, self.cancel_button))
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setToolTip("What the mapping is doing")
        form.addRow(self.status)
        self.progress_bar = QProgressBar()
        self.progress_bar.setToolTip("Progress of the running stage")
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setVisible(False)
        self._progress_shown: tuple[str, int] | None = None
        form.addRow(self.progress_bar)
        layout.addWidget(mapping)

        # ---- display
        display = QGroupBox("Display")
        form = QFormLayout(display)
        self.color_combo = QComboBox()
        self.color_combo.setToolTip("What colours the cells (recolours in place)")
        self.autoscale_check = QCheckBox("autoscale")
        self.autoscale_check.setToolTip(
            "Stretch the colours over the values shown; off: scores on 0-1 (confidence, entropy, "
            "probabilities, presence, mapping quality) keep that range, so colours compare across runs"
        )
        form.addRow("Colour cells by", _row(self.color_combo, self.autoscale_check))
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(0.1, 50.0)
        self.size_spin.setSingleStep(0.25)
        self.size_spin.setValue(1.0)
        self.size_spin.setSuffix(" \u00d7")
        self.size_spin.setToolTip("Size of the cells drawn as points, times their measured size")
        form.addRow("Cell size", self.size_spin)
        self.color_key = ColorKey()
        self.color_key.setMinimumHeight(110)
        form.addRow(self.color_key)
        self.gene_edit = QLineEdit()
        self.gene_edit.setPlaceholderText("a gene, or a type's probability")
        self.gene_edit.setToolTip(
            "Colour the cells by a gene measured in the query, a reference gene imputed from the "
            "mapping (one gene at a time), or the probability of a type, P(type); press Enter"
        )
        self.gene_edit.setEnabled(False)
        form.addRow("Gene or type", self.gene_edit)
        self.reference_color_combo = QComboBox()
        self.reference_color_combo.setToolTip(REFERENCE_COLOR_TIP)
        form.addRow("Colour reference by", self.reference_color_combo)
        self.reference_color_key = ColorKey()
        self.reference_color_key.setMaximumHeight(70)
        form.addRow(self.reference_color_key)
        self.cell_label = QLabel(CLICK_HINT)
        self.cell_label.setWordWrap(True)
        self.cell_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cell_label.setToolTip("The clicked cell: label, confidence, top-3 probabilities, neighbours")
        form.addRow(self.cell_label)
        self.embedding_button = QPushButton("Reference view…")
        self.embedding_button.setToolTip(
            "The reference embedding in its own canvas, linked to the tissue: lasso either side"
        )
        form.addRow(self.embedding_button)
        self.curate_button = QPushButton("Curate labels…")
        self.curate_button.setToolTip("Select cells (lasso or click) and correct their labels, with undo")
        form.addRow(self.curate_button)
        self.export_button = QPushButton("Export annotated SpatialData…")
        self.export_button.setToolTip("Write the query with the transferred annotations to a .zarr store")
        self.export_button.setEnabled(False)
        form.addRow(self.export_button)
        self.qc_button = QPushButton("Label QC…")
        self.qc_button.setToolTip("Question the labels: confidence threshold, agreement, composition plots")
        form.addRow(self.qc_button)
        layout.addWidget(display)
        layout.addStretch(1)
        for combo in body.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.scroll_area = scroll
        # never clip the form: the dock is at least as wide as the form's minimum
        self.setMinimumWidth(
            max(body.minimumSizeHint().width(), 340) + scroll.verticalScrollBar().sizeHint().width() + 8
        )

        menu = QMenu(self.open_reference_button)
        menu.addAction(".h5ad file…", lambda: self._open_reference_dialog("h5ad"))
        menu.addAction(".zarr store…", lambda: self._open_reference_dialog("zarr"))
        self.open_reference_button.setMenu(menu)
        menu = QMenu(self.open_query_button)
        menu.addAction("SpatialData .zarr store…", lambda: self._open_query_dialog("zarr"))
        menu.addAction(".h5ad with obsm['spatial']…", lambda: self._open_query_dialog("h5ad"))
        self.open_query_button.setMenu(menu)
        self.reference_combo.currentIndexChanged.connect(self._on_reference_changed)
        self.query_combo.currentIndexChanged.connect(self._on_query_changed)
        self.table_combo.currentIndexChanged.connect(self._on_table_changed)
        self.element_combo.currentIndexChanged.connect(self._on_element_changed)
        self.cs_combo.currentIndexChanged.connect(self._on_cs_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.controller.cancel)
        self.region_button.clicked.connect(self.add_region)
        self.clear_region_button.clicked.connect(self.clear_region)
        self.color_combo.currentTextChanged.connect(self._on_color_changed)
        self.autoscale_check.toggled.connect(lambda _: self._on_color_changed(self.color_combo.currentText()))
        self.size_spin.valueChanged.connect(self._on_size_changed)
        self.reference_color_combo.currentTextChanged.connect(self._on_reference_color_changed)
        self.export_button.clicked.connect(self._export_dialog)
        self.curate_button.clicked.connect(self.open_curation)
        self.embedding_button.clicked.connect(self.open_embedding)
        self.qc_button.clicked.connect(self.open_qc)
        self.gene_edit.returnPressed.connect(lambda: self.show_gene(self.gene_edit.text().strip()))
        self.niches_check.toggled.connect(self.niches_spin.setEnabled)
        self.rep_combo.currentTextChanged.connect(
            lambda rep: self.advanced.set_building_joint_space(rep == BUILD_FROM_GENES)
        )
        self.niches_spin.setEnabled(False)

    def _fill_backends(self) -> None:
        gpu = _gpu_available()
        for label, name in BACKENDS.items():
            self.backend_combo.addItem(label, name)
            if name == "cupy" and not gpu:
                index = self.backend_combo.count() - 1
                item = self.backend_combo.model().item(index)
                item.setEnabled(False)
                item.setToolTip(
                    "No NVIDIA GPU with cupy found: install napari-cellmapper[gpu] on a GPU machine"
                )
                self.backend_combo.setItemData(index, item.toolTip(), Qt.ItemDataRole.ToolTipRole)

    def scroll_to(self, widget: QWidget) -> None:
        """Scroll the dock vertically so that ``widget`` is visible."""
        y = widget.mapTo(self.scroll_area.widget(), widget.rect().topLeft()).y()
        self.scroll_area.verticalScrollBar().setValue(max(y - 40, 0))

    # ================================================================ sources
    @property
    def reference(self) -> Any:
        index = self.reference_combo.currentIndex()
        return self.references[index].adata if 0 <= index < len(self.references) else None

    @property
    def query(self) -> QuerySource | None:
        index = self.query_combo.currentIndex()
        return self.queries[index] if 0 <= index < len(self.queries) else None

    @property
    def table(self) -> Any:
        query, name = self.query, self.table_combo.currentText()
        return query.sdata.tables[name] if query is not None and name in query.sdata.tables else None

    def _on_layers_changed(self, event: Any = None) -> None:
        if not self._syncing:
            self.refresh_sources()

    def refresh_sources(self) -> None:
        """Re-list references and queries from open layers, keeping the current choices."""
        current_ref, current_query = self.reference, self.query
        files_ref = [s for s in self.references if s.label.endswith("(file)")]
        files_query = [s for s in self.queries if s.label.endswith("(file)")]
        references = references_in_layers(self.viewer.layers)
        references += [s for s in files_ref if not any(r.adata is s.adata for r in references)]
        queries = queries_in_layers(self.viewer.layers)
        queries += [s for s in files_query if not any(q.sdata is s.sdata for q in queries)]
        if [r.adata for r in references] != [r.adata for r in self.references]:
            self.references = references
            self._refill(
                self.reference_combo,
                [r.label for r in references],
                next((i for i, r in enumerate(references) if r.adata is current_ref), 0),
            )
            self._on_reference_changed()
        if [q.sdata for q in queries] != [q.sdata for q in self.queries]:
            self.queries = queries
            keep = next(
                (
                    i
                    for i, q in enumerate(queries)
                    if current_query is not None and q.sdata is current_query.sdata
                ),
                0,
            )
            self._refill(self.query_combo, [q.label for q in queries], keep)
            if current_query is None or self.query is None or self.query.sdata is not current_query.sdata:
                self._on_query_changed()

    @staticmethod
    def _refill(combo: QComboBox, items: list[str], index: int = 0) -> None:
        combo.blockSignals(True)
        current = combo.currentText()
        combo.clear()
        combo.addItems(items)
        if items:
            combo.setCurrentIndex(
                index if 0 <= index < len(items) else max(items.index(current), 0) if current in items else 0
            )
        combo.blockSignals(False)

    def add_reference(self, source: ReferenceSource) -> None:
        """Use ``source`` as the reference (adds it to the list)."""
        self.references.append(source)
        self._refill(self.reference_combo, [r.label for r in self.references], len(self.references) - 1)
        self._on_reference_changed()

    def add_query(self, source: QuerySource) -> None:
        """Use ``source`` as the query (adds it to the list)."""
        self.queries.append(source)
        self._refill(self.query_combo, [q.label for q in self.queries], len(self.queries) - 1)
        self._on_query_changed()

    def open_reference(self, path: str | Path, *, wait: bool = False) -> BackgroundTask | bool:
        """Read a reference file in the background, then use it (main thread); a bad file gives an
        error notification and changes nothing. Returns the running task, or with ``wait`` whether
        the reference was opened."""

        def opened(source: ReferenceSource) -> bool:
            if self._closed:
                return False
            self.add_reference(source)
            return True

        return self._read("reference", load_reference, path, opened, wait)

    def open_query(self, path: str | Path, *, wait: bool = False) -> BackgroundTask | bool:
        """Read a query (SpatialData .zarr, or .h5ad with obsm["spatial"]) and its cells' geometry
        in the background, then draw it (main thread); a bad file gives an error notification and
        changes nothing. Returns the running task, or with ``wait`` whether the query was opened."""

        def opened(result: OpenedQuery) -> bool:
            if self._closed:
                return False
            self._prepared = result.prepared()
            try:
                self.add_query(result.source)
            finally:
                self._prepared = None
            return True

        return self._read("query", read_query, path, opened, wait)

    def _read(
        self, kind: str, func: Any, path: str | Path, opened: Callable[[Any], bool], wait: bool
    ) -> BackgroundTask | bool:
        """``func(path)`` in the background, then ``opened(result)``; a failure is reported (the
        same message as before the reading moved off the interface thread) and changes nothing."""

        def failed(error: BaseException) -> bool:
            _notify_error(f"Could not read the {kind} {str(path)!r}: {error_message(error)}")
            if not self._closed:
                self.status.setText(f"Could not read {Path(path).name}; nothing changed.")
            return False

        self.status.setText(f"Reading {Path(path).name}…")
        task = self._start_task(
            kind, func, path, desc=f"Reading {Path(path).name}", on_returned=opened, on_errored=failed
        )
        return task.wait() if wait else task

    # ============================================================ background
    def _start_task(self, kind: str, func: Any, *args: Any, **kwargs: Any) -> BackgroundTask:
        """Run ``func(*args)`` in a worker (see :class:`BackgroundTask`); buttons follow it."""
        task = BackgroundTask(kind, func, *args, on_finished=self._task_finished, **kwargs)
        self.tasks.append(task)
        self._update_enabled()
        return task.start()

    def _task_finished(self, task: BackgroundTask) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        if not self._closed:
            self._update_enabled()

    def busy(self, kind: str | None = None) -> bool:
        """Whether a background task (of ``kind``: reference, query, geometry, export) runs; with
        no ``kind``, also while a large query's layers are still being added (``scene.drawing``)."""
        if kind is None and self.scene.drawing:
            return True
        return any(kind is None or task.kind == kind for task in self.tasks)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Process interface events until no background read or export runs, the query's layers
        are all drawn and the start-up warm-up is done (tests, scripts, benchmarks)."""
        wait_until(
            lambda: not self.tasks and not self.scene.drawing and not self._warming.is_alive(), timeout
        )

    def _update_enabled(self) -> None:
        """Open and Export buttons: off while their own background task or a mapping runs."""
        running = self.controller.is_running
        self.open_reference_button.setEnabled(not running and not self.busy("reference"))
        self.open_query_button.setEnabled(not running and not self.busy("query"))
        self.export_button.setEnabled(self.result is not None and not self.busy("export"))

    def _open_reference_dialog(self, kind: str = "h5ad") -> None:
        if kind == "h5ad":
            path, _ = QFileDialog.getOpenFileName(
                self, "Open reference", "", "AnnData (*.h5ad);;All files (*)"
            )
        else:
            path = QFileDialog.getExistingDirectory(
                self, "Open reference .zarr store (AnnData or SpatialData)"
            )
        if path:
            self.open_reference(path)

    def _open_query_dialog(self, kind: str = "zarr") -> None:
        if kind == "h5ad":
            path, _ = QFileDialog.getOpenFileName(
                self, "Open a spatial AnnData (positions in obsm['spatial'])", "", "AnnData (*.h5ad)"
            )
        else:
            path = QFileDialog.getExistingDirectory(self, "Open SpatialData .zarr")
        if path:
            self.open_query(path)

    def _on_reference_changed(self, *_: Any) -> None:
        adata = self.reference
        self.controller.invalidate()
        if adata is None:
            self.obs_list.set_items([])
            self.obsm_list.set_items([])
        else:
            obs = transferable_obs(adata)
            default = {o for o in obs if "type" in o.lower()} or set(obs[:1])
            self.obs_list.set_items(obs, default)
            self.obsm_list.set_items(transferable_obsm(adata), {k for k in ("X_umap",) if k in adata.obsm})
            self._sync(lambda: self.scene.show_reference(adata))
            self._fill_reference_colors()
            if self.scene.reference_layer is not None and self.open_reference_view:
                self.open_embedding()  # fits the view itself
            else:
                self.fit_view()
            if self.scene.reference_layer is None:
                self.status.setText(NO_EMBEDDING)
                from napari.utils.notifications import show_warning

                show_warning(NO_EMBEDDING)
        self._update_rep_and_sizes()
        self._update_value_choices()

    def _on_query_changed(self, *_: Any) -> None:
        query = self.query
        self._refill(self.table_combo, table_names(query.sdata) if query else [])
        self._on_table_changed()

    def _on_table_changed(self, *_: Any) -> None:
        regions = self._regions()
        # the regions it annotates, then the store's other elements of the same cells
        self._refill(
            self.element_combo,
            cell_elements(self.query.sdata, self.table_combo.currentText()) if regions else [],
        )
        self.all_regions_check.setEnabled(len(regions) > 1)
        if len(regions) < 2:
            self.all_regions_check.setChecked(False)
        self._on_element_changed()

    def _regions(self) -> list[str]:
        """The elements the chosen table annotates (its regions: 'all' maps them in one run)."""
        query, name = self.query, self.table_combo.currentText()
        return table_elements(query.sdata, name) if query is not None and name else []

    def _on_element_changed(self, *_: Any) -> None:
        query, element = self.query, self.element_combo.currentText()
        self._refill(
            self.cs_combo, element_coordinate_systems(query.sdata, element) if query and element else []
        )
        self._on_cs_changed()

    def _on_cs_changed(self, *_: Any) -> None:
        self.controller.invalidate()
        self.result = self._result_of(self.table)  # a table keeps its results across switches
        if self.result is None and self.table is not None:
            self._restore_result(self.table)
        self._update_enabled()
        query = self.query
        if query is not None and self.cs_combo.currentText():
            choice = self._choice()
            prepared, self._prepared = self._prepared, None
            geometry = (
                prepared[4]
                if prepared is not None and prepared[0] is query.sdata and prepared[1:4] == choice
                else None
            )
            if geometry is None and self._place_in_background(query, choice):
                return  # drawn when the worker has placed the cells (``_placed``)
            try:
                self._sync(
                    lambda: self.scene.show_query(query.sdata, *choice, path=query.path, geometry=geometry)
                )
                self.scene.place_reference()
                self._on_size_changed(self.size_spin.value())
                self.fit_view()
            except Exception as error:  # noqa: BLE001 - a broken element must not kill the widget
                _notify_error(f"Could not draw the query: {error_message(error)}")
        self._update_rep_and_sizes()
        result = self.result
        self._fill_colors(prefer=result.color_keys[0] if result is not None and result.color_keys else None)
        self.resultChanged.emit(result)

    def _place_in_background(self, query: QuerySource, choice: tuple[str, str, str]) -> bool:
        """Place a large element's cells (label centroids, shapes, transformations) in a worker
        instead of on the interface thread; returns whether a worker took it. The cells are
        drawn by ``_placed`` if the choice is still the same then."""
        n_cells = _cells_of(query.sdata, choice[0])
        if n_cells < BACKGROUND_CELLS:
            return False

        def placed(geometry: Any) -> bool:
            if self._closed or self.query is not query or self._choice() != choice:
                return False  # another sample or element was chosen meanwhile: its own task draws it
            self._prepared = (query.sdata, *choice, geometry)
            self._on_cs_changed()
            return True

        def failed(error: BaseException) -> bool:
            if not self._closed and self.query is query and self._choice() == choice:
                _notify_error(f"Could not draw the query: {error_message(error)}")
                self.status.setText(f"Could not place the cells of {choice[1]!r}.")
            return False

        self.status.setText(f"Placing {n_cells:,} cells of {choice[1]!r} ({choice[2]})…")
        self._start_task(
            "geometry",
            place_cells,
            query.sdata,
            *choice,
            desc=f"Placing the cells of {choice[1]}",
            on_returned=placed,
            on_errored=failed,
        )
        return True

    def _choice(self) -> tuple[str, str, str]:
        """The (table, element, coordinate system) chosen in the form."""
        return (self.table_combo.currentText(), self.element_combo.currentText(), self.cs_combo.currentText())

    def _restore_result(self, table: Any) -> bool:
        """Take up the results an earlier run left in ``table`` (a re-opened export)."""
        result = MappingResult.from_table(table)
        if result is None:
            return False
        self.result = result
        self._results.append((table, result))
        self.status.setText(
            f"Results of an earlier run restored ({len(result.rows):,} cells mapped); "
            "run again to see reference neighbours."
        )
        return True

    def _update_value_choices(self, *_: Any) -> None:
        """Offer the genes and type probabilities the cells can be coloured by (completion)."""
        names = value_choices(self.table, self.reference, self.result)
        self.gene_edit.setEnabled(bool(names))
        completer = QCompleter(names, self.gene_edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.gene_edit.setCompleter(completer)

    def _sync(self, action: Any) -> Any:
        """Run a layer-changing action without re-listing sources in between."""
        self._syncing = True
        try:
            return action()
        finally:
            self._syncing = False

    def _update_rep_and_sizes(self) -> None:
        reference, table = self.reference, self.table
        reps = shared_representations(reference, table) if reference is not None and table is not None else []
        current = self.rep_combo.currentText()
        items = reps + [BUILD_FROM_GENES]
        had_reps = self.rep_combo.count() > 1
        keep = current in items and (current != BUILD_FROM_GENES or had_reps)
        self._refill(self.rep_combo, items, items.index(current) if keep else 0)
        self.advanced.set_building_joint_space(self.rep_combo.currentText() == BUILD_FROM_GENES)
        parts = []
        if reference is not None:
            parts.append(f"reference {reference.n_obs:,} cells × {reference.n_vars:,} genes")
        if table is not None:
            n_cells = len(self.scene.geometry.rows) if self.scene.geometry is not None else table.n_obs
            parts.append(f"query {n_cells:,} cells × {table.n_vars:,} genes")
        if reference is not None and table is not None:
            parts.append(f"{shared_genes(reference, table):,} shared genes")
        self.sizes_label.setText("; ".join(parts) if parts else "Open a reference and a spatial query.")

    # ================================================================ running
    def build_job(self) -> MappingJob:
        """The frozen job described by the form (raises ValueError when inputs are missing)."""
        reference, table, geometry = self.reference, self.table, self.scene.geometry
        if reference is None:
            raise ValueError("Choose a reference first (open a .h5ad file or a reference layer).")
        if table is None or geometry is None:
            raise ValueError("Choose a spatial query (a SpatialData .zarr) and its table first.")
        rows, coords, groups = geometry.rows, geometry.coords_yx, None
        mask = self.scene.region_mask()
        if mask is not None:
            if self.all_regions_check.isChecked():
                raise ValueError("A drawn region restricts one element: clear it, or untick 'all'.")
            if not mask.any():
                raise ValueError("No cells lie inside the drawn region; draw it over the cells or clear it.")
            rows, coords = rows[mask], coords[mask]
        if self.all_regions_check.isChecked() and self.all_regions_check.isEnabled():
            samples = self._all_regions()
            rows, coords, groups = samples.rows, samples.coords_yx, samples.groups
        rep = self.rep_combo.currentText()
        return MappingJob(
            reference=reference,
            query=table,
            rows=np.asarray(rows),
            coords_yx=np.asarray(coords),
            groups=groups,
            params=MappingParams(
                use_rep=None if rep in ("", BUILD_FROM_GENES) else rep,
                obs_keys=tuple(self.obs_list.checked()),
                obsm_keys=tuple(self.obsm_list.checked()),
                layer_key="X" if self.expression_check.isChecked() else None,
                n_neighbors=int(self.k_spin.value()),
                kernel=self.kernel_combo.currentText(),
                backend=str(self.backend_combo.currentData()),
                presence=self.presence_check.isChecked(),
                n_niches=int(self.niches_spin.value()) if self.niches_check.isChecked() else 0,
                **self.advanced.params(),
            ),
        )

    def _all_regions(self) -> Samples:
        """Rows and side-by-side positions of every region the table annotates (one run)."""
        from napari_cellmapper.viewer.spatial_layers import cell_geometry

        query, name, system = self.query, self.table_combo.currentText(), self.cs_combo.currentText()
        regions, rows, coords = [], [], []
        for element in table_elements(query.sdata, name):
            if element == self.element_combo.currentText():
                geometry = self.scene.geometry
            elif system in element_coordinate_systems(query.sdata, element):
                geometry = cell_geometry(query.sdata, name, element, system)
            else:
                raise ValueError(
                    f"Region {element!r} is not in the coordinate system {system!r}: choose one "
                    "that every region shares, or untick 'all'."
                )
            regions.append(element)
            rows.append(np.asarray(geometry.rows))
            coords.append(np.asarray(geometry.coords_yx))
        return side_by_side(regions, rows, coords)

    def run(self) -> Any:
        """Start a mapping in the background; returns the worker (None when the form is incomplete)."""
        if self.busy("geometry"):
            _notify_error("The cells are still being placed; run again once they are drawn.")
            return None
        try:
            job = self.build_job()
        except ValueError as error:
            _notify_error(str(error))
            return None
        n = len(job.rows)
        self.status.setText(f"Mapping {n:,} cells…")
        return self.controller.start(job)

    def cancel(self) -> None:
        self.controller.cancel()

    def _result_of(self, table: Any) -> MappingResult | None:
        """The last result applied to ``table`` (the object, not a copy), if any."""
        return next((result for t, result in self._results if t is table), None)

    def _set_running(self, running: bool) -> None:
        with updates_held(self):  # every control changes at once: one repaint of the dock
            self._show_running(running)

    def _show_running(self, running: bool) -> None:
        self.progress_bar.setVisible(running)
        if running:
            self._progress_shown = None
            # not Qt's busy mode: its animation repaints the window many times a second
            self.progress_bar.setRange(0, 100)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("starting…")
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for widget in (
            self.reference_combo,
            self.query_combo,
            self.table_combo,
            self.element_combo,
            self.cs_combo,
            *self._job_controls(),
        ):
            widget.setEnabled(not running)
        self._update_enabled()  # the Open and Export buttons
        self.niches_spin.setEnabled(not running and self.niches_check.isChecked())
        self.all_regions_check.setEnabled(not running and len(self._regions()) > 1)

    def _job_controls(self) -> tuple[QWidget, ...]:
        """The fields a run reads: frozen while it runs (its job was built at Run)."""
        return (
            self.rep_combo,
            self.obs_list,
            self.obsm_list,
            self.expression_check,
            self.k_spin,
            self.kernel_combo,
            self.backend_combo,
            self.presence_check,
            self.niches_check,
            self.region_button,
            self.clear_region_button,
            self.advanced,
        )

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        """The running stage in the status line and the dock's progress bar."""
        self.status.setText(f"{stage}: {done}/{total}")
        total = max(total, 1)
        shown = (stage, 100 * min(done, total) // total)
        if shown == self._progress_shown:  # a repaint only when the stage or its percent changes
            return
        self._progress_shown = shown
        bar = self.progress_bar
        # QProgressBar.setValue repaints at once: three such repaints in one turn were the
        # longest stalls of a run. With updates held, the bar is painted once, later.
        with updates_held(bar):
            bar.setRange(0, 100)
            bar.setValue(shown[1])
            bar.setFormat(f"{stage} %p%")

    def _apply_result(self, result: MappingResult) -> None:
        """Main thread: write the additions into the data and the layers' features, then colour
        the cells by the result (for :data:`DEFER_COLOURS_FROM` cells or more, in a later
        event-loop turn, after the timers and input then due: the colouring repaints the canvas,
        and the interface answers between the two instead of after both: see
        benchmarks/README.md, "Interface stalls")."""
        table, reference = self.table, self.reference
        result.apply_to(table)
        for column in result.reference_obs.columns:
            reference.obs[column] = result.reference_obs[column].to_numpy()
        self.result = result
        self._results = [(t, r) for t, r in self._results if t is not table] + [(table, result)]
        self._sync(lambda: self.scene.apply_result(result))
        self.cell_label.setText(CLICK_HINT)
        self._update_enabled()
        n_mapped = len(result.rows)
        self.status.setText(f"Done: {n_mapped:,} cells mapped.")
        for warning in result.warnings:
            from napari.utils.notifications import show_warning

            show_warning(warning)
        self.resultChanged.emit(result)
        geometry = self.scene.geometry
        if geometry is not None and len(geometry.rows) >= DEFER_COLOURS_FROM:
            self._colours_due = result
            self._colours_timer.start()
        else:
            self._show_result_colours(result, defer_frame=False)

    def _show_due_colours(self) -> None:
        result, self._colours_due = self._colours_due, None
        if result is not None:
            self._show_result_colours(result)

    def _show_result_colours(self, result: MappingResult, defer_frame: bool = True) -> None:
        """Colour the cells and the reference by ``result`` (the cell highlights cleared), unless
        another result or table is shown by now; ``defer_frame``: the canvas repaints in a turn
        of its own (:func:`.repaint.deferred_repaint`)."""
        if self._closed or self.result is not result or self._result_of(self.table) is not result:
            return
        prefer = "presence_score" if "presence_score" in result.reference_obs else None

        def reference_colours() -> None:  # after the tissue's frame, in a turn of its own
            if not self._closed and self.result is result:
                self._fill_reference_colors(prefer=prefer)

        deferred = deferred_repaint(self, then=reference_colours) if defer_frame else None
        with deferred or contextlib.nullcontext():
            self._sync(lambda: (self.scene.highlight_cell(None), self.scene.highlight_neighbors(None)))
            self._fill_colors(prefer=result.color_keys[0] if result.color_keys else None)
            if not defer_frame:
                self._fill_reference_colors(prefer=prefer)

    def _refresh_embedding_later(self) -> None:
        if self.embedding_view is not None and not self._closed:
            self.embedding_view.refresh_later()

    def open_qc(self) -> Any:
        """Dock the Label QC panel (at the bottom; raised if already docked) and return it."""
        from napari_cellmapper.widgets.qc.panel import dock_qc

        return dock_qc(self)

    # ================================================================ display
    def color_by(self, key: str) -> None:
        """Colour the cells by a feature column (listed in 'Colour cells by', legend updated)."""
        self._fill_colors(prefer=key)

    def open_embedding(self) -> Any:
        """Dock the reference embedding in its own canvas, linked to the tissue (the reference
        is then no longer drawn beside the tissue); returns the view."""
        from napari_cellmapper.widgets.embedding import EmbeddingView

        self.open_reference_view = True
        if self.embedding_view is None:
            self.embedding_view = EmbeddingView(self)
            self.embedding_view.destroyed.connect(self._on_embedding_closed)
            dock = self.viewer.window.add_dock_widget(
                self.embedding_view, name="Reference embedding", area="bottom"
            )
            under_the_canvas(dock)
        if self.scene.reference_layer is not None and self.scene.reference_layer.visible:
            self.scene.reference_layer.visible = False
            self.scene.highlight_neighbors(None)
        self.fit_view()
        self.embedding_view.follow_tissue_selection()
        self.embedding_view.refresh()
        return self.embedding_view

    def fit_view(self) -> None:
        """Fit the visible layers into the canvas (napari's ``reset_view`` counts hidden ones
        too, such as the reference beside the tissue while it is drawn in its own view), now and
        again within half a second, once dock widgets added meanwhile have taken their room."""

        def fit() -> None:
            if self._closed:
                return
            drawn = self.scene.cells_layer if self.scene.drawing else None  # shown in a moment
            shown = [layer for layer in self.viewer.layers if layer.visible or layer is drawn]
            try:
                self.viewer.reset_view(layers=shown or None)
            except TypeError:  # napari < 0.6: no ``layers=``
                self.viewer.reset_view()

        fit()
        for delay in FIT_AGAIN_MS:
            QTimer.singleShot(delay, fit)

    def _on_embedding_closed(self, *_: Any) -> None:
        """The reference view was closed: draw the reference beside the tissue again (and keep
        it there for the next reference; "Reference view…" docks the view again)."""
        self.embedding_view = None
        self.open_reference_view = False
        self.scene.highlight_cells(None)
        if self.scene.reference_layer is not None:
            self.scene.reference_layer.visible = True

    def open_curation(self) -> Any:
        """Dock the curation panel (once) beside this widget; returns it."""
        from napari_cellmapper.widgets.curation import CurationWidget

        if self.curation_panel is None:
            self.curation_panel = CurationWidget(self)  # follows resultChanged itself
            self.curation_panel.destroyed.connect(lambda *_: setattr(self, "curation_panel", None))
            self.viewer.window.add_dock_widget(self.curation_panel, name="Curate labels", area="right")
        self.curation_panel.refresh()
        return self.curation_panel

    def _fill_colors(self, prefer: str | None = None) -> None:
        keys = self.scene.color_keys()
        current = prefer or self.color_combo.currentText()
        self.color_combo.blockSignals(True)
        self.color_combo.clear()
        self.color_combo.addItems(keys)
        if current in keys:
            self.color_combo.setCurrentText(current)
        self.color_combo.blockSignals(False)
        self._on_color_changed(self.color_combo.currentText())

    def _on_color_changed(self, key: str) -> None:
        if not key or self.scene.cells_layer is None or key not in self.scene.cells_layer.features:
            self.color_key.show_info(None)
            return
        info = self.scene.color_cells(key, autoscale=self.autoscale_check.isChecked())
        self.color_key.show_info(_described(info, self.table))

    def _on_size_changed(self, factor: float) -> None:
        self.size_spin.setEnabled(self.scene.set_cell_size(factor) or self.scene.cells_layer is None)

    def _fill_reference_colors(self, prefer: str | None = None) -> None:
        layer = self.scene.reference_layer
        keys = [str(c) for c in layer.features.columns] if layer is not None else []
        self.reference_color_combo.setEnabled(layer is not None)
        self.reference_color_combo.setToolTip(
            REFERENCE_COLOR_TIP if layer is not None or self.reference is None else NO_EMBEDDING
        )
        current = prefer or self.reference_color_combo.currentText()
        self.reference_color_combo.blockSignals(True)
        self.reference_color_combo.clear()
        self.reference_color_combo.addItems(keys)
        if current in keys:
            self.reference_color_combo.setCurrentText(current)
        elif self.reference is not None:
            from napari_cellmapper.viewer.scene import default_color_key

            default = default_color_key(self.reference.obs)
            if default in keys:
                self.reference_color_combo.setCurrentText(default)
        self.reference_color_combo.blockSignals(False)
        self._on_reference_color_changed(self.reference_color_combo.currentText())

    def _on_reference_color_changed(self, key: str) -> None:
        """Recolour the reference; its view redraws a moment later."""
        info = self.scene.color_reference(key) if key else None
        self.reference_color_key.show_info(info)
        self._refresh_embedding_later()

    def show_gene(self, name: str) -> bool:
        """Colour the cells by a gene or a type's probability (see ``viewer.cell_values``): adds
        the feature ``"<gene> (measured)"``, ``"<gene> (imputed)"`` or ``"P(<type>)"``."""
        table = self.table
        if table is None or self.scene.cells_layer is None:
            _notify_error("Open a spatial query first.")
            return False
        try:
            column, values = cell_values(name, table, self.result, self.reference)
        except KeyError as error:
            _notify_error(str(error.args[0]))
            return False
        self._sync(lambda: self.scene.set_cell_values(column, values))
        self._fill_colors(prefer=column)
        return True

    def info_key(self) -> str | None:
        """The transferred obs key the cell info talks about."""
        if self.result is not None and self.result.obs_keys:
            colour = self.color_combo.currentText()
            for key in self.result.obs_keys:
                if colour.startswith(f"{key}_"):
                    return key
            return self.result.obs_keys[0]
        return None

    def show_cell(self, index: int) -> str:
        """Show the clicked cell (index into the cells layer); returns the text shown."""
        geometry, table = self.scene.geometry, self.table
        if geometry is None or table is None:
            return ""
        self.last_clicked_cell = int(index)
        row = int(geometry.rows[index])
        info = cell_info(table, row, self.info_key(), self.result)
        reference_obs = self.reference.obs if self.reference is not None else None
        text = info.as_text(reference_obs)
        self.cell_label.setText(text)
        linked = self.embedding_view is not None
        neighbours = info.neighbors if len(info.neighbors) and not linked else None
        self._sync(lambda: (self.scene.highlight_cell(index), self.scene.highlight_neighbors(neighbours)))
        if linked:
            self.embedding_view.show_reference_cells(info.neighbors)
        return text

    # ================================================================ region
    def add_region(self) -> Any:
        """Create (or select) the region shapes layer, ready to draw a polygon."""
        layer = self._sync(lambda: self.scene.region_layer(create=True))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        self.status.setText(
            "Draw a polygon (double-click to close); the next run maps only the cells inside."
        )
        return layer

    def clear_region(self) -> None:
        layer = self.scene.region_layer(create=False)
        if layer is not None:
            self.viewer.layers.remove(layer)
        self.status.setText("Region cleared: the next run maps all cells.")

    # ================================================================ export
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export annotated SpatialData", "annotated.zarr", "SpatialData (*.zarr)"
        )
        if path:
            self.export(path)

    def export(
        self, path: str | Path, *, confirm: bool = True, wait: bool = False
    ) -> BackgroundTask | Path | None:
        """Write the annotated query to ``path`` in the background (asks before overwriting).

        The table is frozen when this is called; the store is written atomically by a worker
        while the interface stays responsive (Export is off meanwhile), and an info notification
        names the path when it is written. Returns the running task (None when nothing was
        started), or with ``wait`` the path written (None on failure)."""
        query, table_name = self.query, self.table_combo.currentText()
        if query is None or self.result is None:
            _notify_error("Run a mapping before exporting.")
            return None
        if self.busy("export"):
            _notify_error("An export is being written; wait for it to finish.")
            return None
        path = Path(path)
        if path.suffix != ".zarr":
            path = path.with_name(path.name + ".zarr")
        overwrite = False
        if path.exists():
            if not confirm:
                _notify_error(f"{str(path)!r} exists; choose another name.")
                return None
            answer = QMessageBox.question(
                self,
                "Overwrite?",
                f"{path} exists. Overwrite it?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return None
            overwrite = True
        job = ExportJob.freeze(
            query.sdata,
            table_name,
            path,
            source_path=query.path,
            overwrite=overwrite,
            imputed=self.result.imputed,
        )

        def written(target: Path) -> Path:
            from napari.utils.notifications import show_info

            show_info(f"Wrote {target}")
            if not self._closed:
                self.status.setText(f"Exported to {target}")
            return target

        def failed(error: BaseException) -> None:
            _notify_error(f"Export failed: {error_message(error)}")
            if not self._closed:
                self.status.setText(f"Export to {path.name} failed; nothing was written.")

        self.status.setText(f"Exporting to {path}…")
        task = self._start_task(
            "export", write_export, job, desc=f"Exporting {path.name}", on_returned=written, on_errored=failed
        )
        return task.wait() if wait else task

    # ================================================================ cleanup
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self._closed = True  # background reads still running are not applied; exports finish
        self.controller.cancel()
        self.scene.stop_drawing()
        if self._click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._click)
        super().closeEvent(event)


def _described(info: Any, table: Any) -> Any:
    """Legend entries of niches with their main cell types (from ``uns["<key>_composition"]``)."""
    import dataclasses

    import pandas as pd

    composition = table.uns.get(f"{info.key}_composition") if table is not None and info.categorical else None
    if not isinstance(composition, pd.DataFrame):
        return info
    try:
        from napari_cellmapper.core.niches import describe_niches

        text = describe_niches(composition, top=2)
    except Exception:  # noqa: BLE001 - descriptions are a nicety
        return info
    labels = {str(k): str(v) for k, v in text.items()}
    entries = tuple(
        (f"{label}: {labels[label]}" if labels.get(label) else label, color) for label, color in info.entries
    )
    return dataclasses.replace(info, entries=entries)
