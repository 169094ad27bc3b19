"""Several regions in one run: rows kept, positions side by side, a group per row."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_cellmapper.viewer.samples import side_by_side


def test_regions_never_neighbour_each_other():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 100, (50, 2)), rng.uniform(0, 100, (40, 2))  # overlapping slides
    samples = side_by_side(["slide_a", "slide_b"], [np.arange(50), np.arange(50, 90)], [a, b])
    assert samples.rows.tolist() == list(range(90))
    assert samples.groups.tolist() == ["slide_a"] * 50 + ["slide_b"] * 40
    np.testing.assert_allclose(np.diff(samples.coords_yx[:50], axis=0), np.diff(a, axis=0))  # shapes kept
    _, near = cKDTree(samples.coords_yx).query(samples.coords_yx, k=15)
    assert (samples.groups[near] == samples.groups[:, None]).all()  # no neighbour across slides
    with pytest.raises(ValueError, match="No region"):
        side_by_side([], [], [])
