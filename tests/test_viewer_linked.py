"""Linked selection: tissue cells to their reference neighbours, reference cells to the query."""

from __future__ import annotations

import numpy as np

from napari_cellmapper.viewer.linked import mapped_into, neighbours_of, valid_counts


def test_both_directions_on_a_small_case():
    mapped_rows = np.array([0, 2, 3, 5])  # rows 1 and 4 of the table were not mapped
    neighbours = np.array([[0, 1, 2], [2, 3, -1], [4, 4, 4], [-1, -1, -1]])
    assert neighbours_of(neighbours, mapped_rows, [2, 0]).tolist() == [0, 1, 2, 3]
    assert neighbours_of(neighbours, mapped_rows, [1, 4, 5]).tolist() == []  # unmapped or no neighbour
    selected = np.zeros(6, dtype=bool)
    selected[[2, 3]] = True
    # row 2: both valid neighbours inside; row 0: one of three; row 5: no neighbour at all
    assert mapped_into(neighbours, mapped_rows, selected).tolist() == [2]
    assert mapped_into(neighbours, mapped_rows, selected, min_fraction=0.3).tolist() == [0, 2]


def test_a_million_cells_in_one_pass():
    rng = np.random.default_rng(0)
    n, k, n_ref = 1_000_000, 30, 200_000
    neighbours = rng.integers(0, n_ref, (n, k))
    selected = np.zeros(n_ref, dtype=bool)
    selected[: n_ref // 10] = True
    out = mapped_into(neighbours, np.arange(n), selected, min_fraction=0.05)
    expected = np.flatnonzero((neighbours < n_ref // 10).sum(1) >= 0.05 * k)
    np.testing.assert_array_equal(out, expected)
    assert len(neighbours_of(neighbours, np.arange(n), np.arange(1000))) > 10_000


def test_missing_neighbours_counted_per_table():
    """Missing neighbours (-1) do not count; counts handed in by the caller are used as given."""
    rows = np.arange(3)
    selected = np.array([True, False, False])
    full = np.array([[0, 1], [0, 0], [1, 2]])
    missing = np.array([[0, -1], [0, 0], [1, -1]])
    assert valid_counts(full) == 2
    np.testing.assert_array_equal(valid_counts(missing), [1, 2, 1])
    for valid in (None, valid_counts(full)):
        assert mapped_into(full, rows, selected, valid=valid).tolist() == [0, 1]
        assert mapped_into(full, rows, selected, min_fraction=1.0, valid=valid).tolist() == [1]
    for valid in (None, valid_counts(missing)):
        assert mapped_into(missing, rows, selected, min_fraction=1.0, valid=valid).tolist() == [0, 1]
    assert mapped_into(missing, rows, np.array([False, True, False])).tolist() == [2]
