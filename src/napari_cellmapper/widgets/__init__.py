"""napari dock widgets: the CellMapper widget, the frozen job and the worker controller.

``mapper.CellMapperWidget`` is the dock widget (one folder per dock panel: ``mapper``, ``qc``,
``embedding``, ``curation``), ``job`` holds the frozen
``MappingJob``/``MappingResult`` and the worker body, ``controller`` runs workers and applies
results on the main thread, ``_npe2`` the reader/writer/sample-data entry points, ``demo`` the demo.
"""
