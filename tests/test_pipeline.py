"""The whole run (mapping, quality, presence, niches) behind one frozen parameter set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _core_fixtures import make_pair

from napari_cellmapper import CellMapperInputError
from napari_cellmapper.core.pipeline import MappingParams, annotate


def test_params_are_frozen_and_hashable():
    params = MappingParams(use_rep="X_joint", obs_keys=("celltype",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.n_neighbors = 5  # type: ignore[misc]
    assert hash(params) == hash(MappingParams(use_rep="X_joint", obs_keys=("celltype",)))
    assert params.fit_kwargs()["obs_keys"] == ["celltype"]


def test_annotate_everything():
    query, reference = make_pair(n_query=80, n_ref=120, seed=1)
    coords = np.random.default_rng(0).uniform(0, 100, size=(query.n_obs, 2))
    params = MappingParams(
        use_rep="X_joint", obs_keys=("celltype",), n_neighbors=10, presence=True, n_niches=3
    )
    cmap = annotate(query, reference, params, coords=coords, progress=False)
    assert cmap.reference_neighbors is not None and cmap.reference_neighbors.n_query == reference.n_obs
    quality = query.obs["mapping_quality"].to_numpy()
    assert (
        quality.dtype == np.float32
        and np.isfinite(quality).all()
        and (0 <= quality).all()
        and (quality <= 1).all()
    )
    presence = reference.obs["presence_score"].to_numpy()
    assert np.isfinite(presence).all() and presence.min() >= 0 and presence.max() <= 1
    assert query.obs["niche"].cat.categories.size == 3
    assert len(query.uns["niche_colors"]) == 3
    record = query.uns["cellmapper"]
    assert record["pipeline"]["n_niches"] == 3 and record["kernel"] == "gauss"


def test_reference_graph_has_its_own_k():
    """The reference's graph (presence, quality) uses reference_k, not the mapping's k; the hnoca
    kernel keeps the graph of the mapping's k it needed anyway."""
    query, reference = make_pair(n_query=80, n_ref=120, seed=2)
    base = dict(use_rep="X_joint", obs_keys=("celltype",), n_neighbors=20, presence=True)
    cmap = annotate(query.copy(), reference.copy(), MappingParams(**base), progress=False)
    assert cmap.neighbors.k == 20 and cmap.reference_neighbors.k == 15
    cmap = annotate(query.copy(), reference.copy(), MappingParams(**base, reference_k=7), progress=False)
    assert cmap.reference_neighbors.k == 7
    big = MappingParams(**base, reference_k=10_000)  # capped at the reference's size
    assert annotate(query.copy(), reference.copy(), big, progress=False).reference_neighbors.k == 120
    hnoca = MappingParams(**base, kernel="hnoca")
    assert annotate(query.copy(), reference.copy(), hnoca, progress=False).reference_neighbors.k == 20
    for bad in (0, -3, 2.5, True):
        before = reference.copy()
        with pytest.raises(CellMapperInputError, match="reference_k"):
            annotate(query.copy(), reference, MappingParams(**base, reference_k=bad), progress=False)
        assert reference.obs.equals(before.obs)


def test_niches_need_coordinates_before_any_work(monkeypatch):
    import napari_cellmapper.core.mapper as mapper_mod

    query, reference = make_pair(n_query=30, n_ref=40)
    monkeypatch.setattr(mapper_mod, "iter_search", lambda *a, **k: pytest.fail("search must not run"))
    params = MappingParams(use_rep="X_joint", obs_keys=("celltype",), n_neighbors=5, n_niches=3)
    with pytest.raises(CellMapperInputError, match="coordinate"):
        annotate(query, reference, params, progress=False)
    with pytest.raises(CellMapperInputError, match="shape"):
        annotate(query, reference, params, coords=np.zeros((3, 2)), progress=False)
    with pytest.raises(CellMapperInputError, match="obs key"):
        annotate(
            query,
            reference,
            MappingParams(use_rep="X_joint", n_niches=3),
            coords=np.zeros((30, 2)),
            progress=False,
        )
    assert "celltype_pred" not in query.obs


@pytest.mark.parametrize("kernel", ["gauss", "hnoca"])
def test_presence_beside_the_transfer_equals_presence_afterwards(kernel):
    """Presence is computed in the reference-graph thread while the transfer runs (gauss), or
    afterwards when that graph is searched in the main thread (hnoca); the scores are those of
    add_presence_scores on the same mapping and graph, per group too."""
    from napari_cellmapper.core.presence import add_presence_scores

    query, reference = make_pair(n_query=150, n_ref=200, seed=5)
    groups = np.where(np.arange(query.n_obs) % 2, "a", "b")
    params = MappingParams(
        use_rep="X_joint", obs_keys=("celltype",), n_neighbors=10, presence=True, kernel=kernel
    )
    cmap = annotate(query, reference, params, query_groups=groups, progress=False)
    assert (cmap.reference_graph_result is not None) == (kernel == "gauss")
    expected = reference.copy()
    add_presence_scores(expected, cmap.mapping_matrix, cmap.reference_neighbors, groups=groups)
    np.testing.assert_allclose(reference.obs["presence_score"], expected.obs["presence_score"], rtol=1e-6)
    np.testing.assert_allclose(
        reference.obsm["presence_score_groups"].to_numpy(),
        expected.obsm["presence_score_groups"].to_numpy(),
        rtol=1e-6,
    )


def test_label_and_joint_options_travel_through_params():
    query, reference = make_pair(seed=13)
    params = MappingParams(
        use_rep=None, obs_keys=("celltype",), n_neighbors=10, n_comps=6, scaling="gene", normalize=True,
        n_top_genes=20, head="none", calibrate=False, min_confidence=1.0, quality=False,
    )  # fmt: skip
    annotate(query, reference, params, progress=False)
    info = query.uns["cellmapper"]
    assert info["joint"]["scaling"] == "gene" and info["joint"]["n_genes"] == 20
    assert info["labels"]["head"] == "none" and not info["labels"]["calibrate"]
    uncertain = query.obs["celltype_conf"].to_numpy() < 1.0
    assert (query.obs["celltype_pred"].astype(str).to_numpy()[uncertain] == "unassigned").all()
    assert info["pipeline"]["normalize"] == "True"


@pytest.mark.parametrize("backend", ["faiss-exact", "faiss-ivf"])
def test_numpy_integer_k_is_accepted(backend):
    query, reference = make_pair(n_query=40, n_ref=80, seed=5)
    plain = MappingParams(
        use_rep="X_joint", obs_keys=("celltype",), n_neighbors=5, backend=backend, presence=True,
        reference_k=4,
    )  # fmt: skip
    want = annotate(query.copy(), reference.copy(), plain, progress=False)
    params = MappingParams(
        use_rep="X_joint", obs_keys=("celltype",), n_neighbors=np.int32(5), backend=backend,
        presence=True, reference_k=np.int64(4),
    )  # fmt: skip
    got = annotate(query.copy(), reference.copy(), params, progress=False)
    np.testing.assert_array_equal(got.neighbors.indices, want.neighbors.indices)
    assert type(got.params["n_neighbors"]) is int and got.reference_neighbors.k == 4


def test_one_cell_reference_with_k_1_maps_and_says_quality_is_skipped():
    query, reference = make_pair(n_query=20, n_ref=40, seed=6)
    one = reference[:1].copy()
    params = MappingParams(use_rep="X_joint", obs_keys=("celltype",), n_neighbors=1, presence=True)
    with pytest.warns(UserWarning, match="at least 2"):
        annotate(query, one, params, progress=False)
    assert (query.obs["celltype_pred"] == one.obs["celltype"].iloc[0]).all()
    assert "mapping_quality" not in query.obs and "presence_score" in one.obs


def test_quality_needs_reference_k_2_before_any_search(monkeypatch):
    query, reference = make_pair(n_query=20, n_ref=40, seed=6)
    monkeypatch.setattr("napari_cellmapper.core.mapper.CellMapper.iter_fit", lambda *a, **k: 1 / 0)
    with pytest.raises(CellMapperInputError, match="reference_k >= 2"):
        annotate(query, reference, MappingParams(use_rep="X_joint", reference_k=1), progress=False)
