"""Write an AnnData ``.h5ad`` atomically: free space checked first, staged, committed by rename."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import atomic

_MARGIN = 1.2  # h5ad headers, string tables and attributes on top of the raw array bytes
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def _disk_errno(err: BaseException) -> int | None:
    """The full-disk/read-only errno behind ``err``: its own, its causes', or the one HDF5 quotes in
    its message (h5py and anndata re-raise without it: "file write failed: ..., errno = 28")."""
    seen: BaseException | None = err
    while seen is not None:
        code = getattr(seen, "errno", None)
        if code in _DISK_ERRORS:
            return code
        for match in _HDF5_ERRNO.finditer(str(seen)):
            if int(match.group(1)) in _DISK_ERRORS:
                return int(match.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _quiet_failure() -> Iterator[None]:
    """Keep h5py's tracebacks from objects it cannot close (a failed write's datasets on a full
    disk; printed straight to stderr, or as unraisable exceptions) off the terminal: the one error
    raised says it all. What the write printed is passed on when it succeeds."""
    hook, buffer = sys.unraisablehook, io.StringIO()
    sys.unraisablehook = lambda _unraisable: None
    try:
        with contextlib.redirect_stderr(buffer):
            try:
                yield
            except BaseException:
                gc.collect()  # close what the failed write left open while still quiet
                raise
    finally:
        sys.unraisablehook = hook
    sys.stderr.write(buffer.getvalue())  # a successful write's warnings


def estimated_size(adata: AnnData) -> int:
    """A rough upper estimate of the bytes ``adata`` takes in an uncompressed ``.h5ad``."""

    def nbytes(value) -> int:
        if sparse.issparse(value):
            return int(value.data.nbytes + value.indices.nbytes + value.indptr.nbytes)
        if hasattr(value, "memory_usage"):  # DataFrame
            return int(value.memory_usage(index=True, deep=True).sum())
        return int(getattr(np.asarray(value), "nbytes", 0))

    total = nbytes(adata.obs) + nbytes(adata.var)
    if adata.X is not None:
        total += nbytes(adata.X)
    for mapping in (adata.layers, adata.obsm, adata.varm, adata.obsp, adata.varp):
        total += sum(nbytes(v) for v in mapping.values())
    return int(total * _MARGIN) + (1 << 20)


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` so that ``path`` is either untouched or the complete new file.

    Refused before writing when ``path`` exists (without ``overwrite``), is not a file, or its
    folder lacks the space; written to this run's staging file and renamed under a lock that
    re-checks the target. A full or read-only disk becomes a :class:`CellMapperInputError`.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise CellMapperInputError(
                f"{path} exists; pass --overwrite to replace it or choose another path."
            )
        if path.is_symlink() or not path.is_file():
            raise CellMapperInputError(f"{path} exists and is not a file; refusing to replace it.")
    if not path.parent.is_dir():
        raise CellMapperInputError(f"The folder of {str(path)!r} does not exist; create it first.")
    atomic.remove_stale_staging(path)
    need, free = estimated_size(adata), shutil.disk_usage(path.parent).free
    if need > free:
        raise CellMapperInputError(
            f"Not enough disk space for {str(path)!r}: about {need / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free. Free some space or choose another folder."
        )
    staging = atomic.staging_path(path)
    try:
        with _quiet_failure():
            try:
                adata.write_h5ad(staging)
            except (OSError, RuntimeError) as err:
                code = _disk_errno(err)
                if code is None:
                    raise
                raise OSError(code, os.strerror(code), str(staging)) from err
        atomic.commit(staging, path, replace=overwrite, replaceable=_refusal)
    except atomic.TargetChangedError as err:
        raise CellMapperInputError(f"{err} Nothing was replaced; choose another path.") from err
    except OSError as err:
        code = _disk_errno(err)
        if code is not None:
            raise CellMapperInputError(
                f"Cannot write {str(path)!r}: {os.strerror(code)}. "
                "Free some space or choose a writable folder; nothing was written."
            ) from err
        raise
    finally:
        atomic.release_staging(staging)
    return path


def _refusal(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return f"{str(path)!r} is not a file; refusing to replace it."
    return None
