"""Highly variable genes: a gene must vary in both datasets."""

from __future__ import annotations

import numpy as np

from napari_cellmapper.core.gene_selection import highly_variable


def test_overdispersed_genes_are_chosen_in_both_datasets():
    rng = np.random.default_rng(0)
    n_genes = 200
    means = [rng.uniform(0.5, 5, n_genes) for _ in range(2)]
    variances = [m * rng.uniform(0.9, 1.1, n_genes) for m in means]  # Poisson-like
    variances[0][:10] *= 20  # variable in both
    variances[1][:10] *= 20
    variances[0][10:20] *= 20  # variable in one only
    top = highly_variable(means, variances, 10)
    np.testing.assert_array_equal(top, np.arange(10))


def test_unexpressed_genes_are_never_chosen_and_result_is_sorted():
    means = [np.array([0.0, 1.0, 2.0, 3.0, 0.0, 5.0])] * 2
    variances = [np.array([0.0, 5.0, 2.0, 30.0, 0.0, 5.0])] * 2
    top = highly_variable(means, variances, 4)
    assert 0 not in top and 4 not in top and list(top) == sorted(top)
