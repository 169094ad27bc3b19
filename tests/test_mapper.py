"""CellMapper: the announced API, step-by-step use, bad inputs, cancellation, a real data set."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from _core_fixtures import CELLTYPES, COLORS, assert_unchanged, make_pair, snapshot
from anndata import AnnData
from scipy import sparse

import napari_cellmapper.core.mapper as mapper_mod
import napari_cellmapper.core.search.neighbors as nb
from napari_cellmapper import CellMapper, CellMapperInputError
from napari_cellmapper.core import graph_vote
from napari_cellmapper.core.palettes import UNMAPPED_COLOR
from napari_cellmapper.core.progress import Progress


@pytest.fixture
def pair():
    return make_pair()


@pytest.fixture
def search_calls(monkeypatch):
    """Count calls of the neighbour search that CellMapper uses (the real search still runs)."""
    calls: list[tuple] = []
    real = mapper_mod.iter_search

    def counting(query, reference, k, **kwargs):
        calls.append((query.shape, reference.shape, k))
        return (yield from real(query, reference, k, **kwargs))

    monkeypatch.setattr(mapper_mod, "iter_search", counting)
    return calls


@pytest.fixture
def no_search(monkeypatch):
    """Any neighbour search is an error: validation must fail before heavy work."""

    def forbidden(*args, **kwargs):
        pytest.fail("the neighbour search ran although the input was invalid")
        yield  # pragma: no cover

    def forbidden_index(*args, **kwargs):
        pytest.fail("an index was built although the input was invalid")

    monkeypatch.setattr(mapper_mod, "iter_search", forbidden)
    monkeypatch.setattr(nb, "iter_search", forbidden)
    if hasattr(mapper_mod, "build_index"):
        monkeypatch.setattr(mapper_mod, "build_index", forbidden_index)
    monkeypatch.setattr(nb, "build_index", forbidden_index)


# ---------------------------------------------------------------- the announced API


def test_three_line_api(pair, capsys, monkeypatch):
    import napari_cellmapper.core.progress as progress_module

    monkeypatch.setattr(progress_module, "BAR_DELAY", 0)  # show even the quick stages' bars
    query, reference = pair
    ref_before = snapshot(reference)
    cmap = CellMapper(query, reference).fit(
        use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X"
    )
    assert isinstance(cmap, CellMapper)
    assert "neighbour search" in capsys.readouterr().err  # default: progress bars on stderr

    pred = query.obs["celltype_pred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == CELLTYPES  # reference categories, same order
    assert list(query.uns["celltype_pred_colors"]) == COLORS

    proba = query.obsm["celltype_proba"]
    assert isinstance(proba, pd.DataFrame)
    assert proba.index.equals(query.obs_names)
    assert list(proba.columns) == CELLTYPES
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(pred.astype(str)) == list(proba.idxmax(axis=1))

    conf = query.obs["celltype_conf"].to_numpy()
    np.testing.assert_allclose(conf, proba.max(axis=1).to_numpy(), rtol=1e-6)
    entropy = query.obs["celltype_entropy"].to_numpy()
    assert np.all((entropy >= 0) & (entropy <= 1)) and np.all((conf > 0) & (conf <= 1))

    m = cmap.mapping_matrix
    assert m.shape == (query.n_obs, reference.n_obs) and m.dtype == np.float32
    np.testing.assert_allclose(np.asarray(m.sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        query.obsm["X_umap_pred"], m @ reference.obsm["X_umap"].astype(np.float64), rtol=1e-4, atol=1e-4
    )

    imputed = cmap.query_imputed
    assert isinstance(imputed, AnnData)
    assert imputed.obs_names.equals(query.obs_names)
    assert imputed.var_names.equals(reference.var_names)
    assert sparse.issparse(imputed.X)
    np.testing.assert_allclose(imputed.X.toarray(), (m @ reference.X).toarray(), rtol=1e-4, atol=1e-5)

    assert query.obs["cellmapper_unmapped"].dtype == bool and not query.obs["cellmapper_unmapped"].any()
    acc = np.mean(pred.to_numpy() == query.obs["true_celltype"].to_numpy())
    assert acc > 0.95

    prov = query.uns["cellmapper"]
    assert prov["n_neighbors"] == 30 and prov["kernel"] == "gauss"
    assert prov["backend"] == "faiss-exact" and prov["backend_requested"] == "auto"
    assert prov["metric"] == "euclidean" and prov["use_rep"] == "X_joint"
    assert list(prov["obs_keys"]) == ["celltype"] and list(prov["obsm_keys"]) == ["X_umap"]
    assert prov["layer_key"] == "X"
    assert prov["n_query"] == query.n_obs and prov["n_reference"] == reference.n_obs
    assert {"numpy", "scipy", "anndata", "faiss-cpu"} <= set(prov["versions"])
    assert prov["versions"]["numpy"] == np.__version__
    assert_unchanged(reference, ref_before)


def test_results_are_writable_to_h5ad(pair, tmp_path):
    query, reference = pair
    cmap = CellMapper(query, reference).fit(
        use_rep="X_joint", obs_keys=["celltype", "score"], obsm_keys="X_umap", layer_key="X", progress=False
    )
    query.write_h5ad(tmp_path / "q.h5ad")
    cmap.query_imputed.write_h5ad(tmp_path / "imp.h5ad")
    back = anndata.read_h5ad(tmp_path / "q.h5ad")
    assert list(back.obs["celltype_pred"].cat.categories) == CELLTYPES
    assert back.uns["cellmapper"]["kernel"] == "gauss"


def test_dense_expression_gives_dense_imputed():
    query, reference = make_pair(sparse_x=False)
    cmap = CellMapper(query, reference).fit(use_rep="X_joint", layer_key="X", progress=False)
    x = cmap.query_imputed.X
    assert isinstance(x, np.ndarray)
    np.testing.assert_allclose(x, cmap.mapping_matrix @ reference.X, rtol=1e-4, atol=1e-5)


def test_layer_key_names_a_layer(pair):
    query, reference = pair
    reference.layers["doubled"] = reference.X * 2
    cmap = CellMapper(query, reference).fit(use_rep="X_joint", layer_key="doubled", progress=False)
    np.testing.assert_allclose(
        cmap.query_imputed.X.toarray(),
        (cmap.mapping_matrix @ reference.X).toarray() * 2,
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("use_rep", ["X_joint", None])
@pytest.mark.parametrize("sparse_x", [True, False])
def test_backed_reference_imputes_x(tmp_path, sparse_x, use_rep):
    query, reference = make_pair(sparse_x=sparse_x)
    reference.write_h5ad(tmp_path / "ref.h5ad")
    backed = anndata.read_h5ad(tmp_path / "ref.h5ad", backed="r")
    try:
        cmap = CellMapper(query, backed).fit(
            use_rep="X_joint", obs_keys="celltype", layer_key="X", progress=False
        )
    finally:
        backed.file.close()
    want = cmap.mapping_matrix @ reference.X
    got = cmap.query_imputed.X
    np.testing.assert_allclose(
        got.toarray() if sparse.issparse(got) else got,
        want.toarray() if sparse.issparse(want) else want,
        rtol=1e-4,
        atol=1e-5,
    )


def test_numeric_obs_weighted_mean_and_key_lists(pair):
    query, reference = pair
    reference.obs.loc[reference.obs_names[:3], "score"] = np.nan
    cmap = CellMapper(query, reference).fit(
        use_rep="X_joint",
        obs_keys=["celltype", "score", "batch"],
        obsm_keys=["X_umap", "X_joint"],
        progress=False,
    )
    m = cmap.mapping_matrix.astype(np.float64)
    values = reference.obs["score"].to_numpy()
    present = np.isfinite(values)
    expected = (m @ np.where(present, values, 0)) / (m @ present.astype(float))
    np.testing.assert_allclose(query.obs["score_pred"].to_numpy(), expected, rtol=1e-5)
    assert pd.api.types.is_float_dtype(query.obs["score_pred"])
    assert "score_conf" not in query.obs and "score_proba" not in query.obsm
    assert list(query.obs["batch_pred"].cat.categories) == ["b0", "b1"]
    assert query.obsm["batch_proba"].shape == (query.n_obs, 2)
    assert query.obsm["X_joint_pred"].shape == (query.n_obs, 8)
    assert query.obsm["X_umap_pred"].shape == (query.n_obs, 2)
    # no colours in the reference for 'batch' -> scanpy default palette
    assert list(query.uns["batch_pred_colors"]) == ["#1f77b4", "#ff7f0e"]
    assert list(query.uns["cellmapper"]["obs_keys"]) == ["celltype", "score", "batch"]


def test_prediction_postfix(pair):
    query, reference = pair
    CellMapper(query, reference).fit(
        use_rep="X_joint",
        obs_keys="celltype",
        obsm_keys="X_umap",
        prediction_postfix="_mapped",
        progress=False,
    )
    assert "celltype_mapped" in query.obs and "X_umap_mapped" in query.obsm
    assert "celltype_pred" not in query.obs
    assert list(query.uns["celltype_mapped_colors"]) == COLORS


def test_wrong_length_reference_colours_fall_back(pair):
    query, reference = pair
    reference.uns["celltype_colors"] = np.array(["#000000", "#ffffff"], dtype=object)
    CellMapper(query, reference).fit(use_rep="X_joint", obs_keys="celltype", progress=False)
    colors = list(query.uns["celltype_pred_colors"])
    assert len(colors) == len(CELLTYPES) and colors != COLORS


def test_string_column_is_accepted_and_reference_untouched(pair):
    query, reference = pair
    reference.obs["label"] = reference.obs["celltype"].astype(str).to_numpy()
    assert not isinstance(reference.obs["label"].dtype, pd.CategoricalDtype)
    before = snapshot(reference)
    with pytest.warns(UserWarning, match=r"reference.obs\['label'\] is not categorical"):
        CellMapper(query, reference).fit(use_rep="X_joint", obs_keys="label", progress=False)
    assert_unchanged(reference, before)
    assert not isinstance(reference.obs["label"].dtype, pd.CategoricalDtype)
    pred = query.obs["label_pred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == sorted(CELLTYPES)
    truth = query.obs["true_celltype"].astype(str).to_numpy()
    np.testing.assert_array_equal(pred.astype(str).to_numpy(), truth)


def test_missing_reference_labels_are_ignored(pair):
    query, reference = pair
    ct = reference.obs["celltype"].copy()
    ct.iloc[::3] = np.nan
    reference.obs["celltype"] = ct
    CellMapper(query, reference).fit(use_rep="X_joint", obs_keys="celltype", progress=False)
    assert list(query.obs["celltype_pred"].cat.categories) == CELLTYPES
    assert not query.obs["celltype_pred"].isna().any()
    np.testing.assert_allclose(query.obsm["celltype_proba"].sum(axis=1), 1.0, rtol=1e-5)


def test_unmapped_query_cells_cosine(pair):
    """A zero query vector has no cosine neighbour: it is unmapped everywhere, never NaN."""
    query, reference = pair
    query.obsm["X_joint"][[0, 4]] = 0
    cmap = CellMapper(query, reference).fit(
        use_rep="X_joint",
        obs_keys=["celltype", "score"],
        obsm_keys="X_umap",
        layer_key="X",
        metric="cosine",
        progress=False,
    )
    unmapped = np.zeros(query.n_obs, bool)
    unmapped[[0, 4]] = True
    np.testing.assert_array_equal(query.obs["cellmapper_unmapped"].to_numpy(), unmapped)
    np.testing.assert_array_equal(cmap.unmapped, unmapped)
    pred = query.obs["celltype_pred"]
    assert list(pred.cat.categories) == [*CELLTYPES, "unmapped"]
    assert (pred[unmapped] == "unmapped").all() and (pred[~unmapped] != "unmapped").all()
    assert list(query.uns["celltype_pred_colors"]) == [*COLORS, UNMAPPED_COLOR]
    np.testing.assert_array_equal(query.obs["celltype_conf"].to_numpy()[unmapped], 0)
    np.testing.assert_array_equal(query.obs["celltype_entropy"].to_numpy()[unmapped], 1)
    for arr in (
        query.obs["celltype_conf"].to_numpy(),
        query.obs["score_pred"].to_numpy(),
        query.obsm["X_umap_pred"],
        query.obsm["celltype_proba"].to_numpy(),
    ):
        assert not np.isnan(arr).any()
    assert cmap.query_imputed.X[unmapped].nnz == 0
    assert query.uns["cellmapper"]["n_unmapped"] == 2
    assert query.uns["cellmapper"]["metric"] == "cosine"


# ---------------------------------------------------------------- step by step


def test_steps_search_only_once(pair, search_calls):
    query, reference = pair
    cmap = CellMapper(query, reference)
    neighbors = cmap.compute_neighbors(use_rep="X_joint", n_neighbors=15, progress=False)
    assert len(search_calls) == 1
    assert neighbors is cmap.neighbors and neighbors.k == 15

    m_gauss = cmap.compute_mapping_matrix()
    cmap.transfer(obs_keys="celltype", progress=False)
    conf_gauss = query.obs["celltype_conf"].to_numpy().copy()

    m_equal = cmap.compute_mapping_matrix(kernel="equal")
    assert cmap.mapping_matrix is m_equal
    np.testing.assert_allclose(m_equal.data, 1 / 15, rtol=1e-6)
    assert not np.allclose(m_equal.toarray(), m_gauss.toarray())
    cmap.transfer(obs_keys=["celltype", "batch"], obsm_keys="X_umap", layer_key="X", progress=False)
    assert "batch_pred" in query.obs and "X_umap_pred" in query.obsm and cmap.query_imputed is not None
    # the transfer used the new (equal) matrix, not the old one
    umap = reference.obsm["X_umap"].astype(np.float64)
    np.testing.assert_allclose(query.obsm["X_umap_pred"], m_equal @ umap, rtol=1e-4, atol=1e-4)
    assert not np.allclose(query.obsm["X_umap_pred"], m_gauss @ umap, atol=1e-3)
    np.testing.assert_array_equal(query.obs["celltype_conf"].to_numpy(), conf_gauss)  # well separated
    assert query.uns["cellmapper"]["kernel"] == "equal"

    cmap.compute_mapping_matrix(kernel="scarches")
    cmap.transfer(obsm_keys="X_umap", progress=False)
    # the query once; the reference graph once (the graph vote); a reference sample once
    # (leave-one-out, for the calibration); then cached
    assert len(search_calls) == 3, "changing the kernel or transferring more keys must not search again"
    assert search_calls[1][0][0] == search_calls[1][1][0] == reference.n_obs
    assert search_calls[1][2] == graph_vote.GRAPH_VOTE_K
    assert query.uns["cellmapper"]["kernel"] == "scarches"
    # the neighbours found once are still those used
    assert cmap.neighbors is neighbors


def test_hnoca_kernel_builds_reference_graph_once(pair, search_calls):
    query, reference = pair
    cmap = CellMapper(query, reference)
    cmap.compute_neighbors(use_rep="X_joint", n_neighbors=10, progress=False)
    m = cmap.compute_mapping_matrix(kernel="hnoca")
    assert len(search_calls) == 2  # query->reference, then reference->reference
    assert search_calls[1][:2] == ((reference.n_obs, 8), (reference.n_obs, 8))
    assert cmap.reference_neighbors.n_query == reference.n_obs
    np.testing.assert_allclose(np.asarray(m.sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    cmap.compute_mapping_matrix(kernel="hnoca")
    cmap.compute_mapping_matrix(kernel="gauss")
    assert len(search_calls) == 2


def test_steps_out_of_order_raise(pair):
    query, reference = pair
    cmap = CellMapper(query, reference)
    with pytest.raises(CellMapperInputError, match="compute_neighbors"):
        cmap.compute_mapping_matrix()
    with pytest.raises(CellMapperInputError, match="compute_mapping_matrix"):
        cmap.transfer(obs_keys="celltype", progress=False)
    with pytest.raises(CellMapperInputError, match="fit"):
        _ = cmap.unmapped
    assert cmap.query_imputed is None
    assert "not fitted" in repr(cmap)


def test_ivf_backend_and_options_recorded(pair):
    query, reference = pair
    CellMapper(query, reference).fit(
        use_rep="X_joint",
        obs_keys="celltype",
        backend="faiss-ivf",
        n_neighbors=5,
        nlist=4,
        nprobe=4,
        progress=False,
    )
    prov = query.uns["cellmapper"]
    assert prov["backend"] == "faiss-ivf"
    assert prov["backend_requested"] == "faiss-ivf"
    assert prov["nlist"] == 4 and prov["nprobe"] == 4


def test_ivf_auto_parameters_recorded_in_provenance():
    query, reference = make_pair(n_query=300, n_ref=2000, seed=9)
    CellMapper(query, reference).fit(
        use_rep="X_joint", obs_keys="celltype", backend="faiss-ivf", n_neighbors=10, progress=False
    )
    prov = query.uns["cellmapper"]
    from napari_cellmapper.core.search.faiss_index import ivf_nlist

    assert prov["nlist"] == ivf_nlist(2000)
    assert 1 <= prov["nprobe"] <= prov["nlist"]
    assert prov["calibrated_recall"] >= 0.95
    acc = np.mean(query.obs["celltype_pred"].to_numpy() == query.obs["true_celltype"].to_numpy())
    assert acc > 0.95


def test_expression_rows_grouped_by_coarse_cell(monkeypatch):
    """With an IVF index the expression product runs in coarse-cell order (faster), with the same
    result; an index without cells (exact search) gives no order. Unusable reference rows too."""
    query, reference = make_pair(n_query=400, n_ref=1500, seed=4)
    x = reference.X.tolil() if sparse.issparse(reference.X) else reference.X
    x[:3] = 0  # cells without counts are unusable: the index holds the other rows
    reference.X = sparse.csr_matrix(x) if sparse.issparse(reference.X) else x
    seen = []
    real = mapper_mod.iter_transfer_expression

    def recording(matrix, expression, **kwargs):
        seen.append(kwargs.get("row_order"))
        return (yield from real(matrix, expression, **kwargs))

    monkeypatch.setattr(mapper_mod, "iter_transfer_expression", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmap = CellMapper(query, reference).fit(
            layer_key="X", backend="faiss-ivf", n_neighbors=10, nlist=8, progress=False
        )
    assert not cmap._reference_usable[:3].any() and cmap._reference_usable[3:].all()
    order = seen[-1]
    np.testing.assert_array_equal(np.sort(order), np.arange(query.n_obs))
    cells = cmap._index.reference_cells()
    usable_rows = np.flatnonzero(cmap._reference_usable)
    nearest_cell = dict(zip(usable_rows, cells, strict=True))
    keys = [nearest_cell[j] for j in cmap.neighbors.indices[order, 0]]
    assert keys == sorted(keys)
    expected = (cmap.mapping_matrix @ reference.X).toarray()
    np.testing.assert_allclose(cmap.query_imputed.X.toarray(), expected, rtol=1e-4, atol=1e-6)
    CellMapper(query, reference).fit(use_rep="X_joint", layer_key="X", backend="faiss-exact", progress=False)
    assert seen[-1] is None


def test_gauss_sigma_recorded_and_fixed_sigma(pair):
    query, reference = pair
    cmap = CellMapper(query, reference)
    nbrs = cmap.compute_neighbors(use_rep="X_joint", n_neighbors=10, progress=False)
    cmap.compute_mapping_matrix()
    cmap.transfer(obs_keys="celltype", progress=False)
    mean_distance = float(nbrs.distances.astype(np.float64).mean())
    assert query.uns["cellmapper"]["sigma"] == pytest.approx(mean_distance, rel=1e-5)
    m = cmap.compute_mapping_matrix(sigma=0.7)
    d = nbrs.distances.astype(np.float64)
    w = np.exp(-(d**2) / (2 * 0.7**2))
    expected = w / w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.take_along_axis(m.toarray(), nbrs.indices, axis=1), expected, atol=1e-5)


def test_fit_reports_progress_events(pair):
    query, reference = pair
    events: list[Progress] = []
    CellMapper(query, reference).fit(
        use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X", progress=events.append
    )
    stages = list(dict.fromkeys(e.stage for e in events))
    assert "neighbour search" in stages[:2]
    assert stages.index("neighbour search") < stages.index("mapping matrix")
    assert "mapping matrix" in stages and "transfer celltype" in stages and "transfer X_umap" in stages
    # the labels last: their graph vote waits for the reference graph searched beside the transfer
    order = [stages.index(stage) for stage in ("transfer celltype", "transfer expression", "graph vote")]
    assert order == sorted(order)
    assert all(isinstance(e, Progress) and 0 <= e.done <= e.total for e in events)


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize("stop_at", ["first", "transfer"])
def test_cancelled_run_leaves_query_unmodified(pair, stop_at):
    query, reference = pair
    q_before, r_before = snapshot(query), snapshot(reference)
    gen = CellMapper(query, reference).iter_fit(
        use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X", chunk_size=7
    )
    seen = []
    for event in gen:
        seen.append(event)
        if stop_at == "first" and len(seen) == 2:
            break
        if stop_at == "transfer" and event.stage == "transfer X_umap":
            break
    else:  # pragma: no cover
        pytest.fail("the run finished before it could be cancelled")
    gen.close()
    assert_unchanged(query, q_before)
    assert_unchanged(reference, r_before)
    assert "celltype_pred" not in query.obs and "cellmapper" not in query.uns


def test_iter_fit_returns_the_mapper(pair):
    query, reference = pair
    cmap = CellMapper(query, reference)
    gen = cmap.iter_fit(use_rep="X_joint", obs_keys="celltype")
    with pytest.raises(StopIteration) as stop:
        while True:
            assert isinstance(next(gen), Progress)
    assert stop.value.value is cmap
    assert "celltype_pred" in query.obs


# ---------------------------------------------------------------- bad input


def _dup_names(a: AnnData) -> None:
    names = a.obs_names.to_list()
    names[1] = names[0]
    a.obs_names = names


def _set(role, fn):
    def apply(query, reference):
        fn(query if role == "query" else reference)

    return apply


def _nan(a):
    a.obsm["X_joint"][3, 1] = np.nan


def _inf(a):
    a.obsm["X_joint"][0, 0] = np.inf


BAD_INPUTS = {
    "use_rep missing in query": (
        _set("query", lambda a: a.obsm.pop("X_joint")),
        {},
        [r"use_rep='X_joint'", "missing", "query"],
    ),
    "use_rep missing in reference": (
        _set("reference", lambda a: a.obsm.pop("X_joint")),
        {},
        [r"use_rep='X_joint'", "missing", "reference"],
    ),
    "different widths": (
        _set("reference", lambda a: a.obsm.__setitem__("X_joint", a.obsm["X_joint"][:, :5].copy())),
        {},
        ["8 dimensions in the query", "5 in the reference"],
    ),
    "NaN in query embedding": (_set("query", _nan), {}, ["query", "NaN or inf", "1 cell"]),
    "inf in reference embedding": (_set("reference", _inf), {}, ["reference", "NaN or inf"]),
    "k larger than reference": (
        lambda q, r: None,
        {"n_neighbors": 121},
        ["n_neighbors=121", "larger", "120 cells"],
    ),
    "k not positive": (lambda q, r: None, {"n_neighbors": 0}, ["n_neighbors", "positive"]),
    "empty reference": (None, {}, ["reference has no cells"]),
    "empty query": (None, {}, ["query has no cells"]),
    "obs key missing": (
        lambda q, r: None,
        {"obs_keys": ["celltype", "cell_type"]},
        ["'cell_type'", "not in reference.obs"],
    ),
    "obs key all missing": (
        _set(
            "reference",
            lambda a: a.obs.__setitem__("celltype", pd.Categorical([None] * a.n_obs, categories=["x"])),
        ),
        {},
        ["'celltype'", "only missing values"],
    ),
    "duplicate query names": (_set("query", _dup_names), {}, ["query", "duplicate obs names", "qry0"]),
    "duplicate reference names": (_set("reference", _dup_names), {}, ["reference", "duplicate obs names"]),
    "unknown backend": (lambda q, r: None, {"backend": "hnsw"}, ["Unknown backend 'hnsw'"]),
    "unknown kernel": (lambda q, r: None, {"kernel": "gaussian"}, ["Unknown kernel 'gaussian'"]),
    "unknown metric": (lambda q, r: None, {"metric": "l1"}, ["Unknown metric 'l1'"]),
    "obsm key missing": (
        lambda q, r: None,
        {"obsm_keys": "X_tsne"},
        ["obsm key 'X_tsne'", "not in reference.obsm"],
    ),
    "layer missing": (lambda q, r: None, {"layer_key": "counts"}, ["layer_key='counts'", "not a layer"]),
    "unknown head": (lambda q, r: None, {"head": "mlp"}, ["Unknown head 'mlp'"]),
    "head weight above 1": (lambda q, r: None, {"head_weight": 1.5}, ["head_weight", "between 0 and 1"]),
    "self_training above 1": (
        lambda q, r: None,
        {"self_training": 2},
        ["self_training", "between 0 and 1", "None: no self-training"],
    ),
    "graph_vote above 1": (
        lambda q, r: None,
        {"graph_vote": 1.5},
        ["graph_vote", "between 0 and 1", "None: no graph vote"],
    ),
    "min_confidence negative": (
        lambda q, r: None,
        {"min_confidence": -0.1},
        ["min_confidence", "between 0 and 1"],
    ),
    "unknown scaling": (lambda q, r: None, {"scaling": "cell"}, ["Unknown scaling 'cell'"]),
    "unknown normalize": (lambda q, r: None, {"normalize": "yes"}, ["Unknown normalize 'yes'", "auto"]),
    "bad n_top_genes": (lambda q, r: None, {"n_top_genes": 2}, ["n_top_genes", ">= 5"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_before_search_and_modifies_nothing(case, no_search):
    mutate, kwargs, words = BAD_INPUTS[case]
    if case == "empty reference":
        query, reference = make_pair()
        reference = reference[:0].copy()
    elif case == "empty query":
        query, reference = make_pair()
        query = query[:0].copy()
    else:
        query, reference = make_pair()
        mutate(query, reference)
    q_before, r_before = snapshot(query), snapshot(reference)
    args = {"use_rep": "X_joint", "obs_keys": "celltype", "obsm_keys": "X_umap", "layer_key": "X", **kwargs}
    with pytest.raises(CellMapperInputError) as err:
        CellMapper(query, reference).fit(progress=False, **args)
    for word in words:
        assert word in str(err.value), f"{word!r} not in {err.value}"
    assert isinstance(err.value, ValueError)
    assert_unchanged(query, q_before)
    assert_unchanged(reference, r_before)


def test_gpu_backend_without_gpu(pair, no_search, monkeypatch):
    monkeypatch.setattr(nb, "gpu_available", lambda: False)
    query, reference = pair
    q_before = snapshot(query)
    with pytest.raises(CellMapperInputError, match="GPU"):
        CellMapper(query, reference).fit(
            use_rep="X_joint", obs_keys="celltype", backend="cupy", progress=False
        )
    assert_unchanged(query, q_before)


def test_gpu_backend_on_this_machine(pair, no_search):
    if nb.gpu_available():  # pragma: no cover - GPU machines
        pytest.skip("a GPU is present")
    query, reference = pair
    with pytest.raises(CellMapperInputError, match="GPU"):
        CellMapper(query, reference).fit(
            use_rep="X_joint", obs_keys="celltype", backend="cupy", progress=False
        )


def test_step_by_step_bad_inputs_raise_before_search(pair, no_search):
    query, reference = pair
    cmap = CellMapper(query, reference)
    with pytest.raises(CellMapperInputError, match="missing"):
        cmap.compute_neighbors(use_rep="X_nope", progress=False)
    with pytest.raises(CellMapperInputError, match="larger"):
        cmap.compute_neighbors(use_rep="X_joint", n_neighbors=500, progress=False)
    with pytest.raises(CellMapperInputError, match="Unknown backend"):
        cmap.compute_neighbors(use_rep="X_joint", backend="gpu", progress=False)


def test_transfer_bad_key_after_fit_keeps_query(pair):
    query, reference = pair
    cmap = CellMapper(query, reference).fit(use_rep="X_joint", obs_keys="celltype", progress=False)
    before = snapshot(query)
    with pytest.raises(CellMapperInputError, match="nope"):
        cmap.transfer(obs_keys=["batch", "nope"], progress=False)
    with pytest.raises(CellMapperInputError, match="Unknown kernel"):
        cmap.compute_mapping_matrix(kernel="knn")
    assert_unchanged(query, before)


@pytest.mark.parametrize("bad", [None, np.zeros((3, 3)), pd.DataFrame({"a": [1]})])
def test_non_anndata_raises(bad, pair):
    query, _ = pair
    with pytest.raises(CellMapperInputError, match="AnnData"):
        CellMapper(query, bad)
    with pytest.raises(CellMapperInputError, match="must be an AnnData"):
        CellMapper(bad, query)


# ---------------------------------------------------------------- realistic data


def test_pbmc68k_reduced_accuracy():
    sc = pytest.importorskip("scanpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.datasets.pbmc68k_reduced()
    order = np.random.default_rng(0).permutation(adata.n_obs)
    n_ref = int(adata.n_obs * 0.6)
    reference = adata[np.sort(order[:n_ref])].copy()
    query = adata[np.sort(order[n_ref:])].copy()
    truth = query.obs["bulk_labels"].to_numpy().copy()
    query.obs = query.obs.drop(columns=["bulk_labels", "louvain"])
    cmap = CellMapper(query, reference).fit(
        use_rep="X_pca",
        obs_keys=["bulk_labels", "n_counts"],
        obsm_keys="X_umap",
        layer_key="X",
        n_neighbors=15,
        progress=False,
    )
    pred = query.obs["bulk_labels_pred"]
    assert list(pred.cat.categories) == list(reference.obs["bulk_labels"].cat.categories)
    assert list(query.uns["bulk_labels_pred_colors"]) == list(reference.uns["bulk_labels_colors"])
    acc = np.mean(pred.astype(str).to_numpy() == truth.astype(str))
    assert acc > 0.7, acc
    # UMAP positions land near the query cells' own UMAP positions
    err = np.linalg.norm(query.obsm["X_umap_pred"] - query.obsm["X_umap"], axis=1)
    assert np.median(err) < 2.0
    assert isinstance(cmap.query_imputed.X, np.ndarray)  # dense X in, dense out
    assert cmap.query_imputed.shape == (query.n_obs, reference.n_vars)


def test_k_too_large_with_joint_embedding_raises_before_heavy_work(pair, no_search, monkeypatch):
    query, reference = pair

    def no_joint(*args, **kwargs):
        pytest.fail("the joint embedding was computed although n_neighbors is invalid")

    monkeypatch.setattr(mapper_mod, "build_joint_embedding", no_joint)
    with pytest.raises(CellMapperInputError, match="larger"):
        CellMapper(query, reference).fit(use_rep=None, obs_keys="celltype", n_neighbors=500, progress=False)


def test_provenance_records_whichever_cupy_distribution_is_installed(monkeypatch):
    """cupy is published per CUDA major (cupy-cuda12x, cupy-cuda13x, or a source build 'cupy')."""
    from importlib.metadata import PackageNotFoundError

    from napari_cellmapper.core import mapper

    real = mapper.version

    def fake_version(name):
        if name == "cupy-cuda13x":
            return "14.2.0"
        if name.startswith("cupy"):
            raise PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(mapper, "version", fake_version)
    versions = mapper._versions()
    assert versions["cupy-cuda13x"] == "14.2.0"
    assert "cupy-cuda12x" not in versions and "cupy" not in versions


def test_min_confidence_labels_uncertain_cells_unassigned():
    query, reference = make_pair(seed=4)
    rng = np.random.default_rng(0)
    query.obsm["X_joint"] = rng.normal(size=query.obsm["X_joint"].shape).astype(np.float32)  # ambiguous cells
    CellMapper(query, reference).fit("X_joint", obs_keys="celltype", n_neighbors=15, progress=False)
    conf = query.obs["celltype_conf"].to_numpy()
    threshold = float(np.median(conf))
    q2 = query.copy()
    CellMapper(q2, reference).fit(
        "X_joint", obs_keys="celltype", n_neighbors=15, min_confidence=threshold, progress=False
    )
    pred = q2.obs["celltype_pred"].astype(str).to_numpy()
    low = conf < threshold
    assert low.any() and (~low).any()
    assert (pred[low] == "unassigned").all()
    np.testing.assert_array_equal(pred[~low], query.obs["celltype_pred"].astype(str).to_numpy()[~low])
    assert "unassigned" in q2.obs["celltype_pred"].cat.categories
    assert len(q2.uns["celltype_pred_colors"]) == len(q2.obs["celltype_pred"].cat.categories)
    assert q2.uns["cellmapper"]["labels"]["min_confidence"] == threshold


def test_head_none_uncalibrated_is_the_plain_knn_transfer():
    query, reference = make_pair(seed=6)
    cmap = CellMapper(query, reference).fit(
        "X_joint", obs_keys="celltype", n_neighbors=10, head="none", calibrate=False, progress=False
    )
    codes = reference.obs["celltype"].cat.codes.to_numpy()
    onehot = np.eye(len(reference.obs["celltype"].cat.categories))[codes]
    expected = cmap.mapping_matrix @ onehot
    np.testing.assert_allclose(query.obsm["celltype_proba"].to_numpy(), expected, atol=1e-5)


def test_head_and_calibration_change_probabilities_not_the_mapping_matrix():
    query, reference = make_pair(seed=7)
    query.obsm["X_joint"] = query.obsm["X_joint"] + np.random.default_rng(0).normal(
        scale=4, size=(60, 8)
    ).astype(np.float32)
    plain = query.copy()
    m_plain = CellMapper(plain, reference).fit(
        "X_joint", obs_keys="celltype", obsm_keys="X_umap", n_neighbors=10, head="none", calibrate=False,
        progress=False,
    ).mapping_matrix  # fmt: skip
    cmap = CellMapper(query, reference).fit(
        "X_joint", obs_keys="celltype", obsm_keys="X_umap", n_neighbors=10, progress=False
    )
    assert (cmap.mapping_matrix != m_plain).nnz == 0
    np.testing.assert_allclose(query.obsm["X_umap_pred"], plain.obsm["X_umap_pred"])
    proba = query.obsm["celltype_proba"].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(proba, plain.obsm["celltype_proba"].to_numpy())
    info = query.uns["cellmapper"]["labels"]
    assert info["head"] == "lda" and info["calibrate"] and info["celltype"]["temperature"] > 0


def test_graph_vote_mixes_the_reference_graph_into_the_labels_only(search_calls):
    query, reference = make_pair(seed=7)
    query.obsm["X_joint"] = query.obsm["X_joint"] + np.random.default_rng(0).normal(
        scale=4, size=(60, 8)
    ).astype(np.float32)
    off, on = query.copy(), query.copy()
    m_off = CellMapper(off, reference).fit("X_joint", obs_keys="celltype", graph_vote=None, progress=False)
    searched_off = len(search_calls)
    m_on = CellMapper(on, reference).fit("X_joint", obs_keys="celltype", progress=False)
    assert (m_on.mapping_matrix != m_off.mapping_matrix).nnz == 0  # labels only: M is untouched
    info_on, info_off = on.uns["cellmapper"]["labels"], off.uns["cellmapper"]["labels"]
    assert info_on["graph_vote"] == graph_vote.GRAPH_VOTE and info_off.get("graph_vote") is None
    assert info_on["celltype"]["graph_vote_k"] == graph_vote.GRAPH_VOTE_K
    assert "graph_vote_k" not in info_off["celltype"]
    assert not np.allclose(on.obsm["celltype_proba"].to_numpy(), off.obsm["celltype_proba"].to_numpy())
    # one more search: the reference's own graph, at the vote's k, kept on the mapper
    assert len(search_calls) - 2 * searched_off == 1
    assert m_on.reference_neighbors.k == graph_vote.GRAPH_VOTE_K
    # with presence or quality asked for, the vote takes that graph: no further search
    before = len(search_calls)
    both = CellMapper(query.copy(), reference).fit(
        "X_joint", obs_keys="celltype", reference_graph=True, reference_k=12, progress=False
    )
    assert len(search_calls) - before == searched_off + 1 and both.reference_neighbors.k == 12


def test_self_training_refits_the_head_on_confident_query_cells_only():
    query, reference = make_pair(seed=7)
    query.obsm["X_joint"] = query.obsm["X_joint"] + np.random.default_rng(0).normal(
        scale=4, size=(60, 8)
    ).astype(np.float32)
    off, on = query.copy(), query.copy()
    m_off = CellMapper(off, reference).fit(
        "X_joint", obs_keys="celltype", n_neighbors=10, self_training=None, progress=False
    )
    m_on = CellMapper(on, reference).fit("X_joint", obs_keys="celltype", n_neighbors=10, progress=False)
    assert (m_on.mapping_matrix != m_off.mapping_matrix).nnz == 0  # labels only: M is untouched
    info_on, info_off = on.uns["cellmapper"]["labels"], off.uns["cellmapper"]["labels"]
    assert info_on["self_training"] == 0.9 and info_off.get("self_training") is None  # None is not stored
    assert 0 < info_on["celltype"]["self_training_cells"] <= 60
    assert "self_training_cells" not in info_off["celltype"]
    assert not np.allclose(on.obsm["celltype_proba"].to_numpy(), off.obsm["celltype_proba"].to_numpy())
    # the cells that train are those the pool (uncalibrated: what the off run reports) labels at
    # least that confidently
    plain = query.copy()
    CellMapper(plain, reference).fit(
        "X_joint", obs_keys="celltype", n_neighbors=10, self_training=None, calibrate=False, progress=False
    )
    conf = plain.obs["celltype_conf"].to_numpy()
    threshold = float(np.quantile(conf, 0.6))
    trained = query.copy()
    CellMapper(trained, reference).fit(
        "X_joint",
        obs_keys="celltype",
        n_neighbors=10,
        self_training=threshold,
        calibrate=False,
        progress=False,
    )
    used = trained.uns["cellmapper"]["labels"]["celltype"]["self_training_cells"]
    assert used == int((conf >= threshold).sum()) and 0 < used < 60


def _gene_pair(seed: int = 0) -> tuple[AnnData, AnnData]:
    """Reference and query whose X are the same 4 gene programs of 12 genes (types by program)."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(12)]

    def make(n: int) -> AnnData:
        types = rng.integers(0, 4, n)
        x = rng.normal(0, 0.2, (n, 12)).astype(np.float32)
        x[np.arange(n)[:, None], types[:, None] * 3 + np.arange(3)] += 3
        obs = pd.DataFrame({"cell_type": pd.Categorical.from_codes(types, list("abcd"))})
        obs.index = obs.index.astype(str)
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))

    return make(200), make(100)


def test_use_rep_x_matches_genes_by_name_not_position():
    reference, query = _gene_pair()
    truth = query.obs["cell_type"].to_numpy()
    shuffled = query[:, query.var_names[np.random.default_rng(1).permutation(12)]].copy()
    CellMapper(shuffled, reference).fit(use_rep="X", obs_keys="cell_type", n_neighbors=5)
    assert (shuffled.obs["cell_type_pred"].to_numpy() == truth).mean() == 1.0


def test_use_rep_x_with_different_genes_is_refused_before_the_search(search_calls):
    reference, query = _gene_pair()
    query.var_names = [*query.var_names[:-1], "other"]
    with pytest.raises(CellMapperInputError, match=r"use_rep='X' compares genes.*1 of the reference's"):
        CellMapper(query, reference).fit(use_rep="X", obs_keys="cell_type", n_neighbors=5)
    assert search_calls == []


@pytest.mark.parametrize("as_sparse", [True, False])
def test_nan_in_the_reference_expression_is_refused_before_the_search(search_calls, as_sparse):
    reference, query = _gene_pair()
    x = reference.X.copy()
    x[3, 2] = np.nan
    reference.layers["counts"] = sparse.csr_matrix(x) if as_sparse else x
    with pytest.raises(CellMapperInputError, match=r"'counts' expression holds 1 NaN or inf.*layer_key"):
        CellMapper(query, reference).fit(use_rep="X", obs_keys="cell_type", n_neighbors=5, layer_key="counts")
    assert search_calls == [] and "cell_type_pred" not in query.obs


def test_a_type_without_counts_in_the_shared_genes_is_named():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(12)]

    def make(n: int, silent: bool) -> AnnData:
        types = rng.integers(0, 4, n)
        x = rng.poisson(0.2, (n, 12)).astype(np.float32)
        x[np.arange(n)[:, None], types[:, None] * 3 + np.arange(3)] += rng.poisson(5, (n, 3))
        if silent:  # type 'd' expresses nothing over these genes in the reference
            x[types == 3] = 0
        obs = pd.DataFrame({"cell_type": pd.Categorical.from_codes(types, list("abcd"))})
        obs.index = obs.index.astype(str)
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))

    reference, query = make(300, True), make(100, False)
    with (
        warnings.catch_warnings(),
        pytest.warns(UserWarning, match=r"1 type\(s\) of 'cell_type' cannot be transferred.*'d'"),
    ):
        warnings.filterwarnings("ignore", message=".*zero counts over the shared genes; they are left")
        CellMapper(query, reference).fit(obs_keys="cell_type", n_neighbors=5, n_top_genes=None)
    assert "d" not in set(query.obs["cell_type_pred"].astype(str))
