"""Transfers on the GPU, run on the CPU through a numpy/scipy-backed cupy: equal to the CPU ones."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from _fake_cupy import FAKE_MODULES, install_fake_cupy
from scipy import sparse

from napari_cellmapper.core.progress import run_steps
from napari_cellmapper.core.transfer import (
    iter_transfer_dense,
    iter_transfer_expression,
    iter_transfer_labels,
)


@pytest.fixture
def device(monkeypatch):
    for name in FAKE_MODULES:  # records the real state, restored afterwards
        monkeypatch.setitem(sys.modules, name, None)
    install_fake_cupy()
    from napari_cellmapper.core.transfer_gpu import DeviceMapping

    return DeviceMapping


@pytest.fixture
def mapping():
    """A row-normalised (60 x 90) mapping matrix with 5 neighbours a row; rows 3 and 7 unmapped."""
    rng = np.random.default_rng(0)
    n_q, n_r, k = 60, 90, 5
    cols = np.stack([rng.choice(n_r, k, replace=False) for _ in range(n_q)])
    w = rng.random((n_q, k)).astype(np.float32)
    w[[3, 7]] = 0
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    m = sparse.csr_matrix((w.ravel(), cols.ravel(), np.arange(0, n_q * k + 1, k)), shape=(n_q, n_r))
    m.eliminate_zeros()
    return m


def test_labels_equal_cpu_with_unlabelled_reference_cells_and_unmapped_rows(device, mapping):
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 4, mapping.shape[1])  # -1: reference cells without a label
    cats = pd.Index(["a", "b", "c", "d"])
    want = run_steps(iter_transfer_labels(mapping, codes, cats), None)
    got = run_steps(device(mapping).iter_labels(codes, cats, chunk_size=17), None)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-6)
    np.testing.assert_allclose(got.entropy, want.entropy, atol=1e-5)
    assert got.unmapped[[3, 7]].all() and got.unmapped.sum() == want.unmapped.sum() >= 2


def test_embedding_equals_cpu(device, mapping):
    umap = np.random.default_rng(2).normal(size=(mapping.shape[1], 2)).astype(np.float32)
    want = run_steps(iter_transfer_dense(mapping, umap), None)
    got = run_steps(device(mapping).iter_dense(umap, chunk_size=7), None)
    assert got.dtype == np.float32 and got.shape == (60, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[[3, 7]] == 0)


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_expression_equals_cpu_sparse_in_sparse_out(device, mapping, layout):
    rng = np.random.default_rng(3)
    x = sparse.random(mapping.shape[1], 40, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    x = {"csr": x, "csc": x.tocsc(), "dense": x.toarray()}[layout]
    want = run_steps(iter_transfer_expression(mapping, x), None)
    got = run_steps(device(mapping).iter_expression(x, chunk_size=13), None)
    if layout == "dense":
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, atol=1e-6)
        return
    assert sparse.issparse(got) and got.format == "csr" and got.dtype == np.float32
    assert got.has_sorted_indices and got.shape == (60, 40)
    np.testing.assert_allclose(got.toarray(), want.toarray(), atol=1e-6)


def test_progress_per_chunk_and_empty_query(device, mapping):
    events = []
    run_steps(device(mapping).iter_dense(np.ones((90, 3), np.float32), chunk_size=25), events.append)
    assert [e.done for e in events] == [0, 25, 50, 60]
    empty = sparse.csr_matrix((0, 90), dtype=np.float32)
    x = sparse.random(90, 8, density=0.2, format="csr", dtype=np.float32)
    out = run_steps(device(empty).iter_expression(x), None)
    assert out.shape == (0, 8) and sparse.issparse(out)


@pytest.mark.gpu
def test_real_device_equals_cpu(mapping):
    from napari_cellmapper.core.search.neighbors import gpu_available

    if not gpu_available():
        pytest.skip("needs an NVIDIA GPU with cupy")
    from napari_cellmapper.core.transfer_gpu import DeviceMapping

    x = sparse.random(mapping.shape[1], 40, density=0.1, format="csr", dtype=np.float32, random_state=4)
    want = run_steps(iter_transfer_expression(mapping, x), None)
    got = run_steps(DeviceMapping(mapping).iter_expression(x, chunk_size=13), None)
    assert got.has_sorted_indices
    np.testing.assert_allclose(got.toarray(), want.toarray(), atol=1e-5)
    codes = np.arange(mapping.shape[1]) % 3
    cats = pd.Index(["a", "b", "c"])
    want_l = run_steps(iter_transfer_labels(mapping, codes, cats), None)
    got_l = run_steps(DeviceMapping(mapping).iter_labels(codes, cats), None)
    np.testing.assert_allclose(got_l.probabilities, want_l.probabilities, atol=1e-5)
