"""Progress events for chunked work, and the driver that reports them.

Long computations are generators that ``yield`` :class:`Progress` between chunks and ``return``
their result. Library and CLI users call :func:`run_steps`; napari's generator workers
``yield from`` the same generators, so progress and cancellation come for free.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long computation: ``done`` of ``total`` units of ``stage``."""

    stage: str
    done: int
    total: int


Steps = Generator[Progress, None, T]
#: seconds a stage must run before its bar appears (quick stages stay silent)
BAR_DELAY = 0.5
ProgressCallback = Callable[[Progress], None]


def run_steps[T](steps: Steps[T], progress: bool | ProgressCallback | None = None) -> T:
    """Drive a generator of :class:`Progress` events and return its result.

    Parameters
    ----------
    steps
        Generator yielding :class:`Progress` and returning the result.
    progress
        ``True``: a tqdm bar per stage on stderr; a callable: called with each event;
        ``None``/``False``: silent.
    """
    callback: ProgressCallback | None
    bars: dict[str, object] = {}
    if progress is True:
        from tqdm.auto import tqdm

        def callback(event: Progress) -> None:
            bar = bars.get(event.stage)
            if bar is None:
                bar = bars[event.stage] = tqdm(
                    total=event.total,
                    desc=event.stage,
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                    delay=BAR_DELAY,
                )
            # update() (unlike refresh()) honours tqdm's delay and minimum interval: quick stages
            # print nothing, long ones a bar that redraws a few times a second
            bar.update(event.done - bar.n)  # type: ignore[attr-defined]
            if event.done >= event.total:
                bar.close()  # type: ignore[attr-defined]
                bars.pop(event.stage, None)

    elif callable(progress):
        callback = progress
    else:
        callback = None
    try:
        while True:
            event = next(steps)
            if callback is not None:
                callback(event)
    except StopIteration as stop:
        return stop.value
    finally:
        for bar in bars.values():
            bar.close()  # type: ignore[attr-defined]


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` bounds covering ``range(n)`` in chunks of ``chunk_size``."""
    chunk_size = max(int(chunk_size), 1)
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
