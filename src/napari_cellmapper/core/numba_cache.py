"""numba's on-disk cache of this package's kernels: in the user cache dir, never in site-packages.

numba picks a cache folder per jitted function when the function is defined, from a list of
"locators"; by default the first is ``NUMBA_CACHE_DIR`` (when set) and the next the
``__pycache__`` beside the source, i.e. site-packages, which is read-only in conda envs, system
Pythons and containers. :func:`install` puts one locator in front that sends this package's
kernels (and no one else's) to ``<user cache dir>/napari-cellmapper/numba``; a user's
``NUMBA_CACHE_DIR`` still wins, and numba's own fallbacks apply if that folder is not writable.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Folder for the compiled kernels (``~/.cache/napari-cellmapper/numba`` on Linux)."""
    from platformdirs import user_cache_path

    return user_cache_path("napari-cellmapper", appauthor=False) / "numba"


def _in_package(py_file: str) -> bool:
    return Path(py_file).resolve().is_relative_to(PACKAGE_DIR)


@cache
def install() -> None:
    """Register the locator; call before the kernels are defined (idempotent)."""
    from numba.core import caching, config

    # public names since numba 0.61, underscored before
    base = getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl

    class PackageCacheLocator(base):
        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = os.path.join(cache_dir(), self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            if config.CACHE_DIR or not _in_package(py_file):
                return None
            # skip the base's "only when NUMBA_CACHE_DIR is set" test; keep the writable-folder one
            return super(base, cls).from_function(py_func, py_file)

    impl._locator_classes.insert(0, PackageCacheLocator)
