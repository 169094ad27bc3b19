"""napari-cellmapper: k-NN transfer of cell types, embeddings and expression onto spatial data.

The engine (:class:`CellMapper`) runs without Qt or napari; the napari plugin lives in
:mod:`napari_cellmapper.widgets` and is loaded by napari through ``napari.yaml``. The names below
are imported on first use (PEP 562), so that ``import napari_cellmapper`` and the command line's
``--help`` do not pay for anndata, pandas and numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_cellmapper.core.mapper import CellMapper
    from napari_cellmapper.core.validation import CellMapperInputError

_LAZY = {
    "CellMapper": "napari_cellmapper.core.mapper",
    "CellMapperInputError": "napari_cellmapper.core.validation",
}
__all__ = ["CellMapper", "CellMapperInputError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("napari-cellmapper")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0+unknown"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
