"""The curation dock panel: select cells, give them a label, undo and redo."""

from napari_cellmapper.widgets.curation.panel import CurationWidget

__all__ = ["CurationWidget"]
