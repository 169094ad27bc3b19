"""When the numba kernels run: once they are compiled, so that a fresh install never waits for them.

numba compiles a kernel the first time a machine runs it and caches it on disk (see
:mod:`.numba_cache`). For the kernels of the default pipeline (the IVF scan and the expression
product; the label kernels came later), that took about 15 s of a fresh install's first 100k-cell
mapping (20 s against 4 s for the next ones, ``benchmarks/cold_start.py``). So under the default
policy the kernels are used once they are in the cache; until then the same steps run on faiss,
scipy and NumPy (same neighbours up to ties, same products and labels; a little slower) and the
first mapping starts a separate, low-priority process that compiles the kernels once that mapping's
process has ended (or after two minutes in a long-lived one such as napari).

``NAPARI_CELLMAPPER_JIT`` sets the policy:

``auto`` (default)
    kernels once compiled; compile them in the background otherwise.
``always``
    kernels, compiled in this process on first use (the test suite uses this).
``never``
    faiss and scipy only; nothing is compiled.

``napari-cellmapper precompile`` (or ``python -m napari_cellmapper.core.jit``) compiles them ahead,
e.g. when a container image is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

POLICY_ENV = "NAPARI_CELLMAPPER_JIT"
POLICIES = ("auto", "always", "never")
#: modules whose kernels the background process compiles (their sources key the marker)
KERNEL_MODULES = (
    "napari_cellmapper.core.search.ivf_scan",
    "napari_cellmapper.core.sparse_product",
    "napari_cellmapper.core.label_kernels",
)
#: a compile lock older than this (seconds) is taken for one left by a killed process
STALE_LOCK_S = 900
#: the compiling process waits this long (seconds) for the process that started it to end, so it
#: does not take the cores from the mapping (a command line ends after one; napari does not)
WAIT_FOR_PARENT_S = 120.0


def policy() -> str:
    """The policy from ``NAPARI_CELLMAPPER_JIT`` (``auto`` when unset)."""
    value = os.environ.get(POLICY_ENV, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(f"{POLICY_ENV}={value!r} is not one of {', '.join(POLICIES)}.")
    return value


@cache
def _key() -> str:
    """What the compiled kernels depend on: their sources, numba, Python and the CPU type."""
    import numba

    digest = hashlib.sha256(f"{numba.__version__}|{sys.version}|{platform.machine()}".encode())
    for name in KERNEL_MODULES:
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def cache_folder() -> Path:
    """Where numba caches this package's kernels (``NUMBA_CACHE_DIR`` when set)."""
    from numba.core import config

    from napari_cellmapper.core import numba_cache

    return Path(config.CACHE_DIR) if config.CACHE_DIR else numba_cache.cache_dir()


def marker() -> Path:
    """File written once the kernels of this version are in the cache."""
    return cache_folder() / f"compiled-{_key()}"


def kernels_ready() -> bool:
    """Whether the kernels may run now without compiling (``always``: compiling is allowed)."""
    mode = policy()
    return mode == "always" or (mode == "auto" and marker().exists())


def use_kernels() -> bool:
    """:func:`kernels_ready`; under ``auto`` it starts the background compile when they are not."""
    if kernels_ready():
        return True
    if policy() == "auto":
        start_background_compile()
    return False


def _lock() -> Path:
    return cache_folder() / f"compiling-{_key()}.lock"


def start_background_compile() -> bool:
    """Start the compiling process unless one runs already; whether one was started."""
    lock = _lock()
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except OSError:  # running already, or the cache folder is not writable: nothing to do
        return False
    command = [sys.executable, "-m", __name__, "--lock", str(lock), "--after", str(os.getpid())]
    try:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, POLICY_ENV: "always"},
        )  # fmt: skip
    except OSError:
        lock.unlink(missing_ok=True)
        return False
    return True


def load_kernels() -> None:
    """Load every kernel module's kernels (compiling those not in the cache)."""
    from napari_cellmapper.core import label_kernels, sparse_product
    from napari_cellmapper.core.search import ivf_scan

    ivf_scan.load_kernels()
    sparse_product.load_kernels()
    label_kernels.load_kernels()


def compile_kernels() -> Path:
    """Compile (or load) the kernels into the cache and write the marker; returns the marker."""
    load_kernels()
    target = marker()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(f"numba kernels of {', '.join(KERNEL_MODULES)}\n")
    os.replace(partial, target)
    return target


def _wait_for(parent: int, timeout: float) -> None:
    """Return once ``parent`` is no longer this process's parent (it ended), or after ``timeout``."""
    end = time.monotonic() + timeout
    while os.getppid() == parent and time.monotonic() < end:
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> None:
    """Entry of the background process: wait for the mapping to end, compile at lower priority,
    release the lock. ``[--lock PATH] [--after PID]``."""
    args = sys.argv[1:] if argv is None else argv
    options = dict(zip(args[::2], args[1::2], strict=False))
    lock = Path(options["--lock"]) if "--lock" in options else None
    if "--after" in options:
        _wait_for(int(options["--after"]), WAIT_FOR_PARENT_S)
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(10)  # the mapping that started it keeps the cores
    try:
        compile_kernels()
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
