"""Staging and atomic commit of an output (directory store or file), shared by every writer.

* :func:`staging_path` gives each run its own hidden staging name next to the target
  (``.<name>.cellmapper-tmp-<pid>-<id>``), and holds an exclusive ``flock`` on a lock file
  beside it for as long as the process lives.
* :func:`remove_stale_staging` deletes the staging left by killed runs: only entries whose lock
  file can be locked (their owner is dead; a live owner holds the lock).
* :func:`commit` moves the staged result to the target under an exclusive lock on the target
  name, re-checking the target there: a new path is created with ``RENAME_NOREPLACE`` (never
  replacing what appeared meanwhile), an existing one is replaced only when allowed and accepted
  by ``replaceable``, by ``RENAME_EXCHANGE`` (or ``rename`` for a file); the old tree is deleted
  only after the swap. Uses only the standard library (no NumPy/AnnData, no Qt).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_MARK = ".cellmapper-tmp-"
_LOCK_SUFFIX = ".lock"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_held: dict[str, int] = {}  # lock files this process holds, by path


class TargetChangedError(FileExistsError):
    """The target appeared or is not replaceable at commit time; nothing was replaced."""


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """``renameat2(a, b, flags)``; False where the call or the flag is unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``RENAME_EXCHANGE``); False where unsupported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _lock(path: Path, *, wait: bool) -> int | None:
    """Open ``path`` and take an exclusive flock; the fd, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def staging_path(target: Path) -> Path:
    """A fresh staging name beside ``target`` (not created), owned by this process while it lives."""
    name = f".{target.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging = target.parent / name
    lock = staging.with_name(name + _LOCK_SUFFIX)
    fd = _lock(lock, wait=False)
    assert fd is not None  # a fresh unique name: nobody else holds it
    _held[str(lock)] = fd
    return staging


def release_staging(staging: Path) -> None:
    """Remove ``staging`` (if still there) and its lock file."""
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
    elif staging.exists() or staging.is_symlink():
        staging.unlink(missing_ok=True)
    lock = staging.with_name(staging.name + _LOCK_SUFFIX)
    fd = _held.pop(str(lock), None)
    lock.unlink(missing_ok=True)
    if fd is not None:
        _unlock(fd)


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging of ``target`` left by dead runs (lock not held); return what was removed."""
    prefix = f".{target.name}{STAGING_MARK}"
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for lock in entries:
        if not (lock.name.startswith(prefix) and lock.name.endswith(_LOCK_SUFFIX)):
            continue
        if str(lock) in _held:
            continue
        fd = _lock(lock, wait=False)
        if fd is None:  # a live run owns it
            continue
        try:
            staging = lock.with_name(lock.name[: -len(_LOCK_SUFFIX)])
            if staging.is_dir() and not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            removed.append(staging)
        finally:
            _unlock(fd)
    return removed


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on the name ``target`` (a hidden lock file beside it) while inside.

    The lock file stays afterwards: unlinking it would race with a run waiting for it.
    """
    fd = _lock(target.with_name(f".{target.name}.cellmapper{_LOCK_SUFFIX}"), wait=True)
    assert fd is not None
    try:
        yield
    finally:
        _unlock(fd)


def _appeared(target: Path) -> str:
    return f"{str(target)!r} appeared while this run was writing; it was left as it was."


def create(staging: Path, target: Path) -> None:
    """Rename ``staging`` to a ``target`` that must not exist (``RENAME_NOREPLACE``)."""
    appeared = TargetChangedError(_appeared(target))
    if target.exists() or target.is_symlink():
        raise appeared
    try:
        if _renameat2(staging, target, _RENAME_NOREPLACE):
            return
    except FileExistsError as err:
        raise appeared from err
    os.rename(staging, target)  # no renameat2 here: checked under the lock just above


def commit(
    staging: Path,
    target: Path,
    *,
    replace: bool,
    replaceable: Callable[[Path], str | None] | None = None,
) -> None:
    """Move ``staging`` to ``target`` atomically, re-checking ``target`` under an exclusive lock.

    ``replace``: whether an existing target may be replaced; ``replaceable(target)`` returns a
    reason to refuse (or None). Raises :class:`TargetChangedError` and leaves everything as it was
    when the target may not be replaced.
    """
    with locked(target):
        exists = target.exists() or target.is_symlink()
        if not exists:
            create(staging, target)
        else:
            if not replace:
                raise TargetChangedError(_appeared(target))
            reason = replaceable(target) if replaceable is not None else None
            if reason is not None:
                raise TargetChangedError(reason)
            if not staging.is_dir():
                os.replace(staging, target)  # a file: rename replaces it atomically
            elif exchange(staging, target):
                shutil.rmtree(staging, ignore_errors=True)  # the old tree, now at the staging name
            else:
                raise OSError(errno.ENOTSUP, "atomic directory exchange is not supported here", str(target))
        fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (best effort: silently skipped where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
