"""Implicitly centred and scaled blocks, randomized PCA and CCA on them."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from napari_cellmapper.core import sparse_pca as S


def _block(seed=0, n=300, g=50):
    rng = np.random.default_rng(seed)
    x = sparse.random(n, g, density=0.2, random_state=seed, format="csr", dtype=np.float32)
    mask = rng.random(n) > 0.1
    mean = np.asarray(x[mask].mean(axis=0)).ravel()
    scale = rng.uniform(0.5, 2, g)
    dense = (x.toarray() - mean) * scale
    dense[~mask] = 0
    return S.CentredBlock(x, mean, scale, mask), dense


def test_block_products_match_the_dense_matrix():
    block, dense = _block()
    w = np.random.default_rng(1).normal(size=(50, 4))
    y = np.random.default_rng(2).normal(size=(300, 4))
    np.testing.assert_allclose(block.matmat(w), dense @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(block.rmatmat(y), dense.T @ y, rtol=1e-4, atol=1e-3)


def test_randomized_components_match_exact_pca():
    rng = np.random.default_rng(3)
    low = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 60)) * 3 + rng.normal(size=(400, 60)) * 0.1
    x = sparse.csr_matrix(np.abs(low).astype(np.float32))
    mean = np.asarray(x.mean(axis=0)).ravel()
    block = S.CentredBlock(x, mean, np.ones(60), np.ones(400, bool))
    comps, s = S.fit_components([block], 5)
    dense = x.toarray() - mean
    _, s_exact, vt = np.linalg.svd(dense, full_matrices=False)
    np.testing.assert_allclose(s, s_exact[:5], rtol=1e-3)
    np.testing.assert_allclose(np.abs(comps.T @ vt[:5].T), np.eye(5), atol=1e-2)


def test_implicit_cca_shapes():
    bq, _ = _block(4, 120, 30)
    br, _ = _block(5, 150, 30)
    uq, vr, info = S.implicit_cca(bq, br, 5, seed=0)
    assert uq.shape == (120, 5) and vr.shape == (150, 5) and len(info["singular_values"]) == 5
