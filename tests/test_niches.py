"""Spatial niches: graph, neighbourhood composition, k-means, AnnData output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_cellmapper.core.niches import (
    NicheResult,
    add_niches,
    categorical_palette,
    cluster_niches,
    compute_niches,
    describe_niches,
    neighborhood_composition,
    niche_composition,
    one_hot,
    spatial_graph,
)
from napari_cellmapper.core.progress import Progress


def planted_tissue(seed: int = 0, n: int = 6000, n_types: int = 8, size: float = 1000.0):
    """Four domains (quadrants with a wavy border) of overlapping known compositions."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    wave = 60 * np.sin(xy[:, 1] / 90.0)
    domain = (xy[:, 0] + wave > size / 2).astype(int) + 2 * (xy[:, 1] > size / 2)
    # every domain shares types with the others (no type is unique to one domain)
    comp = np.array(
        [
            [0.40, 0.30, 0.10, 0.05, 0.05, 0.04, 0.03, 0.03],
            [0.10, 0.35, 0.35, 0.05, 0.05, 0.04, 0.03, 0.03],
            [0.05, 0.05, 0.10, 0.40, 0.30, 0.04, 0.03, 0.03],
            [0.05, 0.05, 0.05, 0.10, 0.30, 0.30, 0.10, 0.05],
        ]
    )
    types = np.array([rng.choice(n_types, p=comp[d]) for d in domain])
    return xy, domain, types, comp


def test_acceptance_ari_on_planted_domains():
    xy, domain, types, _ = planted_tissue()
    rng = np.random.default_rng(1)
    onehot = np.eye(8, dtype=np.float32)[types]
    # transferred probabilities: the true type gets most of the mass, the rest is noise
    proba = 0.7 * onehot + 0.3 * rng.dirichlet(np.ones(8), len(types)).astype(np.float32)
    result = compute_niches(xy, proba, n_niches=4, n_neighbors=15, n_hops=2, seed=0)
    ari = adjusted_rand_score(domain, result.labels.codes)
    assert ari >= 0.8, ari
    # predicted labels (one-hot) instead of probabilities
    result1 = compute_niches(xy, [f"t{t}" for t in types], n_niches=4, n_hops=2)
    assert adjusted_rand_score(domain, result1.labels.codes) >= 0.8


def test_result_structure_and_composition_rows_sum_to_one():
    xy, domain, types, comp = planted_tissue(n=3000)
    names = [f"type{i}" for i in range(8)]
    result = compute_niches(xy, np.eye(8, dtype=np.float32)[types], 4, cell_types=names, n_hops=2)
    assert isinstance(result, NicheResult)
    assert isinstance(result.labels, pd.Categorical)
    assert list(result.labels.categories) == ["0", "1", "2", "3"]
    sizes = np.bincount(result.labels.codes, minlength=4)
    assert (np.diff(sizes) <= 0).all()  # numbered by decreasing size
    assert list(result.composition.columns) == names
    np.testing.assert_allclose(result.composition.sum(axis=1), 1.0, atol=1e-6)
    assert result.features.shape == (3000, 8) and result.features.dtype == np.float32
    assert result.centers.shape == (4, 8)
    assert len(result.colors) == 4 and all(c.startswith("#") and len(c) == 7 for c in result.colors)
    # each niche's composition is close to the planted composition of its majority domain
    for niche in range(4):
        major = np.bincount(domain[result.labels.codes == niche]).argmax()
        assert np.abs(result.composition.iloc[niche].to_numpy() - comp[major]).max() < 0.1
    text = describe_niches(result.composition)
    assert len(text) == 4 and "type" in text.iloc[0]


def test_spatial_graph_hand_case_knn_and_radius():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    g = spatial_graph(xy, n_neighbors=2).toarray()
    # self + nearest other, 1/2 each
    expected = np.array(
        [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.5, 0.5]], dtype=np.float32
    )
    np.testing.assert_allclose(g, expected)
    r = spatial_graph(xy, radius=2.5).toarray()
    expected_r = np.array(
        [[0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1]], dtype=np.float32
    )
    np.testing.assert_allclose(r, expected_r, rtol=1e-6)
    no_self = spatial_graph(xy, n_neighbors=1, include_self=False).toarray()
    np.testing.assert_allclose(no_self, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(g.sum(axis=1), 1.0)


def test_neighborhood_composition_hops_by_hand():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    graph = spatial_graph(xy, n_neighbors=2)
    proba = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    one = neighborhood_composition(graph, proba, n_hops=1)
    np.testing.assert_allclose(one, [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    dense = graph.toarray()
    two = neighborhood_composition(graph, proba, n_hops=2)
    np.testing.assert_allclose(two, dense @ dense @ proba, rtol=1e-6)


def test_niche_composition_and_one_hot_by_hand():
    labels = np.array([0, 0, 1])
    proba = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    table = niche_composition(labels, proba, 2, ["a", "b", "c"])
    np.testing.assert_allclose(table.to_numpy(), [[0.5, 0.5, 0], [0, 0, 0]])  # empty row stays 0
    matrix, names = one_hot(pd.Categorical(["b", None, "a"], categories=["b", "a"]))
    assert names == ["b", "a"]
    np.testing.assert_array_equal(matrix, [[1, 0], [0, 0], [0, 1]])


def test_cluster_niches_subsample_path_and_palette():
    rng = np.random.default_rng(0)
    centres = np.eye(3, dtype=np.float32)
    truth = rng.integers(0, 3, 1200)
    feats = centres[truth] + rng.normal(0, 0.05, (1200, 3)).astype(np.float32)
    labels, centers = cluster_niches(feats, 3, seed=0, max_fit_cells=300)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    labels_mb, _ = cluster_niches(feats, 3, seed=0, minibatch=True)
    assert adjusted_rand_score(truth, labels_mb) == pytest.approx(1.0)
    assert len(set(categorical_palette(25))) == 25


def test_add_niches_writes_query_fields_from_proba_and_labels():
    from anndata import AnnData

    xy, _, types, _ = planted_tissue(n=1000)
    names = [f"type{i}" for i in range(8)]
    query = AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(len(xy))]))
    query.obsm["spatial"] = xy
    proba = pd.DataFrame(np.eye(8, dtype=np.float32)[types], index=query.obs_names, columns=names)
    query.obsm["celltype_proba"] = proba
    events: list[Progress] = []
    result = add_niches(query, n_niches=4, progress=events.append)
    assert isinstance(query.obs["niche"].dtype, pd.CategoricalDtype)
    assert query.uns["niche_colors"] == list(result.colors)
    assert list(query.uns["niche_composition"].columns) == names
    assert query.obsm["niche_features"].shape == (1000, 8)
    assert events[-1].done == events[-1].total
    query.obs["celltype_pred"] = pd.Categorical(np.array(names)[types], categories=names)
    res2 = add_niches(query, label_key="celltype_pred", key_added="niche_labels", n_niches=4)
    assert list(res2.composition.columns) == names
    assert adjusted_rand_score(query.obs["niche"], query.obs["niche_labels"]) > 0.95


def test_unmapped_rows_count_as_zero():
    xy, domain, types, _ = planted_tissue(n=2000)
    proba = np.eye(8, dtype=np.float32)[types]
    proba[::10] = np.nan  # unmapped cells
    result = compute_niches(xy, proba, 4)
    assert not np.isnan(result.features).any()
    assert adjusted_rand_score(domain, result.labels.codes) >= 0.7


def test_bad_inputs_raise_clear_errors():
    xy = np.random.default_rng(0).uniform(size=(20, 2))
    proba = np.full((20, 3), 1 / 3, dtype=np.float32)
    bad = xy.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf for 1 of 20 cells"):
        compute_niches(bad, proba, 2)
    with pytest.raises(ValueError, match="n_niches.*between 1 and the number of cells"):
        compute_niches(xy, proba, 50)
    with pytest.raises(ValueError, match="one row per coordinate"):
        compute_niches(xy, proba[:10], 2)
    with pytest.raises(ValueError, match=r"\(n_cells, 2\)"):
        compute_niches(np.zeros((20, 5)), proba, 2)
    with pytest.raises(ValueError, match="radius must be > 0"):
        compute_niches(xy, proba, 2, radius=0)
    with pytest.raises(ValueError, match="n_hops"):
        compute_niches(xy, proba, 2, n_hops=0)
    with pytest.raises(ValueError, match="negative"):
        compute_niches(xy, -proba, 2)
    with pytest.raises(ValueError, match="cell_types has 2 names"):
        compute_niches(xy, proba, 2, cell_types=["a", "b"])
    from anndata import AnnData

    query = AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]))
    with pytest.raises(ValueError, match="no 'spatial'"):
        add_niches(query)
    query.obsm["spatial"] = xy
    with pytest.raises(ValueError, match="transfer cell types first"):
        add_niches(query)
