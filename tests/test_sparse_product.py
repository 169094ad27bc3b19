"""The parallel sparse product against scipy's."""

import numpy as np
import pytest
from scipy import sparse

from napari_cellmapper.core import sparse_product as sp
from napari_cellmapper.core.progress import run_steps


@pytest.fixture(autouse=True)
def _always_kernels(monkeypatch):
    """The products here are small: run them on the kernels all the same."""
    monkeypatch.setattr(sp, "SMALL_PRODUCT", 0)


def _product(matrix, x, chunk_size):
    """The product and the rows done after each block (the stage's opening event left out)."""
    done = []
    out = run_steps(
        sp.iter_product(matrix, x, chunk_size, "product"),
        lambda event: done.append(event.done) if event.done else None,
    )
    return out, done


def _mapping(n_query, n_ref, k, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_ref, (n_query, k))
    w = rng.random((n_query, k)).astype(np.float32)
    w[rng.random(n_query) < 0.1] = 0  # unmapped rows
    m = sparse.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n_query * k + 1, k)), shape=(n_query, n_ref))
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_matches_scipy(chunk_size):
    m = _mapping(300, 200, 12, seed=0)
    x = sparse.random(200, 45, density=0.1, random_state=1, format="csr", dtype=np.float32)
    out, done = _product(m, x, chunk_size)
    expected = (m @ x).tocsr()
    expected.sort_indices()
    assert out.format == "csr" and out.dtype == np.float32 and out.shape == (300, 45)
    assert out.has_sorted_indices
    np.testing.assert_array_equal(out.indptr, expected.indptr)
    np.testing.assert_array_equal(out.indices, expected.indices)
    np.testing.assert_allclose(out.data, expected.data, rtol=1e-5)
    assert done[-1] == 300 and done == sorted(done)
    assert len(done) == -(-300 // min(chunk_size, 300))


def test_small_products_stay_with_scipy(monkeypatch):
    m = _mapping(300, 200, 12, seed=8)
    x = sparse.random(200, 45, density=0.1, random_state=9, format="csr", dtype=np.float32)
    kernels, _ = _product(m, x, 64)
    monkeypatch.setattr(sp, "SMALL_PRODUCT", 10**12)
    assert not sp.uses_kernels(m.nnz, x)
    monkeypatch.setattr(sp, "_accumulate", None)  # would fail if called
    small, done = _product(m, x, 64)
    assert small.dtype == np.float32 and small.has_sorted_indices and done[-1] == 300
    np.testing.assert_array_equal(small.indices, kernels.indices)
    np.testing.assert_allclose(small.data, kernels.data, rtol=1e-5)
    assert not sp.uses_kernels(10**9, np.ones((3, 3)))  # dense input never does


def test_blocks_are_bounded_by_the_dense_budget(monkeypatch):
    monkeypatch.setattr(sp, "DENSE_BLOCK_ENTRIES", 100)
    assert sp.block_rows(45, 10_000) == 2  # 100 // 45
    assert sp.block_rows(1000, 10_000) == 1  # never zero rows
    m = _mapping(50, 40, 5, seed=2)
    x = sparse.random(40, 45, density=0.3, random_state=3, format="csr", dtype=np.float32)
    out, done = _product(m, x, 10_000)
    assert len(done) == 25
    np.testing.assert_allclose(out.toarray(), (m @ x).toarray(), rtol=1e-5)


def test_output_grows_past_a_short_first_estimate():
    # the first block is all-empty rows, so the first capacity estimate is far too small
    m = _mapping(100, 30, 4, seed=4).tolil()
    m[:20] = 0
    m = m.tocsr()
    x = sparse.random(30, 20, density=0.5, random_state=5, format="csr", dtype=np.float32)
    out, _ = _product(m, x, 20)
    np.testing.assert_allclose(out.toarray(), (m @ x).toarray(), rtol=1e-5)
    assert out.nnz == (m @ x).nnz


def test_cancellation_to_zero_is_not_stored():
    m = sparse.csr_matrix(np.array([[1.0, 1.0]], dtype=np.float32))
    x = sparse.csr_matrix(np.array([[2.0, 1.0], [-2.0, 1.0]], dtype=np.float32))
    out, _ = _product(m, x, 10)
    assert out.nnz == 1 and out[0, 1] == 2.0


def test_empty_inputs():
    out, done = _product(sparse.csr_matrix((0, 5), dtype=np.float32), sparse.csr_matrix((5, 3)), 10)
    assert out.shape == (0, 3) and out.nnz == 0 and done == []


def test_warm_up_runs_in_the_background():
    thread = sp.warm_up()
    thread.join(timeout=120)
    assert not thread.is_alive()


def test_64_bit_indices(monkeypatch):
    """Products past 2**31 entries run the int64 kernels (forced here on a small one; scipy
    stores the small result with int32 indices again)."""
    monkeypatch.setattr(sp, "_index_dtype", lambda *sizes: np.int64)
    m = _mapping(40, 30, 6, seed=6)
    x = sparse.random(30, 25, density=0.2, random_state=7, format="csr", dtype=np.float32)
    out, _ = _product(m, x, 16)
    np.testing.assert_allclose(out.toarray(), (m @ x).toarray(), rtol=1e-5)
