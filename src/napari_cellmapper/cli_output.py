"""What the command line writes: .h5ad files (atomically, with the umask's mode) and one-line messages."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
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
    """Write ``adata`` under a temporary name beside ``path``, then move it into place.

    The temporary file is created with mode 0666 less the umask, as ``open()`` would (not 0600).
    """
    from napari_cellmapper.core.validation import CellMapperInputError

    if path.exists() and not overwrite:
        raise CellMapperInputError(
            f"{flag} {path} exists; pass --overwrite to replace it or choose another {flag}."
        )
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
