"""Reading references and spatial queries, writing annotated SpatialData."""
