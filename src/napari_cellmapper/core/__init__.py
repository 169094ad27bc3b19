"""The mapping engine: pure NumPy/SciPy/AnnData, no Qt, no napari."""
