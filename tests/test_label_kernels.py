"""The label kernels give the NumPy steps' results (transfer._class_probabilities, _mix_rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from napari_cellmapper.core import label_kernels as K
from napari_cellmapper.core import transfer as T
from napari_cellmapper.core.progress import run_steps


def _mapping(n_query: int, n_ref: int, k: int, seed: int = 0, itype=np.int32) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n_ref, (n_query, k))
    weights = rng.random((n_query, k)).astype(np.float32)
    weights[5] = 0  # a row whose weights are all zero
    m = sparse.csr_matrix((weights.ravel(), cols.ravel(), np.arange(0, n_query * k + 1, k)), (n_query, n_ref))
    m.indptr, m.indices = m.indptr.astype(itype), m.indices.astype(itype)
    return m


@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_class_probabilities_equal_numpy_by_chunk(itype):
    m = _mapping(3000, 500, 30, itype=itype)
    codes = np.random.default_rng(1).integers(-1, 7, 500)  # -1: reference cells without a label
    want, got = np.zeros((3000, 7), np.float32), np.zeros((3000, 7), np.float32)
    for start, stop in ((0, 1000), (1000, 2999), (2999, 3000)):
        T._class_probabilities(m.indptr[start : stop + 1], m.indices, m.data, codes, want[start:stop])
        K.class_probabilities(m.indptr[start : stop + 1], m.indices, m.data, codes, got[start:stop])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.all(got[5] == 0) and np.allclose(got.sum(1)[got.sum(1) > 0], 1, atol=1e-5)


@pytest.mark.parametrize(("weight", "temperature"), [(0.3, 1.7), (0.0, 1.0), (0.25, 0.6), (1.0, 1.0)])
def test_mix_rows_equal_numpy(weight, temperature):
    rng = np.random.default_rng(2)
    n, c = 4000, 9
    knn = rng.dirichlet(np.ones(c) * 0.3, n).astype(np.float32)
    knn[knn < 0.02] = 0  # absent classes
    knn /= knn.sum(1, keepdims=True)
    knn[3] = 0  # unmapped
    head = rng.dirichlet(np.ones(c), n).astype(np.float32)
    head[7, :4] = 0  # classes the head vetoes
    knn[7, :2] = 0  # ... and neither votes for two of them
    out = {}
    for name, mix in (("numpy", T._mix_rows), ("kernel", K.mix_rows)):
        arrays = K.summary_arrays(n, c)
        mix(knn, head, weight, 1 / temperature, 1e-6, float(np.log(c)), *arrays)
        out[name] = arrays
    for want, got in zip(out["numpy"], out["kernel"], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)
    assert out["kernel"][2][3] == -1 and out["kernel"][3][3] == 1 and np.all(out["kernel"][0][7, :2] == 0)


def test_transfer_uses_the_kernels_above_small_only(monkeypatch):
    calls = []
    for name in ("class_probabilities", "mix_rows"):
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    m = _mapping(2000, 300, 10)
    codes, cats = np.arange(300) % 5, pd.Index(list("abcde"))
    small = run_steps(T.iter_transfer_labels(m, codes, cats))
    assert calls == []
    monkeypatch.setattr(K, "SMALL", 1)
    big = run_steps(T.iter_transfer_labels(m, codes, cats))
    head = np.random.default_rng(0).dirichlet(np.ones(5), 2000).astype(np.float32)
    mixed_kernel = T.mix_probabilities(big.probabilities, head, 0.3, 1.5, cats)
    assert calls == ["class_probabilities", "mix_rows"]
    np.testing.assert_allclose(big.probabilities, small.probabilities, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(K, "SMALL", 10**12)
    mixed_numpy = T.mix_probabilities(big.probabilities, head, 0.3, 1.5, cats)
    np.testing.assert_allclose(mixed_kernel.probabilities, mixed_numpy.probabilities, rtol=2e-6, atol=2e-7)
    np.testing.assert_array_equal(mixed_kernel.codes, mixed_numpy.codes)
