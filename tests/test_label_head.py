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
    np.testing.assert_allclose(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[0].sum(), 1.0, rtol=1e-6)
    absent = H.combine(np.array([[0.6, 0.4, 0.0]]), np.array([[0.5, 0.5, 0.0]]), 0.25)
    assert absent[0, 2] == 0  # a class neither gives anything stays 0


def test_pool_is_the_weighted_geometric_mean_with_the_knn_floor():
    rng = np.random.default_rng(0)
    knn = rng.dirichlet(np.ones(5), 20)
    knn[:, 4] = 0  # no k-NN vote for class 4, the head gives it some
    knn /= knn.sum(axis=1, keepdims=True)
    head = rng.dirichlet(np.ones(5), 20)
    out = H.pool(knn, head, 0.3)
    expected = (knn + H.KNN_FLOOR) ** 0.7 * head**0.3
    np.testing.assert_allclose(out, expected / expected.sum(axis=1, keepdims=True), rtol=1e-10)
    np.testing.assert_array_equal(H.pool(knn, head, 0.0), knn)


def test_pool_lets_a_clear_vote_stand_where_the_mean_would_not():
    # a confident k-NN vote against a near-one-hot head: the arithmetic mean at weight 0.5 follows
    # the head, the pool the vote; a split vote is settled by the head
    knn = np.array([[0.8, 0.2], [0.5, 0.5]])
    head = np.array([[0.05, 0.95], [0.2, 0.8]])
    assert H.pool(knn, head, 0.25).argmax(axis=1).tolist() == [0, 1]
    assert (0.5 * knn + 0.5 * head).argmax(axis=1).tolist() == [1, 1]


def _shifted(seed: int = 3):
    """Three classes whose query is the reference stretched, tightened and shifted (a platform):
    the reference-only LDA puts its decision boundaries in the wrong place for the query."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    lr, lq = rng.integers(0, 3, 900), rng.integers(0, 3, 600)
    ref = (centres[lr] + rng.normal(size=(900, 2))).astype(np.float32)
    qry = (centres[lq] * 1.3 + rng.normal(size=(600, 2)) * 0.8 + 1.2).astype(np.float32)
    return ref, qry, lr, lq


def test_self_trained_uses_only_confident_labelled_query_cells():
    ref, qry, lr, lq = _shifted()
    codes = lq.copy()
    codes[:100] = -1  # unmapped query cells never train
    confidence = np.full(lq.size, 0.95)
    confidence[100:300] = 0.5  # nor do unsure ones
    head, used = H.self_trained(ref, lr, qry, codes, confidence, 3, 0.9)
    assert used == 300  # rows 300-599: labelled and confident
    by_hand = H.fit_lda(
        np.vstack([ref, qry[300:]]),
        np.concatenate([lr, lq[300:]]),
        n_classes=3,
        shrinkage=H.SELF_TRAINED_SHRINKAGE,
    )
    np.testing.assert_allclose(head.coef, by_hand.coef, rtol=1e-5)
    np.testing.assert_allclose(head.intercept, by_hand.intercept, rtol=1e-5)
    assert H.self_trained(ref, lr, qry, codes, np.zeros(lq.size), 3, 0.9) == (None, 0)


def test_self_training_moves_the_head_towards_the_query():
    ref, qry, lr, lq = _shifted()
    before = H.fit_lda(ref, lr, n_classes=3)
    proba = before.probabilities(qry)
    after, _ = H.self_trained(ref, lr, qry, proba.argmax(axis=1), proba.max(axis=1), 3, 0.9)
    acc_before = np.mean(proba.argmax(axis=1) == lq)
    acc_after = np.mean(after.probabilities(qry).argmax(axis=1) == lq)
    assert acc_after > acc_before + 0.05, (acc_before, acc_after)  # measured 0.77-0.82 -> 0.90-0.93


def test_self_trained_draws_rows_as_fit_lda_does_without_stacking_everything(monkeypatch):
    ref, qry, lr, lq = _shifted(seed=5)
    codes = lr.copy()
    codes[::3] = -1
    confidence = np.linspace(0.5, 1.0, lq.size)
    monkeypatch.setattr(H, "MAX_CELLS", 300)  # fewer than the rows that qualify: a draw
    head, _ = H.self_trained(ref, codes, qry, lq, confidence, 3, 0.8)
    keep = confidence >= 0.8
    stacked = H.fit_lda(
        np.vstack([ref, qry[keep]]),
        np.concatenate([codes, lq[keep]]),
        n_classes=3,
        shrinkage=H.SELF_TRAINED_SHRINKAGE,
    )
    np.testing.assert_allclose(head.coef, stacked.coef, rtol=1e-5)
    np.testing.assert_allclose(head.intercept, stacked.intercept, rtol=1e-5)
