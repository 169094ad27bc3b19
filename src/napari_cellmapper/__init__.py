"""napari-cellmapper: k-NN transfer of cell types, embeddings and expression onto spatial data.

The engine (:class:`CellMapper`) runs without Qt or napari; the napari plugin lives in
:mod:`napari_cellmapper.widgets` and is loaded by napari through ``napari.yaml``.
"""

from importlib.metadata import PackageNotFoundError, version

from napari_cellmapper.core.mapper import CellMapper
from napari_cellmapper.core.validation import CellMapperInputError

try:
    __version__ = version("napari-cellmapper")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["CellMapper", "CellMapperInputError", "__version__"]
