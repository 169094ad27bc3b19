"""faiss indexes: flat exactness, IVF recall against exact search, calibrated parameters."""

from __future__ import annotations

import numpy as np
import pytest
from _core_fixtures import clustered

from napari_cellmapper.core.search import faiss_index as nf
from napari_cellmapper.core.search import neighbors as nb


def test_recall_at_k_hand_cases():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert nf.recall_at_k(exact, exact) == 1.0
    assert nf.recall_at_k(exact[:, ::-1], exact) == 1.0  # order does not matter
    approx = np.array([[0, 1, 9], [5, -1, -1]])
    assert nf.recall_at_k(approx, exact) == pytest.approx(3 / 6)
    # a neighbour of another row does not count
    assert nf.recall_at_k(np.array([[3, 4, 5], [0, 1, 2]]), exact) == 0.0


def test_flat_index_returns_squared_l2():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(50, 4)).astype(np.float32)
    q = rng.normal(size=(5, 4)).astype(np.float32)
    sq, idx = nf.FlatIndex(r).search(q, 3)
    full = ((q[:, None].astype(np.float64) - r[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(sq, np.sort(full, axis=1)[:, :3], rtol=1e-4)


@pytest.mark.parametrize(("n", "expected"), [(10, 1), (1000, 25), (20_000, 283), (1_000_000, 2000)])
def test_ivf_nlist(n, expected):
    assert nf.ivf_nlist(n) == expected


def _exact(q, r, k):
    return nb.search(q, r, k, backend="faiss-exact").indices


@pytest.fixture(scope="module")
def clustered_20k():
    ref, qry, _, _ = clustered(20_000, 5_000, 30, 20, seed=7, spread=3.0)
    return ref, qry, _exact(qry, ref, 30)


def test_ivf_recall_clustered(clustered_20k):
    ref, qry, exact = clustered_20k
    approx = nb.search(qry, ref, 30, backend="faiss-ivf")
    assert approx.backend == "faiss-ivf"
    assert nf.recall_at_k(approx.indices, exact) >= 0.95
    # distances of found neighbours are true euclidean distances
    ok = approx.indices >= 0
    rows = np.nonzero(ok)[0]
    true = np.linalg.norm(qry[rows].astype(np.float64) - ref[approx.indices[ok]], axis=1)
    np.testing.assert_allclose(approx.distances[ok], true, rtol=1e-3, atol=1e-3)


def test_ivf_index_records_auto_parameters(clustered_20k):
    ref, qry, exact = clustered_20k
    index = nf.IVFIndex(np.ascontiguousarray(ref))
    assert index.nlist == nf.ivf_nlist(len(ref)) == 283
    assert index.nprobe is None and index.calibrated_recall is None
    _, idx = index.search(np.ascontiguousarray(qry), 30)
    assert index.nprobe in {min(p, index.nlist) for p in nf.NPROBE_LADDER}
    assert index.calibrated_recall is not None and index.calibrated_recall >= nf.IVF_TARGET_RECALL
    assert nf.recall_at_k(idx, exact) >= 0.95


def test_ivf_recall_uniform():
    rng = np.random.default_rng(11)
    ref = rng.random((20_000, 30), dtype=np.float32)
    qry = rng.random((2_000, 30), dtype=np.float32)
    exact = _exact(qry, ref, 30)
    index = nf.IVFIndex(ref)
    _, idx = index.search(qry, 30)
    assert nf.recall_at_k(idx, exact) >= 0.95
    assert index.calibrated_recall >= nf.IVF_TARGET_RECALL or index.nprobe == index.nlist


def test_ivf_explicit_parameters_skip_calibration():
    ref, qry, _, _ = clustered(2_000, 100, 8, 5, seed=2)
    index = nf.IVFIndex(ref, nlist=16, nprobe=3)
    index.search(qry, 5)
    assert (index.nlist, index.nprobe) == (16, 3)
    assert index.calibrated_recall is None


def test_ivf_full_probe_is_exact():
    ref, qry, _, _ = clustered(3_000, 200, 10, 6, seed=5)
    index = nf.IVFIndex(ref, nlist=20, nprobe=20)
    _, idx = index.search(qry, 10)
    assert nf.recall_at_k(idx, _exact(qry, ref, 10)) == 1.0


def test_ivf_index_pickles_and_searches_the_same():
    import pickle

    ref, qry, _, _ = clustered(3_000, 200, 10, 6, seed=8)
    index = nf.IVFIndex(ref, nlist=12, nprobe=3)
    copy = pickle.loads(pickle.dumps(index))
    a, b = index.search(qry, 7), copy.search(qry, 7)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_ivf_reference_cells_hold_each_row_once():
    ref, _, _, _ = clustered(2_000, 10, 8, 5, seed=9)
    index = nf.IVFIndex(ref, nlist=10, nprobe=2)
    cells = index.reference_cells()
    assert cells.shape == (2_000,) and cells.min() >= 0 and cells.max() < 10
    # each row lies in the list of its nearest centroid
    nearest = nb.search(ref, index._centroids[:, : ref.shape[1]], 1, backend="faiss-exact").indices[:, 0]
    assert (cells == nearest).mean() > 0.99  # float32 near-ties aside


def test_relaxed_view_probes_fewer_lists():
    ref, qry, _, _ = clustered(3_000, 300, 10, 6, seed=10)
    index = nf.IVFIndex(ref, nlist=30, nprobe=8)
    exact = _exact(qry, ref, 10)
    relaxed = index.relaxed()
    assert relaxed.nprobe == 4
    full = nf.recall_at_k(index.search(qry, 10)[1], exact)
    half = nf.recall_at_k(relaxed.search(qry, 10)[1], exact)
    assert half <= full and index.nprobe == 8  # the view leaves the index as it was
