"""The closed-form LDA head and its combination with the k-NN probabilities."""

from __future__ import annotations

import numpy as np
from _core_fixtures import clustered

from napari_cellmapper.core import label_head as H


def test_lda_separates_clusters_and_gives_absent_classes_nothing():
    ref, qry, lr, lq = clustered(600, 300, 10, 4, seed=1, spread=3.0)
    head = H.fit_lda(ref, lr, n_classes=5)  # class 4 has no reference cell
    proba = head.probabilities(qry)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert np.all(proba[:, 4] == 0)
    assert np.mean(proba.argmax(axis=1) == lq) > 0.95


def test_lda_ignores_unlabelled_cells_and_subsamples(monkeypatch):
    ref, qry, lr, lq = clustered(800, 200, 6, 3, seed=2)
    codes = lr.copy()
    codes[::2] = -1
    monkeypatch.setattr(H, "MAX_CELLS", 100)
    head = H.fit_lda(ref, codes, n_classes=3)
    assert np.mean(head.probabilities(qry).argmax(axis=1) == lq) > 0.9


def test_combine_keeps_unmapped_rows_zero():
    knn = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    head = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    out = H.combine(knn, head, 0.25)
    np.testing.assert_allclose(out, [[0.75, 0.25], [0.0, 0.0]])
