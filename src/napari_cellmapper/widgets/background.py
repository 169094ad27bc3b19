"""The dock widget's heavy steps off the interface thread: reading files, writing the export.

A :class:`BackgroundTask` runs one function in a napari thread worker and hands its return value,
or its exception, to a callback on the main thread; only those callbacks touch widgets and layers.
The widget says what runs in its status line (and turns the button off); an entry in napari's
activity panel is optional (``activity=True``, by default as ``NAPARI_CELLMAPPER_ACTIVITY`` says,
like runs): while any napari progress bar is open, napari
animates a loading GIF in the status bar, and under Xvfb's software OpenGL every frame of it
recomposes the window, canvas included, which made a 300k-cell export 2-3x slower (3-6 s without,
11-17 s with a bar, determinate or not). The work functions (:func:`read_query`,
:func:`write_export`, and ``sources.load_reference`` for a reference) receive everything they need
as arguments (a frozen description) and never touch the viewer.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTask:
    """``func(*args)`` in a napari ``FunctionWorker``; ``on_returned(value)`` or ``on_errored(error)``
    then ``on_finished()`` run on the main thread, and what the first two return is the task's
    ``outcome`` (see :meth:`wait`).

    The first two run after a zero timer, not in the turn that delivers the worker's signal: Qt
    delivers posted signals ahead of the timers already due, so a worker that ends with a long
    hold of the interpreter lock (a read's garbage collection, 0.24-0.27 s at 300k cells) and the
    main thread's work on its result (adding the layers) would otherwise be one stall."""

    def __init__(
        self,
        kind: str,
        func: Callable[..., Any],
        *args: Any,
        desc: str,
        on_returned: Callable[[Any], Any],
        on_errored: Callable[[BaseException], Any],
        on_finished: Callable[[BackgroundTask], None] | None = None,
        activity: bool | None = None,
    ) -> None:
        from napari.qt.threading import create_worker

        from napari_cellmapper.widgets.controller import activity_panel_wanted

        self.kind = kind
        self.desc = desc
        self.activity = activity_panel_wanted() if activity is None else activity
        self.done = False
        self.outcome: Any = None
        self._due = 0  # callbacks scheduled and not yet run
        self._worker_finished = False
        self._on_returned, self._on_errored, self._on_finished = on_returned, on_errored, on_finished
        # _ignore_errors: the errors are ours to report (napari would add its own traceback)
        self.worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self._bar: Any = None
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)

    def start(self) -> BackgroundTask:
        if self.activity:  # a one-step bar (see the module docstring for its cost)
            try:
                from napari.utils import progress

                self._bar = progress(total=1, desc=self.desc)
            except Exception:  # noqa: BLE001 - the activity panel is a nicety
                log.debug("activity bar failed", exc_info=True)
        self.worker.start()
        return self

    def _returned(self, value: Any) -> None:
        self._later(lambda: self._apply(value))

    def _errored(self, error: BaseException) -> None:
        self._later(lambda: self._fail(error))

    def _apply(self, value: Any) -> None:
        try:
            self.outcome = self._on_returned(value)
        except Exception as error:  # noqa: BLE001 - applying failed: report it like a failed task
            log.debug("applying the result of a %s task failed", self.kind, exc_info=True)
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self.outcome = self._on_errored(error)

    def _later(self, callback: Callable[[], None]) -> None:
        from qtpy.QtCore import QTimer

        def run() -> None:
            try:
                callback()
            finally:
                self._due -= 1
                if self._worker_finished and self._due == 0:
                    self._complete()

        self._due += 1
        QTimer.singleShot(0, run)

    def _finished(self) -> None:
        self._worker_finished = True
        if self._due == 0:
            self._complete()

    def _complete(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.done = True
        if self._on_finished is not None:
            self._on_finished(self)

    def wait(self, timeout: float | None = None) -> Any:
        """Process interface events until the task is done (its callbacks ran); its outcome."""
        wait_until(lambda: self.done, timeout)
        return self.outcome


def wait_until(condition: Callable[[], bool], timeout: float | None = None) -> None:
    """Process Qt events until ``condition()`` holds (TimeoutError after ``timeout`` seconds)."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not condition():
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if condition():
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("the background task did not finish in time")
        time.sleep(0.002)


# ---------------------------------------------------------------------------------- reading
@dataclass(frozen=True, eq=False)
class OpenedQuery:
    """A query read in the background, with the geometry of the cells the widget draws first
    (its first table, element and coordinate system; None when that failed: the widget then
    computes it again and reports the error)."""

    source: Any  # QuerySource
    table: str | None = None
    element: str | None = None
    coordinate_system: str | None = None
    geometry: Any = None  # CellGeometry

    def prepared(self) -> tuple[Any, str, str, str, Any] | None:
        """(sdata, table, element, coordinate system, geometry), or None without geometry."""
        if self.geometry is None:
            return None
        return self.source.sdata, self.table, self.element, self.coordinate_system, self.geometry


def read_query(path: str | Path) -> OpenedQuery:
    """Worker: the query read from ``path`` and the geometry of the cells drawn first (label
    centroids over a big raster take seconds). Python's garbage collector is paused meanwhile
    (``io.shapes.collector_paused``: reading 300k cells set off 3-8 full collections, 0.1-0.36 s
    each with the interpreter lock held), then collects once (:func:`collect_garbage`)."""
    from napari_cellmapper.io.shapes import collector_paused

    warm_up()
    with collector_paused():
        opened = _read_and_place(path)
    collect_garbage()
    return opened


def _read_and_place(path: str | Path) -> OpenedQuery:
    from napari_cellmapper.widgets.sources import (
        element_coordinate_systems,
        load_query,
        table_elements,
        table_names,
    )

    source = load_query(path)
    names = table_names(source.sdata)
    if not names:
        raise ValueError("it has no table annotating cells (points, shapes or labels)")
    elements = table_elements(source.sdata, names[0])
    systems = element_coordinate_systems(source.sdata, elements[0]) if elements else []
    if not systems:
        return OpenedQuery(source)
    try:
        geometry = place_cells(source.sdata, names[0], elements[0], systems[0])
    except Exception:  # noqa: BLE001 - drawing it on the main thread reports the error
        log.debug("cell geometry of %s failed in the background", path, exc_info=True)
        geometry = None
    return OpenedQuery(source, names[0], elements[0], systems[0], geometry)


def collect_garbage() -> None:
    """Worker: a full garbage collection now, after reading a sample. Reading 300k cells adds
    600k tracked objects (shapely's geometries); Python then collected everything again in the
    next turn that allocated, which was the interface thread's turn building the layers (0.26-0.33
    s on top of it). Collected here, it happens while the interface has nothing to draw."""
    import gc

    gc.collect()


#: modules napari imports when it draws a sample's first layers (dask's distributed scheduler
#: module, PIL, vispy's OpenGL arrays): imported by the reading worker instead (0.3-0.5 s)
WARM_MODULES = ("distributed", "PIL.Image", "OpenGL.arrays", "matplotlib.backends")
#: modules a session imports sooner or later, imported when the widget opens (``warm_session``)
#: while the user picks the data: those reading a file needs (spatialdata and anndata, about 1-2
#: s, which every first open paid on its reading path), then those a run needs (scikit-learn's
#: k-means for niches, 1.2 s; the first run with niches imported it in its worker, holding the
#: interpreter lock for 0.1-0.3 s, a 0.28 s stall of a 300k run)
SESSION_MODULES = {"reading": ("spatialdata", "anndata"), "running": ("sklearn.cluster",)}


def warm_session() -> threading.Thread:
    """In one background thread, started when the widget opens: ``SESSION_MODULES`` imported,
    :func:`warm_up` done (off the reader's path) and the numba kernels loaded
    (``jit.load_kernels``, where they may run: ``jit.kernels_ready``; loading holds the
    interpreter lock for tens of milliseconds at a time, which a first run's worker would
    otherwise do while the interface waits). Returns the thread."""
    from napari_cellmapper.core import jit

    def work() -> None:
        _import(SESSION_MODULES["reading"])  # what opening a file needs first
        warm_up()  # then what napari loads with a sample's first layers
        if jit.kernels_ready():
            jit.load_kernels()
        _import(SESSION_MODULES["running"])

    thread = threading.Thread(target=work, name="cellmapper-session-warm-up", daemon=True)
    thread.start()
    return thread


def _import(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional module, or one that fails to import
            log.debug("warm-up import of %s failed", name, exc_info=True)


def warm_up() -> None:
    """Worker: do ahead what napari does lazily on the interface thread when the first layers of
    a sample are built: those imports, and pint's unit registry (napari's layer transforms carry
    units; loading its definitions takes 0.5 s). Once per process (the session's warm-up does it
    when the widget opens; the reader calls it too, and waits for a warm-up under way); every
    step optional."""
    global _WARM
    with _WARM_LOCK:
        if _WARM:
            return
        _import(WARM_MODULES)
        try:
            import pint

            pint.get_application_registry().pixel  # noqa: B018 - loads the unit definitions
        except Exception:  # noqa: BLE001 - napari would load them itself
            log.debug("pint warm-up failed", exc_info=True)
        _WARM = True


_WARM = False
_WARM_LOCK = threading.Lock()


def place_cells(sdata: Any, table: str, element: str, coordinate_system: str) -> Any:
    """Worker: the cells' geometry (``spatial_layers.cell_geometry``: label centroids over a big
    raster take seconds), with the KD-tree of their centres and their spacing (a click finds and
    rings a cell with them: 0.1 s at 300k, 0.35 s at 1M), the index of their instance ids (a
    clicked label's cell), and their hover features
    (``CellGeometry.display_obs``: 0.4-0.5 s at 300k)."""
    from napari_cellmapper.viewer.spatial_layers import cell_geometry

    geometry = cell_geometry(sdata, table, element, coordinate_system)
    geometry.spacing  # noqa: B018 - with its KD-tree: built here, not on the first click
    if geometry.kind == "labels":
        geometry.row_of_instance(0)  # the index of its label values (a label clicked) too
    geometry.display_obs(sdata.tables[table].obs)
    return geometry


# ---------------------------------------------------------------------------------- export
@dataclass(frozen=True, eq=False)
class ExportJob:
    """Everything an export writes, frozen on the main thread when Export is pressed: the table's
    annotations are copied (obs, var, uns), its matrices shared (never modified in
    place), so later runs or curation do not reach a write in progress."""

    sdata: Any
    table_name: str
    path: Path
    source_path: str | None
    overwrite: bool
    imputed: Any
    x: Any
    obs: Any
    var: Any
    uns: dict[str, Any]
    obsm: dict[str, Any]
    varm: dict[str, Any]
    layers: dict[str, Any]
    obsp: dict[str, Any]

    @classmethod
    def freeze(
        cls,
        sdata: Any,
        table_name: str,
        path: str | Path,
        *,
        source_path: str | None = None,
        overwrite: bool = False,
        imputed: Any = None,
    ) -> ExportJob:
        table = sdata.tables[table_name]
        return cls(
            sdata=sdata,
            table_name=table_name,
            path=Path(path),
            source_path=source_path,
            overwrite=overwrite,
            imputed=imputed,
            x=table.X,
            obs=table.obs.copy(),  # under 1 ms at 300k cells
            var=table.var.copy(),
            uns=copy.deepcopy(dict(table.uns)),
            obsm=dict(table.obsm),
            varm=dict(table.varm),
            layers=dict(table.layers),
            obsp=dict(table.obsp),
        )

    def table(self) -> Any:
        """The frozen table as an AnnData (built in the worker: its index checks take 0.1 s at
        300k cells)."""
        from anndata import AnnData

        return AnnData(
            X=self.x,
            obs=self.obs,
            var=self.var,
            uns=self.uns,
            obsm=self.obsm,
            varm=self.varm,
            layers=self.layers,
            obsp=self.obsp,
        )


def write_export(job: ExportJob) -> Path:
    """Worker: write the annotated query (atomically, see ``io.export``); the path written."""
    from napari_cellmapper.widgets._npe2 import export_query

    return Path(
        export_query(
            job.sdata,
            job.table_name,
            job.path,
            source_path=job.source_path,
            overwrite=job.overwrite,
            imputed=job.imputed,
            table=job.table(),
        )
    )
