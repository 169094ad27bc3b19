"""Starts mapping workers, reports progress, and applies results on the main thread.

One job is *current* at a time. A result whose ``job_id`` is not the current job's (the run was
cancelled, or the inputs changed while it ran) is dropped, never applied. Failures and
cancellations apply nothing, so the viewer and the data stay as they were.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_cellmapper.core.progress import Progress
from napari_cellmapper.widgets.job import MappingJob, MappingResult, run_mapping

#: seconds between two updates of napari's activity bar within one stage
PROGRESS_INTERVAL = 0.5
#: ``NAPARI_CELLMAPPER_ACTIVITY=1`` also shows the run in napari's activity panel. Off by default:
#: while a napari progress bar is open, napari animates a loading GIF in its status bar, and under
#: software OpenGL (Xvfb, virtual machines, remote desktops) every frame of it recomposes the whole
#: window, canvas included: a 300k-cell run through the widget took 22.3 s with it, 14.3 s without
#: (``benchmarks/xenium_widget.py``). The dock shows the run's progress itself.
ACTIVITY_ENV = "NAPARI_CELLMAPPER_ACTIVITY"
log = logging.getLogger(__name__)


def activity_panel_wanted() -> bool:
    """Whether runs also go to napari's activity panel (see :data:`ACTIVITY_ENV`)."""
    return os.environ.get(ACTIVITY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def error_message(error: BaseException) -> str:
    """The library's own message for input errors, the exception type for anything else."""
    from napari_cellmapper.core.validation import CellMapperInputError

    if isinstance(error, CellMapperInputError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class MappingController(QObject):
    """Runs :func:`run_mapping` in a napari generator ``thread_worker``.

    Signals: ``running(bool)``, ``applied(MappingResult)``, ``failed(str)``, ``cancelled()``,
    ``dropped(int)`` (stale job id), ``progressed(str, int, int)``.
    """

    running = Signal(bool)
    applied = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    dropped = Signal(int)
    progressed = Signal(str, int, int)

    def __init__(
        self,
        apply: Callable[[MappingResult], None],
        parent: QObject | None = None,
        runner: Callable[[MappingJob], Any] = run_mapping,
        *,
        activity: bool | None = None,
    ) -> None:
        super().__init__(parent)
        self._apply = apply
        self.runner = runner
        #: whether napari's activity panel shows the run (default: :func:`activity_panel_wanted`)
        self.activity = activity_panel_wanted() if activity is None else bool(activity)
        self.current_job: MappingJob | None = None
        self.worker: Any = None
        self._progress: Any = None
        self._progress_stage: str | None = None
        self._progress_shown = 0.0

    def prepare_activity_bar(self) -> None:
        """Show and close one napari activity bar, so that its one-time set-up (about 0.5 s on
        the interface thread, layout and canvas redraw included) is paid when the widget opens,
        not in the middle of the first run (only when the activity panel is used)."""
        if not self.activity:
            return
        try:
            from napari.utils import progress

            progress(total=1, desc="CellMapper ready").close()
        except Exception:  # noqa: BLE001 - the activity panel is a nicety
            log.debug("activity bar set-up failed", exc_info=True)

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def start(self, job: MappingJob) -> Any:
        """Run ``job``; it becomes the current job (an earlier run's result will be dropped)."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            self.cancel()
        self.current_job = job
        worker = create_worker(self.runner, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda error, job_id=job.job_id: self._on_errored(job_id, error))
        worker.aborted.connect(lambda job_id=job.job_id: self._on_aborted(job_id))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        self.running.emit(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job between chunks; whatever it returns later is dropped."""
        worker = self.worker
        self.current_job = None
        if worker is not None:
            worker.quit()

    def invalidate(self) -> None:
        """Inputs changed: a result of the running job must not be applied any more."""
        self.current_job = None

    # ------------------------------------------------------------------ slots
    def _on_progress(self, event: Any) -> None:
        if not isinstance(event, Progress):
            return
        self.progressed.emit(event.stage, int(event.done), int(event.total))
        if not self.activity:
            return
        # napari's activity bar costs the interface thread a repaint per update: a new stage is
        # shown at once, progress within a stage at most every PROGRESS_INTERVAL seconds
        now = time.monotonic()
        stage_changed = event.stage != self._progress_stage
        if not stage_changed and now - self._progress_shown < PROGRESS_INTERVAL:
            return
        self._progress_stage, self._progress_shown = event.stage, now
        try:
            from napari.utils import progress

            if self._progress is None:
                self._progress = progress(total=max(event.total, 1), desc=event.stage)
            bar = self._progress
            if bar.desc.rstrip(": ") != event.stage:
                bar.set_description(event.stage)
            if bar.total != event.total:
                bar.total = max(event.total, 1)
            bar.n = 0
            bar.update(min(event.done, bar.total))
        except Exception:  # noqa: BLE001 - the activity panel is a nicety
            log.debug("progress bar update failed", exc_info=True)

    def _on_returned(self, result: MappingResult) -> None:
        current = self.current_job
        if current is None or result.job_id != current.job_id:
            log.info("dropping stale mapping result of job %s", result.job_id)
            self.dropped.emit(result.job_id)
            return
        try:
            self._apply(result)
        except Exception as error:  # noqa: BLE001 - report, keep the widget usable
            self._notify_error(f"Could not show the result: {type(error).__name__}: {error}")
            return
        self.applied.emit(result)

    def _on_errored(self, job_id: int, error: BaseException) -> None:
        if self.current_job is not None and self.current_job.job_id != job_id:
            return
        from napari_cellmapper.core.validation import CellMapperInputError

        message = error_message(error)
        self._notify_error(
            message if isinstance(error, CellMapperInputError) else f"Mapping failed: {message}"
        )

    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(message)
        self.failed.emit(message)

    def _on_aborted(self, job_id: int) -> None:
        from napari.utils.notifications import show_info

        show_info("Mapping cancelled; nothing was changed.")
        self.cancelled.emit()

    def _on_finished(self, worker: Any) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._progress_stage = None
        if worker is self.worker:
            self.worker = None
            self.running.emit(False)
