"""Parallel numba kernels launched from several threads at once, safely.

The pipeline overlaps work: the reference's own neighbour graph is searched in a background
thread while the main thread transfers expression, and dask workers run tasks in threads. numba's
OpenMP and TBB threading layers take concurrent launches; its fallback layer (workqueue, used
when neither is installed) aborts the process on them. So launches are serialised by one lock
when, and only when, neither threadsafe layer can be loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from functools import cache

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


def launch_lock() -> contextlib.AbstractContextManager:
    """Hold this around a parallel kernel launch: a no-op unless numba runs on workqueue."""
    from numba import config

    if config.THREADING_LAYER != "workqueue" and threadsafe_layer_available():
        return contextlib.nullcontext()
    return _LOCK
