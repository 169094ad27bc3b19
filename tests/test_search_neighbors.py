"""Neighbour search: true distances against numpy, ordering, -1/inf semantics, backend choice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellmapper import CellMapperInputError
from napari_cellmapper.core.progress import Progress
from napari_cellmapper.core.search import neighbors as nb


def _data(n_q=40, n_r=300, d=7, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_q, d)).astype(np.float32), rng.normal(size=(n_r, d)).astype(np.float32)


def _numpy_euclidean(q, r):
    q, r = q.astype(np.float64), r.astype(np.float64)
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))


def _numpy_cosine(q, r):
    q, r = q.astype(np.float64), r.astype(np.float64)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    return 1.0 - qn @ rn.T


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_exact_matches_numpy(metric):
    q, r = _data()
    k = 12
    res = nb.search(q, r, k, metric=metric, backend="faiss-exact")
    full = _numpy_euclidean(q, r) if metric == "euclidean" else _numpy_cosine(q, r)
    order = np.argsort(full, axis=1, kind="stable")[:, :k]
    assert res.indices.dtype == np.int64 and res.distances.dtype == np.float32
    assert res.indices.shape == res.distances.shape == (len(q), k)
    np.testing.assert_array_equal(res.indices, order)
    expected = np.take_along_axis(full, order, axis=1)
    np.testing.assert_allclose(res.distances, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    assert res.metric == metric and res.backend == "faiss-exact" and res.n_reference == len(r)
    assert res.n_query == len(q) and res.k == k
    assert res.valid.all()


def test_euclidean_distances_are_not_squared():
    q = np.array([[0.0, 0.0]], np.float32)
    r = np.array([[3.0, 4.0], [0.0, 10.0], [1.0, 0.0]], np.float32)
    res = nb.search(q, r, 3, backend="faiss-exact")
    np.testing.assert_array_equal(res.indices, [[2, 0, 1]])
    np.testing.assert_allclose(res.distances, [[1.0, 5.0, 10.0]], rtol=1e-6)


def test_cosine_distance_is_one_minus_cos():
    q = np.array([[1.0, 0.0]], np.float32)
    r = np.array([[5.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]], np.float32)
    res = nb.search(q, r, 4, metric="cosine", backend="faiss-exact")
    np.testing.assert_array_equal(res.indices, [[0, 3, 1, 2]])
    np.testing.assert_allclose(res.distances, [[0.0, 1 - np.sqrt(0.5), 1.0, 2.0]], atol=1e-6)


def test_k_equal_to_reference_size_and_self_search():
    _, r = _data(n_r=25)
    res = nb.search(r, r, 25, backend="faiss-exact")
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(25))
    np.testing.assert_allclose(res.distances[:, 0], 0, atol=1e-3)
    assert all(sorted(row) == list(range(25)) for row in res.indices)


def test_chunked_search_equals_single_chunk_and_reports_progress():
    q, r = _data(n_q=23)
    events: list[Progress] = []
    chunked = nb.search(q, r, 5, backend="faiss-exact", chunk_size=10, progress=events.append)
    whole = nb.search(q, r, 5, backend="faiss-exact")
    np.testing.assert_array_equal(chunked.indices, whole.indices)
    np.testing.assert_array_equal(chunked.distances, whole.distances)
    assert [e.done for e in events] == [0, 10, 20, 23]
    assert all(e.total == 23 for e in events)


def test_iter_search_is_a_generator_returning_neighbors():
    q, r = _data()
    gen = nb.iter_search(q, r, 3, backend="faiss-exact")
    first = next(gen)
    assert isinstance(first, Progress)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert isinstance(stop.value.value, nb.Neighbors)


def test_missing_neighbours_are_minus_one_with_inf():
    """IVF with one probed list cannot always fill k: holes must read -1 / inf, never garbage."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=50, size=(10, 4))
    r = (centres[np.arange(400) % 10] + rng.normal(size=(400, 4))).astype(np.float32)
    q = (centres[:3] + rng.normal(size=(3, 4))).astype(np.float32)
    res = nb.search(q, r, 120, backend="faiss-ivf", nlist=10, nprobe=1)
    missing = res.indices < 0
    assert missing.any(), "test setup should produce missing neighbours"
    assert np.all(np.isinf(res.distances[missing]))
    assert np.all(np.isfinite(res.distances[~missing]))
    np.testing.assert_array_equal(res.valid, ~missing)
    # holes come last; real neighbours stay sorted
    for row in range(len(q)):
        ok = res.distances[row][~missing[row]]
        assert np.all(np.diff(ok) >= 0)
        assert not np.any(missing[row][: (~missing[row]).sum()])
    adj = res.adjacency()
    assert adj.shape == (3, 400) and adj.nnz == (~missing).sum()


def test_to_true_distances_semantics():
    sq = np.array([[4.0, 9.0, 3.4e38]], np.float32)
    idx = np.array([[0, 1, -1]])
    np.testing.assert_array_equal(nb.to_true_distances(sq.copy(), idx, "euclidean"), [[2.0, 3.0, np.inf]])
    np.testing.assert_array_equal(
        nb.to_true_distances(np.array([[0.5, 2.0, 3.4e38]], np.float32), idx, "cosine"), [[0.25, 1.0, np.inf]]
    )
    # tiny negative round-off is clipped, never NaN
    out = nb.to_true_distances(np.array([[-1e-7]], np.float32), np.array([[0]]), "euclidean")
    assert out[0, 0] == 0


def test_neighbors_subset_and_adjacency():
    ind = np.array([[0, 2], [1, -1], [3, 0]])
    dist = np.array([[0.1, 0.2], [0.3, np.inf], [0.0, 1.0]], np.float32)
    n = nb.Neighbors(ind, dist, "euclidean", "faiss-exact", 4)
    np.testing.assert_array_equal(n.valid, [[True, True], [True, False], [True, True]])
    np.testing.assert_array_equal(n.adjacency().toarray(), [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]])
    sub = n.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.indices, [[3, 0], [0, 2]])
    assert sub.n_reference == 4


def test_auto_backend_resolution(monkeypatch):
    monkeypatch.setattr(nb, "gpu_available", lambda: False)
    assert nb.resolve_backend("auto", 1000, 1000) == "faiss-exact"
    assert nb.resolve_backend("auto", 100_000, 100_000) == "faiss-ivf"
    assert nb.resolve_backend("faiss-ivf", 10, 10) == "faiss-ivf"
    q, r = _data()
    assert nb.search(q, r, 3).backend == "faiss-exact"
    monkeypatch.setattr(nb, "gpu_available", lambda: True)
    assert nb.resolve_backend("auto", 10, 10) == "cupy"


def test_auto_switches_to_ivf_above_threshold(monkeypatch):
    monkeypatch.setattr(nb, "gpu_available", lambda: False)
    monkeypatch.setattr(nb, "AUTO_EXACT_MAX_PAIRS", 100)
    q, r = _data(n_q=20, n_r=400)
    assert nb.search(q, r, 5).backend == "faiss-ivf"


def test_cupy_without_gpu_raises_mentioning_gpu():
    if nb.gpu_available():  # pragma: no cover - only on GPU machines
        pytest.skip("a GPU is present")
    q, r = _data()
    with pytest.raises(CellMapperInputError, match="GPU"):
        nb.search(q, r, 3, backend="cupy")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"backend": "annoy"}, r"Unknown backend 'annoy'"),
        ({"metric": "manhattan"}, r"Unknown metric 'manhattan'"),
        ({"k": 301}, r"larger than the reference"),
        ({"k": 0}, r"positive integer"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    q, r = _data()
    args = {"k": 3, **kwargs}
    k = args.pop("k")
    with pytest.raises(CellMapperInputError, match=pattern):
        nb.search(q, r, k, **args)


def test_bad_embeddings_raise():
    q, r = _data()
    with pytest.raises(CellMapperInputError, match="dimensions"):
        nb.search(q[:, :3], r, 3)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(CellMapperInputError, match="NaN or inf"):
        nb.search(bad, r, 3)
    bad = r.copy()
    bad[5, 1] = np.inf
    with pytest.raises(CellMapperInputError, match="NaN or inf"):
        nb.search(q, bad, 3)


def test_inputs_not_modified():
    q, r = _data()
    q64 = q.astype(np.float64)
    qc, rc = q64.copy(), r.copy()
    nb.search(q64, r, 4, metric="cosine", backend="faiss-exact")
    np.testing.assert_array_equal(q64, qc)
    np.testing.assert_array_equal(r, rc)


def test_prebuilt_index_is_reused():
    from napari_cellmapper.core.search.faiss_index import FlatIndex, IVFIndex

    q, r = _data()
    index = FlatIndex(nb.prepare_rep(r, "cosine"))
    reused = nb.search(q, r, 6, metric="cosine", backend="faiss-exact", index=index)
    fresh = nb.search(q, r, 6, metric="cosine", backend="faiss-exact")
    np.testing.assert_array_equal(reused.indices, fresh.indices)
    np.testing.assert_allclose(reused.distances, fresh.distances, rtol=1e-6)
    ivf = IVFIndex(nb.prepare_rep(r, "euclidean"), nlist=4, nprobe=4)
    with pytest.raises(CellMapperInputError, match="index was built with 'faiss-ivf'"):
        nb.search(q, r, 3, backend="faiss-exact", index=ivf)
    assert nb.search(q, r, 3, backend="auto", index=ivf).backend == "faiss-ivf"


def test_prepare_rep():
    rep = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = nb.prepare_rep(rep, "cosine")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.shape == (2, nb.PAD_TO)  # zero-padded for faiss' SIMD loops
    np.testing.assert_allclose(out[:, :2], [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_array_equal(out[:, 2:], 0)
    np.testing.assert_array_equal(nb.prepare_rep(rep, "euclidean")[:, :2], rep.astype(np.float32))
    wide = np.ones((3, 16))
    assert nb.prepare_rep(wide, "euclidean").shape == (3, 16)


def test_unknown_backend_option_raises():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(CellMapperInputError, match="nprob"):
        nb.search(ref[:5], ref, 3, backend="faiss-ivf", nprob=4)
    with pytest.raises(CellMapperInputError, match="accepts: none"):
        nb.search(ref[:5], ref, 3, backend="faiss-exact", nprobe=4)


def test_locality_order_groups_rows_by_the_cell_of_their_nearest_neighbour():
    class Cells:
        def reference_cells(self):
            return np.array([2, 0, 1, 0])  # cells of the indexed rows

    nbrs = nb.Neighbors(
        np.array([[3, 0], [2, 1], [0, 3], [-1, -1], [1, 2]]),
        np.zeros((5, 2), np.float32),
        "euclidean",
        "test",
        4,
    )
    order = nb.locality_order(nbrs, Cells())
    # nearest neighbours' cells: 0, 1, 2, none, 0 -> rows 0 and 4 first, the unmapped row last
    np.testing.assert_array_equal(order, [0, 4, 1, 2, 3])
    # an index over reference rows 1..4 only (row 0 unusable): its cells belong to rows 1, 2, 3, 4
    nbrs5 = nb.Neighbors(np.array([[4], [1], [2]]), np.zeros((3, 1), np.float32), "euclidean", "test", 5)
    np.testing.assert_array_equal(nb.locality_order(nbrs5, Cells(), np.array([1, 2, 3, 4])), [0, 2, 1])
    assert nb.locality_order(nbrs, object()) is None  # exact search: no cells


def test_preload_imports_faiss_on_the_calling_thread():
    import sys

    from napari_cellmapper.core.search import neighbors

    assert neighbors.preload() is True
    assert "faiss" in sys.modules
