"""Parallel numba kernels launched from several threads at once, safely and evenly.

The pipeline overlaps work: the reference's own neighbour graph and the presence scores are
computed in a background thread while the main thread transfers expression, and dask workers run
tasks in threads. numba's OpenMP and TBB threading layers take concurrent launches; its fallback
layer (workqueue, used when neither is installed) aborts the process on them, so launches are then
serialised by one lock. Every launch hands its tasks out dynamically, which keeps two kernels
sharing the cores from waiting on each other's slowest thread (the 100k-cell pipeline: 2.11 s
against 2.47 s with numba's default static blocks, medians of 6 fresh processes).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from functools import cache

from napari_cellmapper.core import numba_cache

# every kernel module imports this one before it defines its kernels: their cache goes to the user's
numba_cache.install()

_LOCK = threading.Lock()


@cache
def threadsafe_layer_available() -> bool:
    """Whether numba can load its OpenMP or TBB threading layer here."""
    for module in ("numba.np.ufunc.omppool", "numba.np.ufunc.tbbpool"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return True
    return False


@contextlib.contextmanager
def launch_lock() -> Iterator[None]:
    """Hold this around a parallel kernel launch.

    It hands the kernel's tasks out dynamically (one at a time) rather than in one static block
    per thread: when two kernels, or a kernel and other work, share the cores, a thread that gets
    less CPU then does fewer tasks instead of holding up the whole launch. And it serialises
    launches when numba runs on workqueue.
    """
    from numba import config, parallel_chunksize

    serialise = config.THREADING_LAYER == "workqueue" or not threadsafe_layer_available()
    with _LOCK if serialise else contextlib.nullcontext(), parallel_chunksize(1):
        yield


def in_background(load: Callable[[], None], name: str) -> threading.Thread:
    """Run ``load`` (loading, or the first time on a machine compiling, some kernels) in a daemon
    thread, so a fresh process does not pay for it on the critical path."""
    thread = threading.Thread(target=load, name=name, daemon=True)
    thread.start()
    return thread
