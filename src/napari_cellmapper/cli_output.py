"""What the command line writes: .h5ad files (atomically, with the umask's mode) and one-line messages."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROG = "napari-cellmapper"


def one_line(message: str) -> str:
    """A message on one line: whitespace collapsed, very long messages cut at their first line."""
    message = message.strip()
    return message.splitlines()[0] if len(message) > 500 else " ".join(message.split())


def print_error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each Python warning as ``napari-cellmapper: warning: <message>``, without file and source line."""

    def show(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"{PROG}: warning: {one_line(str(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        # deprecation notices are for developers (the CLI's user can act on neither theirs nor ours)
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def write_h5ad_atomic(adata: Any, path: Path, overwrite: bool, flag: str = "--out") -> None:
    """Write ``adata`` atomically through :func:`napari_cellmapper.io.h5ad.write_h5ad_atomic`
    (free space checked, staged, committed under a lock; the file gets the umask's mode), with
    the refusal of an existing file worded for ``flag``."""
    from napari_cellmapper.core.validation import CellMapperInputError
    from napari_cellmapper.io.h5ad import write_h5ad_atomic as write

    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CellMapperInputError(
            f"{flag} {path} exists; pass --overwrite to replace it or choose another {flag}."
        )
    try:
        write(adata, path, overwrite=overwrite)
    except CellMapperInputError as err:  # full or read-only disk, a path that appeared meanwhile
        raise CellMapperInputError(f"{flag}: {err}") from err
