"""The Label QC dock panel: ``panel.QCWidget`` (Qt) and ``plots`` (matplotlib figures, PNG export)."""
