"""Transfer of labels, numbers, embeddings and expression through a mapping matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from napari_cellmapper.core import transfer as T
from napari_cellmapper.core.progress import run_steps

# 4 query cells x 4 reference cells; row 2 unmapped, row 3 sees only an unlabelled reference cell
M = sparse.csr_matrix(
    np.array(
        [[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.6, 0.4], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=np.float32,
    )
)
CATS = pd.Index(["a", "b", "c"])
CODES = np.array([0, 1, 0, -1])  # reference cell 3 has no label


def _labels(matrix=M, codes=CODES, cats=CATS, **kw) -> T.LabelTransfer:
    return run_steps(T.iter_transfer_labels(matrix, codes, cats, **kw))


def test_label_probabilities_by_hand():
    res = _labels()
    np.testing.assert_allclose(
        res.probabilities,
        [[0.7, 0.3, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        atol=1e-6,
    )
    assert res.probabilities.dtype == np.float32
    np.testing.assert_array_equal(res.codes, [0, 0, -1, -1])
    np.testing.assert_allclose(res.confidence, [0.7, 1.0, 0.0, 0.0], atol=1e-6)
    h0 = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(3)
    np.testing.assert_allclose(res.entropy, [h0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(res.unmapped, [False, False, True, True])


def test_missing_reference_labels_are_ignored_not_counted():
    # row 1: 0.6 on a labelled 'a' cell, 0.4 on an unlabelled cell -> P(a) = 1, not 0.6
    res = _labels()
    assert res.probabilities[1, 0] == pytest.approx(1.0)
    assert res.probabilities[1].sum() == pytest.approx(1.0)


def test_predictions_use_explicit_unmapped_category():
    pred = _labels().predictions()
    assert isinstance(pred, pd.Categorical)
    assert list(pred.categories) == ["a", "b", "c", T.UNMAPPED]
    assert list(pred) == ["a", "a", "unmapped", "unmapped"]
    assert not pd.isna(pred).any()


def test_predictions_without_unmapped_keep_reference_categories():
    res = _labels(M[:2])
    pred = res.predictions()
    assert list(pred.categories) == ["a", "b", "c"]
    assert list(pred) == ["a", "a"]


def test_entropy_is_normalised():
    uniform = np.full((1, 4), 0.25, np.float32)
    onehot = np.array([[0, 1, 0, 0]], np.float32)
    half = np.array([[0.5, 0.5, 0, 0]], np.float32)
    cats = pd.Index(list("wxyz"))
    assert T.summarise_probabilities(uniform, cats).entropy[0] == pytest.approx(1.0, abs=1e-6)
    assert T.summarise_probabilities(onehot, cats).entropy[0] == pytest.approx(0.0, abs=1e-7)
    assert T.summarise_probabilities(half, cats).entropy[0] == pytest.approx(0.5, abs=1e-6)
    single = T.summarise_probabilities(np.array([[1.0]], np.float32), pd.Index(["only"]))
    assert single.entropy[0] == 0 and single.confidence[0] == 1


def test_label_transfer_chunked_equals_whole():
    rng = np.random.default_rng(0)
    dense = rng.random((37, 20)) * (rng.random((37, 20)) < 0.3)
    dense /= np.maximum(dense.sum(1, keepdims=True), 1e-12)
    m = sparse.csr_matrix(dense.astype(np.float32))
    codes = rng.integers(-1, 5, 20)
    cats = pd.Index(list("ABCDE"))
    whole = _labels(m, codes, cats)
    events = []
    chunked = run_steps(T.iter_transfer_labels(m, codes, cats, chunk_size=5), events.append)
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=1e-7)
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    assert [e.done for e in events] == [5, 10, 15, 20, 25, 30, 35, 37]
    # brute force
    onehot = np.zeros((20, 5))
    onehot[codes >= 0, codes[codes >= 0]] = 1
    raw = dense @ onehot
    totals = raw.sum(1, keepdims=True)
    expected = np.divide(raw, totals, out=np.zeros_like(raw), where=totals > 0)
    np.testing.assert_allclose(whole.probabilities, expected, atol=1e-6)


def test_category_codes():
    codes, cats = T.category_codes(pd.Series(["x", None, "y", "x"]))
    assert list(cats) == ["x", "y"]
    np.testing.assert_array_equal(codes, [0, -1, 1, 0])
    assert codes.dtype == np.int64
    ordered = pd.Series(pd.Categorical(["z", "a"], categories=["z", "m", "a"]))
    codes, cats = T.category_codes(ordered)
    assert list(cats) == ["z", "m", "a"]
    np.testing.assert_array_equal(codes, [0, 2])


def test_numeric_weighted_mean_ignores_missing():
    values = np.array([1.0, 2.0, np.nan, 4.0])
    out = T.transfer_numeric(M, values)
    # row 0: (0.5*1 + 0.3*2) / 0.8 ; row 1: only cell 3 has a value ; row 2: unmapped -> 0
    np.testing.assert_allclose(out, [1.1 / 0.8, 4.0, 0.0, 4.0], rtol=1e-6)
    assert out.dtype == np.float32


def test_dense_embedding_is_m_dot_y():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(4, 3))
    out = run_steps(T.iter_transfer_dense(M, y, chunk_size=3))
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, M.toarray().astype(np.float64) @ y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[2], 0)


def test_sparse_expression_gives_sparse_csr():
    x = sparse.random(4, 30, density=0.3, random_state=3, format="csc", dtype=np.float64)
    out = run_steps(T.iter_transfer_expression(M, x, chunk_size=3))
    assert sparse.issparse(out) and out.format == "csr"
    assert out.dtype == np.float32 and out.shape == (4, 30)
    np.testing.assert_allclose(out.toarray(), (M @ x).toarray(), rtol=1e-5, atol=1e-7)


def test_dense_expression_gives_dense():
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    out = run_steps(T.iter_transfer_expression(M, x))
    assert isinstance(out, np.ndarray) and not sparse.issparse(out)
    np.testing.assert_allclose(out, M.toarray() @ x, rtol=1e-6)


def test_empty_query_expression():
    empty = sparse.csr_matrix((0, 4), dtype=np.float32)
    out = run_steps(T.iter_transfer_expression(empty, sparse.csr_matrix(np.ones((4, 3)))))
    assert sparse.issparse(out) and out.shape == (0, 3)


def test_reference_category_named_unmapped():
    cats = pd.Index(["B", T.UNMAPPED])
    res = _labels(M, np.array([0, 1, 0, -1]), cats)
    pred = res.predictions()
    assert pred.categories.is_unique
    assert list(pred) == ["B", "B", "unmapped", "unmapped"]


def test_predictions_below_min_confidence_are_unassigned():
    pred = _labels().predictions(min_confidence=0.8)  # row 0 has confidence 0.7, row 1 has 1.0
    assert list(pred) == ["unassigned", "a", "unmapped", "unmapped"]
    assert list(pred.categories) == ["a", "b", "c", T.UNMAPPED, T.UNASSIGNED]
    assert list(_labels(M[:2]).predictions(min_confidence=0.5).categories) == ["a", "b", "c"]


def test_mix_probabilities_matches_the_numpy_steps():
    from napari_cellmapper.core.calibration import apply_temperature

    rng = np.random.default_rng(0)
    knn = rng.dirichlet(np.ones(4), 50).astype(np.float32)
    knn[3] = 0  # unmapped
    knn[4] = [1, 0, 0, 0]
    head = rng.dirichlet(np.ones(4), 50).astype(np.float32)
    res = T.mix_probabilities(knn, head, 0.3, 1.7, pd.Index(list("abcd")))
    from napari_cellmapper.core.label_head import pool

    mixed = pool(knn, head, 0.3)
    assert np.all(mixed[3] == 0)
    expected = T.summarise_probabilities(
        apply_temperature(mixed, 1.7).astype(np.float32), pd.Index(list("abcd"))
    )
    np.testing.assert_allclose(res.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_allclose(res.confidence, expected.confidence, atol=1e-5)
    np.testing.assert_allclose(res.entropy, expected.entropy, atol=1e-5)
    np.testing.assert_array_equal(res.codes, expected.codes)
    assert res.codes[3] == -1 and res.entropy[3] == 1
    plain = T.mix_probabilities(knn, None, 0.5, 1.0, pd.Index(list("abcd")))
    np.testing.assert_allclose(
        plain.probabilities, T.summarise_probabilities(knn, pd.Index(list("abcd"))).probabilities, atol=1e-6
    )
