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


def _product(matrix, x, chunk_size, row_order=None):
    """The product and the progress after each chunk (the stage's opening event left out)."""
    done = []
    out = run_steps(
        sp.iter_product(matrix, x, chunk_size, "product", row_order=row_order),
        lambda event: done.append(event.done) if event.done else None,
    )
    return out, done


def _assert_same(out, matrix, x):
    expected = (matrix @ x).tocsr()
    expected.eliminate_zeros()
    expected.sort_indices()
    assert out.format == "csr" and out.dtype == np.float32 and out.shape == expected.shape
    assert out.has_sorted_indices
    np.testing.assert_array_equal(out.indptr, expected.indptr)
    np.testing.assert_array_equal(out.indices, expected.indices)
    np.testing.assert_allclose(out.data, expected.data, rtol=1e-5)


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
    _assert_same(out, m, x)
    # two passes (count, fill) over the rows, chunk by chunk
    assert done[-1] == 600 and done == sorted(done)
    assert len(done) == 2 * -(-300 // min(chunk_size, 300))


@pytest.mark.parametrize("scan", [True, False])
def test_row_order_changes_nothing_but_speed(monkeypatch, scan):
    """Any processing order, with the accumulator scanned whole or its touched columns tracked,
    gives exactly the same product."""
    monkeypatch.setattr(sp, "scans_whole_rows", lambda matrix, x: scan)
    m = _mapping(300, 200, 12, seed=10)
    x = sparse.random(200, 450, density=0.02, random_state=11, format="csr", dtype=np.float32)
    order = np.random.default_rng(12).permutation(300)
    plain, _ = _product(m, x, 64)
    ordered, done = _product(m, x, 64, row_order=order)
    _assert_same(ordered, m, x)
    np.testing.assert_array_equal(ordered.data, plain.data)
    assert done[-1] == 600


@pytest.mark.parametrize("threads", [1, 2])
def test_scipy_path_in_threads_and_row_order_gives_the_same_product(monkeypatch, threads):
    """Before the kernels are compiled scipy's product runs, in blocks spread over threads and in
    ``row_order``: the rows come back in their own order with the same values."""
    monkeypatch.setattr(sp, "SMALL_PRODUCT", 10**12)
    monkeypatch.setattr(sp, "_MIN_SCIPY_BLOCK", 16)
    monkeypatch.setattr(sp, "get_num_threads", lambda: threads)
    m = _mapping(300, 200, 12, seed=13)
    x = sparse.random(200, 45, density=0.1, random_state=14, format="csr", dtype=np.float32)
    order = np.random.default_rng(15).permutation(300)
    for row_order in (None, order):
        out, done = _product(m, x, 1000, row_order=row_order)
        assert done == sorted(done) and done[-1] == 300 and len(done) == 4 * threads  # blocks
        out.sort_indices()
        _assert_same(out, m, x)


def test_scan_or_track_follows_the_shapes():
    m = _mapping(100, 50, 10, seed=13)
    dense_rows = sparse.random(50, 40, density=0.5, random_state=14, format="csr")
    assert sp.scans_whole_rows(m, dense_rows)  # 10 x 20 entries touched per row, 40 genes
    wide = sparse.random(50, 100_000, density=0.0001, random_state=15, format="csr")
    assert not sp.scans_whole_rows(m, wide)  # 10 x 10 entries touched per row, 100k genes


def test_row_order_must_be_a_permutation_of_the_rows():
    m = _mapping(10, 8, 3, seed=16)
    x = sparse.random(8, 5, density=0.5, random_state=17, format="csr", dtype=np.float32)
    for bad in (np.arange(9), np.zeros(10, dtype=int), np.arange(1, 11)):
        with pytest.raises(ValueError, match="row_order"):
            _product(m, x, 4, row_order=bad)


def test_small_products_stay_with_scipy(monkeypatch):
    m = _mapping(300, 200, 12, seed=8)
    x = sparse.random(200, 45, density=0.1, random_state=9, format="csr", dtype=np.float32)
    kernels, _ = _product(m, x, 64)
    monkeypatch.setattr(sp, "SMALL_PRODUCT", 10**12)
    assert not sp.uses_kernels(m.nnz, x)
    monkeypatch.setattr(sp, "_fill", None)  # would fail if called
    small, done = _product(m, x, 64)
    assert small.dtype == np.float32 and done[-1] == 300
    small.sort_indices()  # scipy's product may leave them unsorted; the values are the same
    np.testing.assert_array_equal(small.indptr, kernels.indptr)
    np.testing.assert_array_equal(small.indices, kernels.indices)
    np.testing.assert_allclose(small.data, kernels.data, rtol=1e-5)
    assert not sp.uses_kernels(10**9, np.ones((3, 3)))  # dense input never does


@pytest.mark.parametrize("scan", [True, False])
def test_cancellation_to_zero_is_not_stored(monkeypatch, scan):
    """Sums that cancel to exactly zero leave no entry, and the rows after them close up."""
    monkeypatch.setattr(sp, "scans_whole_rows", lambda matrix, x: scan)
    m = sparse.csr_matrix(np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32))
    x = sparse.csr_matrix(np.array([[2.0, 1.0, 3.0], [-2.0, 1.0, 0.5]], dtype=np.float32))
    out, _ = _product(m, x, 10, row_order=np.array([2, 0, 1]))
    _assert_same(out, m, x)
    assert out.nnz == 2 + 3 + 2 and out[0, 0] == 0 and out[0, 1] == 2.0


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
