"""Linked selection between the tissue and the reference embedding (pure NumPy, no Qt).

A query cell is linked to its k reference neighbours (the mapping's k-NN). From the tissue to the
reference: the neighbours of the selected cells. From the reference to the tissue: the cells
"mapped there", i.e. whose neighbours lie mostly (at least ``min_fraction`` of the valid ones)
in the selected reference cells. Both run in one vectorised pass (about 0.1 s for 1M x 30).
"""

from __future__ import annotations

import numpy as np

#: a query cell is mapped into a reference selection when this share of its neighbours lies in it
MIN_FRACTION = 0.5


def neighbours_of(
    neighbor_indices: np.ndarray, mapped_rows: np.ndarray, table_rows: np.ndarray
) -> np.ndarray:
    """Reference rows (sorted, unique) among the neighbours of the given query table rows.

    ``neighbor_indices`` is ``(len(mapped_rows), k)``, row ``i`` for table row ``mapped_rows[i]``,
    ``-1`` where a neighbour is missing.
    """
    where = _positions(mapped_rows, table_rows)
    found = np.asarray(neighbor_indices)[where].ravel()
    return np.unique(found[found >= 0])


def mapped_into(
    neighbor_indices: np.ndarray,
    mapped_rows: np.ndarray,
    reference_selected: np.ndarray,
    min_fraction: float = MIN_FRACTION,
) -> np.ndarray:
    """Query table rows (sorted) whose neighbours lie mostly in the selected reference cells
    (``reference_selected``: boolean mask over the reference)."""
    indices = np.asarray(neighbor_indices)
    if indices.size == 0:
        return np.empty(0, dtype=np.int64)
    # one gather: a missing neighbour (-1) reads the extra False at the end
    selected = np.append(np.asarray(reference_selected, dtype=bool), False)
    hits = np.count_nonzero(selected[indices], axis=1)
    n_valid = np.count_nonzero(indices >= 0, axis=1) if indices.min() < 0 else indices.shape[1]
    inside = (hits >= min_fraction * n_valid) & (hits > 0)
    return np.sort(np.asarray(mapped_rows, dtype=np.int64)[inside])


def _positions(mapped_rows: np.ndarray, table_rows: np.ndarray) -> np.ndarray:
    """Positions in ``mapped_rows`` of those ``table_rows`` that were mapped."""
    mapped_rows = np.asarray(mapped_rows, dtype=np.int64)
    table_rows = np.asarray(table_rows, dtype=np.int64)
    lookup = np.full(max(mapped_rows.max(initial=-1), table_rows.max(initial=-1)) + 1, -1, dtype=np.int64)
    lookup[mapped_rows] = np.arange(len(mapped_rows))
    where = lookup[table_rows]
    return where[where >= 0]
