"""Start-up: the package and the command line's --help import no engine; numba caches in the user's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ["anndata", "pandas", "numba", "scipy", "faiss", "spatialdata", "sklearn"]


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environ.update(env, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "statement",
    [
        "import napari_cellmapper",
        "from napari_cellmapper import cli; cli._build_parser().format_help()",
    ],
)
def test_light_imports(statement):
    loaded = json.loads(
        _run(f"import sys, json\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    )
    assert loaded == []


def test_lazy_names_still_resolve():
    out = _run(
        "import napari_cellmapper as n\n"
        "print(n.CellMapper.__module__, issubclass(n.CellMapperInputError, ValueError), bool(n.__version__),"
        " 'CellMapper' in dir(n))"
    )
    assert out == "napari_cellmapper.core.mapper True True True"


def _cache_path(**env: str) -> str:
    return _run(
        "from napari_cellmapper.core import sparse_product as kernels\n"
        "cached = [f for f in vars(kernels).values() if hasattr(getattr(f, '_cache', None), '_cache_path')]\n"
        "print(cached[0]._cache._cache_path)",
        **env,
    )


def test_numba_cache_goes_to_the_user_cache_dir(tmp_path):
    path = _cache_path(XDG_CACHE_HOME=str(tmp_path))
    assert Path(path).is_relative_to(tmp_path / "napari-cellmapper" / "numba")
    assert not Path(path).is_relative_to(SRC)


def test_numba_cache_dir_of_the_user_wins(tmp_path):
    path = _cache_path(XDG_CACHE_HOME=str(tmp_path / "xdg"), NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    assert Path(path).is_relative_to(tmp_path / "mine")
