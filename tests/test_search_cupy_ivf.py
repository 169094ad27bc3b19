"""GPU inverted-file search, run on the CPU through a numpy-backed cupy (tests/_fake_cupy.py)."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
from _fake_cupy import FAKE_MODULES, install_fake_cupy

from napari_cellmapper.core.search import neighbors
from napari_cellmapper.core.search.cupy_ivf import CupyIVFIndex, kmeans
from napari_cellmapper.core.search.faiss_index import recall_at_k
from napari_cellmapper.core.validation import CellMapperInputError


@pytest.fixture
def fake(monkeypatch):
    for name in FAKE_MODULES:  # records the real state, restored afterwards
        monkeypatch.setitem(sys.modules, name, None)
    yield install_fake_cupy(free_bytes=4_000_000)


def _clustered(n_ref=3000, n_query=800, dim=16, n_types=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_types, dim))
    ref = centres[rng.integers(0, n_types, n_ref)] + rng.normal(size=(n_ref, dim))
    query = centres[rng.integers(0, n_types, n_query)] + rng.normal(size=(n_query, dim))
    return query.astype(np.float32), ref.astype(np.float32)


def test_kmeans_finds_planted_centres(fake):
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], dtype=np.float32)
    x = (centres[np.arange(400) % 4] + rng.normal(scale=0.5, size=(400, 2))).astype(np.float32)
    found = kmeans(fake, x, 4, n_iter=10, seed=0)
    nearest = np.linalg.norm(found[:, None, :] - centres[None], axis=2).min(axis=0)
    assert found.shape == (4, 2) and found.dtype == np.float32
    assert nearest.max() < 1.0  # every planted centre has a centroid next to it


def test_calibrated_recall_reaches_target_against_exact(fake):
    query, ref = _clustered()
    index = CupyIVFIndex(ref, nlist=40)
    d2, idx = index.search(query, 15)
    want_d, want_i = faiss.knn(query, ref, 15)
    assert index.nprobe is not None and 1 <= index.nprobe < index.nlist
    assert index.calibrated_recall >= 0.99
    assert recall_at_k(idx, want_i) >= 0.98  # on all queries, not only the calibration sample
    assert idx.dtype == np.int64 and d2.dtype == np.float32
    assert np.all(np.diff(d2, axis=1) >= 0)
    rows = np.arange(query.shape[0])[:, None]
    exact = ((query[:, None, :] - ref[idx]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, exact, rtol=1e-4, atol=1e-3)  # distances of the returned rows
    assert np.all(d2[:, 0] >= want_d[:, 0] - 1e-3)
    assert rows.shape[0] == query.shape[0]


def test_recall_curve_predicts_the_search_recall(fake):
    """The calibration's shortcut (recall from probe ranks, no search) equals the measured recall."""
    query, ref = _clustered(n_ref=2500, n_query=400, n_types=8, seed=5)
    index = CupyIVFIndex(ref, nlist=50)
    probes = [1, 2, 3, 5, 8]
    predicted = index.recall_curve(query, 10, probes)
    _, exact = faiss.knn(query, ref, 10)
    measured = [recall_at_k(index.search_with(query, 10, p)[1], exact) for p in probes]
    np.testing.assert_allclose(predicted, measured, atol=2e-3)  # float32 near-ties only
    assert predicted[0] < 0.99 < predicted[-1] + 0.01 and np.all(np.diff(predicted) >= 0)


def test_all_lists_probed_is_exact_search(fake):
    query, ref = _clustered(n_ref=1200, n_query=300, seed=1)
    index = CupyIVFIndex(ref, nlist=25, nprobe=25)
    d2, idx = index.search(query, 10)
    want_d, want_i = faiss.knn(query, ref, 10)
    np.testing.assert_allclose(d2, want_d, rtol=1e-4, atol=1e-3)
    assert (idx == want_i).mean() > 0.999  # float32 near-ties may swap


def test_small_lists_and_few_probes_pad_like_faiss(fake):
    """A query whose probed lists hold fewer than k rows gets -1 and float32 max, like faiss IVF."""
    query, ref = _clustered(n_ref=400, n_query=50, n_types=40, seed=2)
    index = CupyIVFIndex(ref, nlist=40, nprobe=1)
    d2, idx = index.search(query, 30)
    short = idx < 0
    assert short.any()
    assert np.all(d2[short] == np.finfo(np.float32).max)
    assert np.all(idx[~short] < ref.shape[0])
    assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in idx)  # no row twice


def test_relaxed_view_and_reference_cells(fake):
    query, ref = _clustered(n_ref=1000, n_query=200, seed=3)
    index = CupyIVFIndex(ref, nlist=20, nprobe=6)
    view = index.relaxed()
    assert view.backend == "cupy-ivf" and view.nprobe == 3
    _, idx = view.search(query, 5)
    assert idx.shape == (200, 5)
    cells = index.reference_cells()
    assert cells.shape == (1000,) and cells.dtype == np.int64 and cells.max() < 20


def test_search_through_neighbors_uses_large_chunks(fake, monkeypatch):
    monkeypatch.setattr(neighbors, "gpu_available", lambda: True)
    query, ref = _clustered(n_ref=2000, n_query=500, seed=4)
    calls = []
    real = CupyIVFIndex.search_with

    def spy(self, q, k, nprobe):
        calls.append(q.shape[0])
        return real(self, q, k, nprobe)

    monkeypatch.setattr(CupyIVFIndex, "search_with", spy)
    got = neighbors.search(query, ref, 10, backend="cupy-ivf", nlist=30)
    assert got.backend == "cupy-ivf"
    assert calls[-1] == 500  # one call for the whole query (chunk_rows), after the calibration calls
    want = neighbors.search(query, ref, 10, backend="faiss-exact")
    assert recall_at_k(got.indices, want.indices) >= 0.98
    np.testing.assert_allclose(got.distances[:, 0], want.distances[:, 0], rtol=1e-3, atol=1e-3)


def test_bad_options_and_missing_cupy(fake, monkeypatch):
    _, ref = _clustered(n_ref=300, n_query=10)
    with pytest.raises(CellMapperInputError, match="nprobe"):
        CupyIVFIndex(ref, nprobe=0)
    with pytest.raises(CellMapperInputError, match="target_recall"):
        CupyIVFIndex(ref, target_recall=1.5)
    with pytest.raises(CellMapperInputError, match="k <= "):
        CupyIVFIndex(ref, nlist=5, nprobe=2).search(ref[:3], 300)
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if cupy were not installed
    with pytest.raises(CellMapperInputError, match="gpu"):
        CupyIVFIndex(ref)
    monkeypatch.setattr(neighbors, "gpu_available", lambda: False)
    with pytest.raises(CellMapperInputError, match="cupy-ivf"):
        neighbors.resolve_backend("cupy-ivf", 10, 10)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not neighbors.gpu_available(), reason="needs an NVIDIA GPU with cupy")
def test_cupy_ivf_on_gpu_reaches_its_recall():
    query, ref = _clustered(n_ref=60_000, n_query=5_000, dim=32, n_types=30, seed=7)
    index = CupyIVFIndex(ref)
    _, idx = index.search(query, 30)
    _, exact = faiss.knn(query, ref, 30)
    assert index.calibrated_recall >= 0.99
    assert recall_at_k(idx, exact) >= 0.985
