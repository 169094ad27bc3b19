"""The reference embedding in its own canvas, linked both ways to the tissue."""

from napari_cellmapper.widgets.embedding.panel import EmbeddingView

__all__ = ["EmbeddingView"]
