"""tools/kill_loop.py in small: random SIGKILLs over the exports lose nothing and leave no staging."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "kill_loop.py"


@pytest.mark.slow
def test_kill_loop(tmp_path, monkeypatch):
    import os

    src = str(TOOL.parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    spec = importlib.util.spec_from_file_location("kill_loop", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = "stream-new,stream-overwrite,in-place,h5ad-overwrite"
    assert module.main(["--rounds", "4", "--max-delay", "4", "--kinds", kinds, "--dir", str(tmp_path)]) == 0
