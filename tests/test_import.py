"""The engine imports without Qt, napari or magicgui."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CORE_MODULES = [
    "napari_cellmapper",
    "napari_cellmapper.core",
    "napari_cellmapper.core.progress",
    "napari_cellmapper.core.validation",
    "napari_cellmapper.core.search.neighbors",
    "napari_cellmapper.core.search.faiss_index",
    "napari_cellmapper.core.kernels",
    "napari_cellmapper.core.transfer",
    "napari_cellmapper.core.joint_embedding",
    "napari_cellmapper.core.palettes",
    "napari_cellmapper.core.mapper",
]
FORBIDDEN = ["qtpy", "napari", "PyQt6", "PyQt5", "PySide6", "magicgui"]


def test_core_imports_without_gui_modules():
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "import napari_cellmapper\n"
        "assert napari_cellmapper.CellMapper.__module__ == 'napari_cellmapper.core.mapper'\n"
        "assert issubclass(napari_cellmapper.CellMapperInputError, ValueError)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"GUI modules imported by the core: {loaded}"


def test_forbidden_check_can_fail():
    """The subprocess check does see a module that was imported (guards against a vacuous test)."""
    code = (
        "import sys, json; sys.modules['magicgui'] = json; "
        "print(json.dumps(sorted(m for m in ['magicgui'] if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout.strip()) == ["magicgui"]


_PACKAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "napari_cellmapper"
)
# what each layer may import of the package (data flows io -> core -> viewer -> widgets; io calls core)
_MAY_IMPORT = {
    "core": {"core"},
    "io": {"core", "io"},
    "viewer": {"core", "io", "viewer"},
}


def _package_imports(path: str) -> set[str]:
    """The napari_cellmapper sub-packages a module imports (top-level or inside functions)."""
    import ast

    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if (
                parts[0] == "napari_cellmapper"
                and len(parts) > 1
                and parts[1] in {"core", "io", "viewer", "widgets"}
            ):
                found.add(parts[1])
    return found


def test_layers_import_only_downstream():
    wrong = []
    for layer, allowed in _MAY_IMPORT.items():
        folder = os.path.join(_PACKAGE, layer)
        for root, _dirs, files in os.walk(folder):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    extra = _package_imports(path) - allowed
                    if extra:
                        wrong.append(f"{os.path.relpath(path, _PACKAGE)} imports {sorted(extra)}")
    assert wrong == []


def test_layer_check_sees_an_upstream_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from napari_cellmapper.io.atomic import commit\n")
    assert _package_imports(str(module)) == {"io"}
