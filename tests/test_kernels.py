"""Kernels against hand-computed cases; mapping-matrix invariants; unmapped rows; no underflow."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from napari_cellmapper import CellMapperInputError
from napari_cellmapper.core import kernels as K
from napari_cellmapper.core.search.neighbors import Neighbors, search

INDICES = np.array([[0, 1, 2], [3, 4, 0]])
DIST = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 2.0]], dtype=np.float32)


def _nbrs(indices=INDICES, dist=DIST, n_ref=5) -> Neighbors:
    return Neighbors(np.asarray(indices, np.int64), np.asarray(dist, np.float32), "euclidean", "test", n_ref)


def _norm(w):
    w = np.asarray(w, dtype=np.float64)
    return w / w.sum(axis=1, keepdims=True)


def _dense_rows(m, indices=INDICES):
    """Per-edge weights read back out of the CSR at the neighbour columns."""
    dense = m.toarray()
    return np.take_along_axis(dense, np.asarray(indices), axis=1)


def test_gauss_global_sigma_hand_computed():
    # sigma = mean of all six distances = 9/6 = 1.5 ; 2 sigma^2 = 4.5
    m = K.mapping_matrix(_nbrs(), "gauss")
    expected = _norm(np.exp(-(DIST.astype(np.float64) ** 2) / 4.5))
    np.testing.assert_allclose(_dense_rows(m), expected, rtol=1e-5)
    np.testing.assert_allclose(_dense_rows(m)[0], [0.594378, 0.305164, 0.100458], atol=2e-6)


def test_gauss_adaptive_row_sigma_hand_computed():
    # sigma_0 = 2, sigma_1 = 1
    m = K.mapping_matrix(_nbrs(), "gauss_adaptive")
    d = DIST.astype(np.float64)
    expected = _norm(np.exp(-(d**2) / (2 * np.array([[2.0], [1.0]]) ** 2)))
    np.testing.assert_allclose(_dense_rows(m), expected, rtol=1e-5)
    # differs from the global sigma: the two kernels must not coincide
    assert not np.allclose(_dense_rows(m), _dense_rows(K.mapping_matrix(_nbrs(), "gauss")), atol=1e-3)


def test_scarches_hand_computed():
    # row 0: population std sqrt(2/3) -> s = (2/std)^2 = 6 ; row 1: std = sqrt(0.5) -> s = 8
    m = K.mapping_matrix(_nbrs(), "scarches")
    d = DIST.astype(np.float64)
    expected = _norm(np.exp(-d / np.array([[6.0], [8.0]])))
    np.testing.assert_allclose(_dense_rows(m), expected, rtol=1e-5)
    np.testing.assert_allclose(_dense_rows(m)[0], [0.390166, 0.330268, 0.279566], atol=2e-6)


def test_inverse_distance_hand_computed():
    m = K.mapping_matrix(_nbrs(), "inverse_distance")
    expected = _norm(1.0 / (DIST.astype(np.float64) + 1e-8))
    np.testing.assert_allclose(_dense_rows(m), expected, rtol=1e-5)
    np.testing.assert_allclose(_dense_rows(m)[0], [6 / 11, 3 / 11, 2 / 11], rtol=1e-5)


def test_inverse_distance_zero_distance_is_finite():
    m = K.mapping_matrix(_nbrs([[0, 1]], [[0.0, 1.0]], 2), "inverse_distance")
    row = m.toarray()[0]
    assert np.all(np.isfinite(row))
    np.testing.assert_allclose(row, [1e8 / (1e8 + 1), 1 / (1e8 + 1)], rtol=1e-5)


def test_equal_kernel():
    m = K.mapping_matrix(_nbrs(), "equal")
    np.testing.assert_allclose(_dense_rows(m), np.full((2, 3), 1 / 3), rtol=1e-6)


# ---------------------------------------------------------------- hnoca (jaccard square)

REF_GRAPH = np.array([[0, 1, 2], [1, 3, 4], [2, 0, 1], [3, 4, 1], [4, 3, -1]])
Q_IDX = np.array([[0, 1], [3, 2], [4, 3]])


def _ref_nbrs(indices=REF_GRAPH):
    indices = np.asarray(indices, np.int64)
    dist = np.where(indices >= 0, np.arange(indices.shape[1], dtype=np.float32), np.inf).astype(np.float32)
    return Neighbors(indices, dist, "euclidean", "test", indices.shape[0])


def _brute_hnoca(q_idx, ref_graph):
    out = np.zeros(q_idx.shape, dtype=np.float64)
    for i, row in enumerate(q_idx):
        ni = {int(j) for j in row if j >= 0}
        for c, j in enumerate(row):
            if j < 0:
                continue
            nj = {int(x) for x in ref_graph[j] if x >= 0}
            s = len(ni & nj)
            out[i, c] = (s / (len(ni) + len(nj) - s)) ** 2
    return out


def test_hnoca_tiny_case_by_hand():
    q = _nbrs(Q_IDX, np.array([[0.1, 0.2]] * 3), n_ref=5)
    w = K.kernel_weights(q, "hnoca", reference_neighbors=_ref_nbrs())
    # q0: N={0,1}; j=0: s=2 -> (2/3)^2 ; j=1: N_1={1,3,4}, s=1 -> (1/4)^2
    # q1: N={3,2}; j=3: s=1 -> (1/4)^2 ; j=2: s=1 -> (1/4)^2
    # q2: N={4,3}; j=4: N_4={4,3} (one hole), s=2 -> 1 ; j=3: s=2 -> (2/3)^2
    hand = np.array([[4 / 9, 1 / 16], [1 / 16, 1 / 16], [1.0, 4 / 9]])
    np.testing.assert_allclose(w, hand, rtol=1e-6)
    np.testing.assert_allclose(w, _brute_hnoca(Q_IDX, REF_GRAPH), rtol=1e-6)
    m = K.mapping_matrix(q, "hnoca", reference_neighbors=_ref_nbrs())
    np.testing.assert_allclose(_dense_rows(m, Q_IDX)[0], [0.876712, 0.123288], atol=1e-6)


def test_hnoca_matches_brute_force_on_random_graph():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(60, 3)).astype(np.float32)
    qry = rng.normal(size=(25, 3)).astype(np.float32)
    q = search(qry, ref, 6, backend="faiss-exact")
    r = search(ref, ref, 5, backend="faiss-exact")
    assert np.all(r.indices[:, 0] == np.arange(60))  # the reference graph includes each cell itself
    w = K.kernel_weights(q, "hnoca", reference_neighbors=r)
    np.testing.assert_allclose(w, _brute_hnoca(q.indices, r.indices), rtol=1e-6)
    assert np.all(w > 0)  # j is in both N_i and N_j


def test_hnoca_chunking(monkeypatch):
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(40, 3)).astype(np.float32)
    qry = rng.normal(size=(30, 3)).astype(np.float32)
    q = search(qry, ref, 4, backend="faiss-exact")
    r = search(ref, ref, 4, backend="faiss-exact")
    whole = K.kernel_weights(q, "hnoca", reference_neighbors=r)
    monkeypatch.setattr(K, "_HNOCA_CHUNK", 7)
    np.testing.assert_array_equal(K.kernel_weights(q, "hnoca", reference_neighbors=r), whole)


def test_hnoca_needs_reference_graph():
    with pytest.raises(CellMapperInputError, match="reference_neighbors"):
        K.mapping_matrix(_nbrs(), "hnoca")
    wrong = _ref_nbrs(REF_GRAPH[:3])
    with pytest.raises(CellMapperInputError, match="5 rows"):
        K.mapping_matrix(_nbrs(), "hnoca", reference_neighbors=wrong)


def test_unknown_kernel_raises():
    with pytest.raises(CellMapperInputError, match=r"Unknown kernel 'gaussian'"):
        K.mapping_matrix(_nbrs(), "gaussian")


# ---------------------------------------------------------------- matrix invariants

ALL_KERNELS = ["gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal", "hnoca"]


def _random_case(seed=0, n_q=50, n_r=80, k=7):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_r, 4)).astype(np.float32)
    qry = rng.normal(size=(n_q, 4)).astype(np.float32)
    q = search(qry, ref, k, backend="faiss-exact")
    # punch holes: one fully unmapped row, one partly usable row
    ind, dist = q.indices.copy(), q.distances.copy()
    ind[3], dist[3] = -1, np.inf
    ind[5, 4:], dist[5, 4:] = -1, np.inf
    q = Neighbors(ind, dist, "euclidean", "faiss-exact", n_r)
    return q, search(ref, ref, k, backend="faiss-exact")


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_mapping_matrix_invariants(kernel):
    q, r = _random_case()
    m = K.mapping_matrix(q, kernel, reference_neighbors=r)
    assert sparse.issparse(m) and m.format == "csr"
    assert m.dtype == np.float32
    assert m.shape == (50, 80)
    assert np.all(np.isfinite(m.data)) and np.all(m.data >= 0)
    sums = np.asarray(m.sum(axis=1)).ravel()
    unmapped = K.unmapped_rows(m)
    np.testing.assert_array_equal(np.flatnonzero(unmapped), [3])
    np.testing.assert_allclose(sums[~unmapped], 1.0, rtol=1e-5)
    assert sums[3] == 0
    # only real neighbours carry weight; row 5 uses its 4 usable edges only
    assert set(m[5].indices) <= set(q.indices[5, :4])
    dense = m.toarray()
    assert np.all(dense[q.adjacency().toarray() == 0] == 0)


def test_all_unmapped_rows_reported():
    q = _nbrs([[-1, -1], [0, -1]], [[np.inf, np.inf], [1.0, np.inf]], n_ref=3)
    for kernel in ["gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal"]:
        m = K.mapping_matrix(q, kernel)
        np.testing.assert_array_equal(K.unmapped_rows(m), [True, False])
        np.testing.assert_allclose(m.toarray(), [[0, 0, 0], [1, 0, 0]])


def test_gauss_distant_cell_does_not_underflow():
    """A query cell far from everything keeps a finite, normalised row under the global gauss kernel."""
    rng = np.random.default_rng(0)
    n, k = 200, 5
    dist = np.sort(rng.uniform(0.5, 1.5, size=(n, k)), axis=1)
    dist[0] = [1000.0, 1002.0, 1005.0, 1010.0, 1020.0]  # exp(-1000^2 / 2 sigma^2) == 0 in any float
    dist[1] = [1e5, 1e5, 2e5, 3e5, 4e5]
    dist = dist.astype(np.float32)
    ind = np.tile(np.arange(k), (n, 1))
    m = K.mapping_matrix(_nbrs(ind, dist, n_ref=k), "gauss")
    dense = m.toarray()
    assert np.all(np.isfinite(dense))
    assert not K.unmapped_rows(m).any()
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-5)
    # the row still follows the kernel: softmax of -d^2 / (2 sigma^2), computed stably in float64
    sigma = dist.astype(np.float64).mean()
    logits = -(dist[0].astype(np.float64) ** 2) / (2 * sigma**2)
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    np.testing.assert_allclose(dense[0], expected, atol=1e-5)
    np.testing.assert_allclose(dense[1], [0.5, 0.5, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("kernel", ["gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal"])
def test_no_nan_on_degenerate_rows(kernel):
    # identical distances (sigma / std of zero) and all-zero distances
    q = _nbrs([[0, 1, 2], [1, 2, 0], [2, 0, 1]], [[0, 0, 0], [2, 2, 2], [0, 1, 1]], n_ref=3)
    dense = K.mapping_matrix(q, kernel).toarray()
    assert not np.isnan(dense).any()
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(dense[0], 1 / 3, rtol=1e-5)
    np.testing.assert_allclose(dense[1], 1 / 3, rtol=1e-5)


def test_normalise_rows_and_weights_to_csr():
    w = np.array([[1.0, 3.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(K.normalise_rows(w), [[0.25, 0.75], [0, 0]])
    q = _nbrs([[2, 0], [1, 2]], [[1, 2], [1, 2]], n_ref=3)
    m = K.weights_to_csr(q, K.normalise_rows(w))
    np.testing.assert_allclose(m.toarray(), [[0.75, 0, 0.25], [0, 0, 0]])
    assert m.nnz == 2


def test_scarches_is_translation_invariant_for_large_distances():
    """exp(-d/s) normalised per row and s from std(d) do not change when all distances shift by c.

    Distances of 1e4 are ordinary for unscaled representations (e.g. use_rep="X" on counts).
    """
    base = np.array([[0.0, 1.0, 2.0]])
    ref_row = K.mapping_matrix(_nbrs([[0, 1, 2]], base, 3), "scarches").toarray()
    far = K.mapping_matrix(_nbrs([[0, 1, 2]], base + 1e4, 3), "scarches").toarray()
    np.testing.assert_allclose(far, ref_row, atol=1e-4)


def test_scarches_huge_distances_do_not_give_empty_row():
    q = _nbrs([[0, 1, 2]], [[1e20, 2e20, 3e20]], 3)
    m = K.mapping_matrix(q, "scarches")
    assert not K.unmapped_rows(m).any()
    np.testing.assert_allclose(m.sum(), 1.0, rtol=1e-5)


def test_global_sigma_and_fixed_sigma():
    q = _nbrs([[0, 1], [1, -1]], [[1.0, 3.0], [2.0, np.inf]], n_ref=2)
    assert K.global_sigma(q) == pytest.approx(2.0)  # mean of the finite distances only
    empty = _nbrs([[-1]], [[np.inf]], n_ref=1)
    assert K.global_sigma(empty) == 1.0
    m = K.mapping_matrix(_nbrs(), "gauss", sigma=0.5)
    expected = _norm(np.exp(-(DIST.astype(np.float64) ** 2) / 0.5))
    np.testing.assert_allclose(_dense_rows(m), expected, rtol=1e-5, atol=1e-7)
    # sigma only affects the gauss kernel result when it differs from the default
    default = K.mapping_matrix(_nbrs(), "gauss", sigma=K.global_sigma(_nbrs()))
    np.testing.assert_allclose(default.toarray(), K.mapping_matrix(_nbrs(), "gauss").toarray(), rtol=1e-6)


@pytest.mark.parametrize("sigma", [None, 0.7, 0.0])
def test_gauss_one_pass_equals_the_numpy_kernel(sigma):
    """mapping_matrix's one-pass gauss kernel gives the weights of kernel_weights + normalise_rows,
    with missing neighbours, infinite distances, all-unusable rows and sigma 0 (equal weights)."""
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 50, (200, 12))
    dist = rng.gamma(2.0, 1.0, (200, 12)).astype(np.float32)
    indices[rng.random((200, 12)) < 0.1] = -1
    dist[rng.random((200, 12)) < 0.05] = np.inf
    indices[7] = -1  # an unmapped row
    nbrs = Neighbors(indices, dist, "euclidean", "test", 50)
    expected = K.normalise_rows(K.kernel_weights(nbrs, "gauss", sigma=sigma))
    m = K.mapping_matrix(nbrs, "gauss", sigma=sigma)
    keep = expected > 0
    np.testing.assert_allclose(m.data, expected[keep], rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(m.indices, indices[keep])
    assert K.unmapped_rows(m)[7]
    usable = (indices >= 0) & np.isfinite(dist)
    assert K.global_sigma(nbrs) == pytest.approx(float(dist[usable].astype(np.float64).mean()), rel=1e-12)
