"""Presence scores (HNOCA-tools definition, degree-corrected by default) and query mapping quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from napari_cellmapper.core.presence import (
    add_presence_scores,
    iter_presence_scores,
    mapping_quality,
    normalize_scores,
    presence_scores,
    random_walk_with_restart,
    reference_adjacency,
)
from napari_cellmapper.core.progress import Progress

try:
    from napari_cellmapper.core.search.neighbors import Neighbors
except ImportError:  # pragma: no cover - the core engineer's module is not there yet
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Neighbors:  # type: ignore[no-redef]
        indices: np.ndarray
        distances: np.ndarray
        metric: str
        backend: str
        n_reference: int


def knn(query: np.ndarray, reference: np.ndarray, k: int) -> Neighbors:
    dist, idx = cKDTree(reference).query(query, k=k)
    return Neighbors(
        indices=idx.astype(np.int64),
        distances=dist.astype(np.float32),
        metric="euclidean",
        backend="test",
        n_reference=len(reference),
    )


def gauss_mapping(nbrs: Neighbors) -> sp.csr_matrix:
    """Row-normalised gauss kernel, bandwidth = the row's median neighbour distance."""
    d = nbrs.distances.astype(np.float64)
    sigma = np.median(d, axis=1, keepdims=True)
    w = np.exp(-(d**2) / (2 * sigma**2))
    w /= w.sum(axis=1, keepdims=True)
    n, k = d.shape
    return sp.csr_matrix(
        (w.ravel().astype(np.float32), nbrs.indices.ravel(), np.arange(0, n * k + 1, k)),
        shape=(n, nbrs.n_reference),
    )


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_random_walk_three_nodes_by_hand():
    # path graph 0 - 1 - 2, no self loops: A symmetric, degrees (1, 2, 1)
    adj = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32))
    init = np.array([1.0, 0.0, 0.0])
    alpha = 0.5
    # P = D^-1 A^T; P^T h = A D^-1 h
    # step 1: A D^-1 [1,0,0] = [0, 1, 0] -> h1 = 0.5*[1,0,0] + 0.5*[0,1,0] = [0.5, 0.5, 0]
    # step 2: A D^-1 [0.5,0.5,0] = A [0.5, 0.25, 0] = [0.25, 0.5, 0.25]
    #         h2 = [0.5,0,0] + 0.5*[0.25,0.5,0.25] = [0.625, 0.25, 0.125]
    h1 = random_walk_with_restart(init, adj, alpha=alpha, max_steps=1, tol=0)
    h2 = random_walk_with_restart(init, adj, alpha=alpha, max_steps=2, tol=0)
    np.testing.assert_allclose(h1, [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(h2, [0.625, 0.25, 0.125], atol=1e-7)
    # mass is conserved by P^T (columns of A D^-1 sum to 1)
    assert h2.sum() == pytest.approx(1.0)


def test_random_walk_converges_to_closed_form_and_stops_early():
    rng = np.random.default_rng(0)
    dense = (rng.random((6, 6)) < 0.5).astype(np.float32)
    dense = dense + dense.T + np.eye(6, dtype=np.float32)
    init = rng.random((6, 2))
    alpha = 0.1
    pt = dense / dense.sum(axis=1)[None, :]  # A D^-1
    exact = np.linalg.solve(np.eye(6) - (1 - alpha) * pt, alpha * init)
    events: list[Progress] = []
    heat = random_walk_with_restart(
        init, sp.csr_matrix(dense), alpha=alpha, max_steps=1000, tol=1e-7, progress=events.append
    )
    np.testing.assert_allclose(heat, exact, rtol=1e-4)
    assert heat.shape == (6, 2) and heat.dtype == np.float32
    assert len(events) < 1000  # stopped on convergence
    assert events[-1].done == events[-1].total


def test_reference_adjacency_from_neighbors_matches_hnoca():
    # 3 cells, k=2 including self: 0->1, 1->0, 2->1
    nbrs = Neighbors(
        indices=np.array([[0, 1], [1, 0], [2, 1]]),
        distances=np.array([[0, 1], [0, 1], [0, 2]], dtype=np.float32),
        metric="euclidean",
        backend="test",
        n_reference=3,
    )
    knn_adj = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32)  # self included, as HNOCA
    adj = reference_adjacency(nbrs).toarray()
    np.testing.assert_array_equal(adj, knn_adj + knn_adj.T)
    # a -1 entry (no neighbour) is skipped, and a missing self entry is added
    nbrs2 = Neighbors(
        indices=np.array([[1, -1], [0, -1], [1, -1]]),
        distances=np.array([[1, np.inf], [1, np.inf], [2, np.inf]], dtype=np.float32),
        metric="euclidean",
        backend="test",
        n_reference=3,
    )
    np.testing.assert_array_equal(reference_adjacency(nbrs2).toarray(), knn_adj + knn_adj.T)


def test_presence_hnoca_mode_equals_manual_pipeline():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(60, 4)).astype(np.float32)
    query = rng.normal(size=(40, 4)).astype(np.float32)
    mapping = gauss_mapping(knn(query, ref, 5))
    rgraph = knn(ref, ref, 6)
    got = presence_scores(mapping, rgraph, degree_correction=False)["presence_score"].to_numpy()
    a = reference_adjacency(rgraph).toarray().astype(np.float64)
    p = np.diag(1 / a.sum(axis=1)) @ a.T  # HNOCA: P = D^-1 A^T
    init = np.asarray(mapping.sum(axis=0)).ravel()
    heat = init.copy()
    for _ in range(100):
        heat = 0.1 * init + 0.9 * (p.T @ heat)
    x = np.log1p(heat)
    x = np.clip(x, np.percentile(x, 1), np.percentile(x, 99))
    x = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_allclose(got, x, atol=2e-4)


def test_normalize_scores_constant_gives_zeros_not_nan():
    out = normalize_scores(np.full((5, 2), 3.0))
    assert out.shape == (5, 2)
    assert not np.isnan(out).any() and (out == 0).all()
    ramp = normalize_scores(np.arange(101.0), log=False, clip=(1, 99))
    assert ramp[0] == 0 and ramp[-1] == 1 and ramp[1] == 0 and ramp[99] == 1


def test_groups_give_one_column_each_plus_max():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(80, 3)).astype(np.float32)
    query = rng.normal(size=(50, 3)).astype(np.float32)
    mapping = gauss_mapping(knn(query, ref, 5))
    groups = np.array(["s1", "s2"] * 25)
    df = presence_scores(mapping, knn(ref, ref, 8), groups=groups)
    assert list(df.columns) == ["s1", "s2", "max"]
    np.testing.assert_allclose(df["max"], df[["s1", "s2"]].max(axis=1))
    assert ((df.to_numpy() >= 0) & (df.to_numpy() <= 1)).all()
    # the vectorised walk equals separate single-group runs
    alone = presence_scores(mapping[groups == "s2"], knn(ref, ref, 8))["presence_score"]
    np.testing.assert_allclose(df["s2"].to_numpy(), alone.to_numpy(), atol=1e-5)


def test_iter_presence_yields_progress_per_step():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(30, 3)).astype(np.float32)
    mapping = gauss_mapping(knn(ref[:10] + 0.01, ref, 3))
    gen = iter_presence_scores(mapping, knn(ref, ref, 4), max_steps=7, tol=0)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    walk = [e for e in events if e.stage == "presence: random walk"]
    assert len(walk) == 7 and walk[-1].done == 7
    assert isinstance(result, pd.DataFrame) and len(result) == 30


def test_add_presence_scores_writes_obs_and_obsm():
    from anndata import AnnData

    rng = np.random.default_rng(4)
    ref = AnnData(obs=pd.DataFrame(index=[f"r{i}" for i in range(40)]))
    ref.obsm["X_latent"] = rng.normal(size=(40, 3)).astype(np.float32)
    query = rng.normal(size=(20, 3)).astype(np.float32)
    mapping = gauss_mapping(knn(query, ref.obsm["X_latent"], 4))
    add_presence_scores(
        ref, mapping, knn(ref.obsm["X_latent"], ref.obsm["X_latent"], 5), groups=["a", "b"] * 10
    )
    assert "presence_score" in ref.obs and ref.obs["presence_score"].between(0, 1).all()
    groups = ref.obsm["presence_score_groups"]
    assert list(groups.columns) == ["a", "b"] and list(groups.index) == list(ref.obs_names)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(20, 3)).astype(np.float32)
    rgraph = knn(ref, ref, 4)
    wrong = sp.csr_matrix(np.ones((5, 19), dtype=np.float32) / 19)
    with pytest.raises(ValueError, match="19 reference columns.*20 cells"):
        presence_scores(wrong, rgraph)
    good = sp.csr_matrix(np.ones((5, 20), dtype=np.float32) / 20)
    with pytest.raises(ValueError, match="groups has 3 entries.*5 query rows"):
        presence_scores(good, rgraph, groups=["a", "b", "c"])
    with pytest.raises(ValueError, match="alpha"):
        presence_scores(good, rgraph, alpha=0)
    with pytest.raises(ValueError, match="sparse mapping matrix"):
        presence_scores([[1, 2]], rgraph)
    with pytest.raises(ValueError, match="square"):
        presence_scores(good, sp.csr_matrix(np.ones((20, 3))))
    nan_mapping = good.copy()
    nan_mapping.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        presence_scores(nan_mapping, rgraph)


# ---------------------------------------------------------------------------------------------
# acceptance: a cell type absent from the query
# ---------------------------------------------------------------------------------------------
def clustered(
    seed: int = 0,
    n_types: int = 8,
    dim: int = 30,
    n_ref: int = 4000,
    n_query: int = 3000,
    missing: int | None = 3,
):
    """Gaussian blobs (unit within-type sd, centres N(0, 1.5^2) per dimension), uneven proportions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (n_types, dim))
    props = rng.dirichlet(np.full(n_types, 3.0))
    ref_labels = rng.choice(n_types, n_ref, p=props)
    ref = (centers[ref_labels] + rng.normal(size=(n_ref, dim))).astype(np.float32)
    q_props = props.copy()
    if missing is not None:
        q_props[missing] = 0
    q_props /= q_props.sum()
    q_labels = rng.choice(n_types, n_query, p=q_props)
    query = (centers[q_labels] + rng.normal(size=(n_query, dim))).astype(np.float32)
    return ref, ref_labels, query, q_labels


def test_acceptance_missing_type_has_low_presence():
    ref, ref_labels, query, _ = clustered()
    mapping = gauss_mapping(knn(query, ref, 30))
    df = presence_scores(mapping, knn(ref, ref, 31))  # k = 30 plus self
    medians = pd.Series(df["presence_score"].to_numpy()).groupby(ref_labels).median()
    assert medians[3] <= 0.2, medians
    assert (medians.drop(3) >= 0.5).all(), medians


def test_mapping_quality_is_low_for_cells_absent_from_reference():
    ref, ref_labels, query, q_labels = clustered(seed=1, n_ref=3000, n_query=1500, missing=None)
    keep = ref_labels != 3  # the reference now lacks type 3; the query still has it
    ref = ref[keep]
    rng = np.random.default_rng(1)
    novel = (rng.normal(0, 1, (300, query.shape[1])) + 6.0).astype(np.float32)
    query = np.vstack([query, novel])
    q_labels = np.concatenate([q_labels, np.full(300, 99)])
    score = mapping_quality(knn(query, ref, 15), knn(ref, ref, 16))
    assert score.shape == (len(query),) and score.dtype == np.float32
    assert ((score >= 0) & (score <= 1)).all()
    covered = score[(q_labels != 3) & (q_labels != 99)]
    assert np.median(covered) >= 0.7
    assert np.median(score[q_labels == 99]) <= 0.05  # far from every reference type
    assert np.median(score[q_labels == 3]) <= 0.2  # a type missing from the reference
    # calibration: new cells from the reference's own distribution score 1 half of the time and
    # uniformly in [0, 1] otherwise, so their mean is about 0.75
    assert 0.6 <= covered.mean() <= 0.9


def test_mapping_quality_hand_case_and_unmapped():
    # reference on a line with unit spacing; each reference cell's 2 nearest others are 1 away
    ref = np.arange(10, dtype=np.float32)[:, None]
    rnb = knn(ref, ref, 3)
    near = np.array([[4.5]], dtype=np.float32)  # distances 0.5, 0.5 -> rho = 0.5 -> score 1
    far = np.array([[40.0]], dtype=np.float32)  # rho ~ 31 -> 0
    q = knn(np.vstack([near, far]), ref, 2)
    unmapped = Neighbors(
        indices=np.vstack([q.indices, [[-1, -1]]]),
        distances=np.vstack([q.distances, [[np.inf, np.inf]]]).astype(np.float32),
        metric="euclidean",
        backend="test",
        n_reference=10,
    )
    score = mapping_quality(unmapped, rnb)
    np.testing.assert_allclose(score, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="same reference"):
        mapping_quality(q, knn(ref[:5], ref[:5], 3))


def test_convenience_path_searches_the_reference_and_uses_engine_kernel():
    pytest.importorskip("napari_cellmapper.core.kernels")
    from napari_cellmapper.core.kernels import mapping_matrix
    from napari_cellmapper.core.search.neighbors import search

    ref, ref_labels, query, _ = clustered(n_ref=2000, n_query=1500)
    mapping = mapping_matrix(search(query, ref, 30), "gauss")
    by_search = presence_scores(mapping, ref, n_neighbors=30)["presence_score"].to_numpy()
    by_graph = presence_scores(mapping, search(ref, ref, 31))["presence_score"].to_numpy()
    np.testing.assert_allclose(by_search, by_graph, atol=1e-6)
    medians = pd.Series(by_search).groupby(ref_labels).median()
    assert medians[3] <= 0.2 and (medians.drop(3) >= 0.5).all(), medians
