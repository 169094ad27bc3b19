"""The inverted-file scan and the coarse assignment against brute force."""

import numpy as np
import pytest

from napari_cellmapper.core.search import ivf_scan


def _lists(n_rows, n_lists, d, seed):
    """Random rows split into lists (sorted by list), their centroids, offsets and ids."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_rows, d)).astype(np.float32)
    cells = rng.integers(0, n_lists, n_rows)
    cells[:n_lists] = np.arange(n_lists)  # no empty list
    ids = np.argsort(cells, kind="stable")
    offsets = np.zeros(n_lists + 1, dtype=np.int64)
    np.cumsum(np.bincount(cells, minlength=n_lists), out=offsets[1:])
    centroids = np.stack([vectors[cells == c].mean(axis=0) for c in range(n_lists)]).astype(np.float32)
    return vectors, ids, np.ascontiguousarray(vectors[ids]), offsets, centroids


def _brute(queries, rows, k):
    d2 = ((queries[:, None, :].astype(np.float64) - rows[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, order, axis=1), order


@pytest.mark.parametrize("k", [1, 5, 40])
def test_probing_every_list_is_exact(k):
    vectors, ids, sorted_rows, offsets, centroids = _lists(600, 7, 8, seed=0)
    queries = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    probes = ivf_scan.nearest_lists(queries, centroids, 7)
    dist, found = ivf_scan.scan(queries, probes, offsets, sorted_rows, ids, k)
    exact_dist, exact_ids = _brute(queries, vectors, k)
    assert dist.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, k)
    np.testing.assert_allclose(dist, exact_dist, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(dist, axis=1) >= 0)  # ascending
    np.testing.assert_array_equal(np.sort(found, axis=1), np.sort(exact_ids, axis=1))


def test_only_the_probed_lists_are_searched():
    vectors, ids, sorted_rows, offsets, centroids = _lists(300, 5, 4, seed=2)
    queries = np.random.default_rng(3).normal(size=(20, 4)).astype(np.float32)
    probes = np.full((20, 2), -1, dtype=np.int64)
    probes[:, 0] = 3  # one list each, the second probe empty
    dist, found = ivf_scan.scan(queries, probes, offsets, sorted_rows, ids, 4)
    members = ids[offsets[3] : offsets[4]]
    exact_dist, exact_pos = _brute(queries, vectors[members], 4)
    np.testing.assert_array_equal(np.sort(found, axis=1), np.sort(members[exact_pos], axis=1))
    np.testing.assert_allclose(dist, exact_dist, rtol=1e-4, atol=1e-4)


def test_fewer_rows_than_k_are_padded():
    vectors, ids, sorted_rows, offsets, centroids = _lists(40, 4, 3, seed=4)
    queries = np.zeros((3, 3), dtype=np.float32)
    probes = np.array([[0], [1], [2]], dtype=np.int64)
    sizes = np.diff(offsets)[:3]
    dist, found = ivf_scan.scan(queries, probes, offsets, sorted_rows, ids, 30)
    for row, size in enumerate(sizes):
        assert np.all(found[row, :size] >= 0) and np.all(found[row, size:] == -1)
        assert np.all(np.isfinite(dist[row, :size])) and np.all(np.isinf(dist[row, size:]))


def test_nearest_lists_are_the_nearest_centroids_in_order():
    rng = np.random.default_rng(5)
    centroids = rng.normal(size=(60, 6)).astype(np.float32)
    queries = rng.normal(size=(200, 6)).astype(np.float32)
    probes = ivf_scan.nearest_lists(queries, centroids, 5)
    _, expected = _brute(queries, centroids, 5)
    np.testing.assert_array_equal(probes, expected)
    assert ivf_scan.nearest_lists(queries, centroids, 100).shape == (200, 60)  # capped at nlist
    assert ivf_scan.nearest_lists(queries[:0], centroids, 5).shape == (0, 5)


def test_empty_query():
    vectors, ids, sorted_rows, offsets, centroids = _lists(30, 3, 2, seed=6)
    nothing = np.zeros((0, 2), np.float32)
    dist, found = ivf_scan.scan(nothing, np.zeros((0, 1), np.int64), offsets, sorted_rows, ids, 3)
    assert dist.shape == found.shape == (0, 3)


def test_warm_up_runs_in_the_background():
    thread = ivf_scan.warm_up()
    thread.join(timeout=120)
    assert not thread.is_alive()
