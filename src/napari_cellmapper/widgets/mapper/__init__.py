"""The CellMapper dock panel: ``panel.CellMapperWidget`` (data, mapping, display, export),
``advanced_options`` (the folded form of every other mapping option) and ``legend`` (the colour key)."""

from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

__all__ = ["CellMapperWidget"]
