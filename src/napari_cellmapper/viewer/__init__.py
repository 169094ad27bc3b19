"""napari layer data from mapping results: geometry, transforms, colours, legends.

Modules here turn SpatialData elements and annotated tables into napari layers; they never run a
mapping. ``points.py`` draws many cells fast; ``spatial_layers.py`` draws images, shapes and labels
with their coordinate transformations; ``selection.py`` answers clicks and regions.
"""
