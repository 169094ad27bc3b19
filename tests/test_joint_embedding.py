"""use_rep=None: a joint representation from the shared genes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _core_fixtures import assert_unchanged, make_pair, snapshot
from anndata import AnnData
from scipy import sparse

from napari_cellmapper import CellMapper, CellMapperInputError
from napari_cellmapper.core import joint_embedding as J


def _with_zero_cell_and_gene(sparse_x=True):
    query, reference = make_pair(n_query=40, n_ref=80, n_genes=40, seed=3, sparse_x=sparse_x)
    qx = query.X.toarray() if sparse.issparse(query.X) else query.X.copy()
    qx[5] = 0  # a query cell without counts
    qx[:, 7] = 0  # a gene never detected in the query
    query.X = sparse.csr_matrix(qx) if sparse_x else qx
    return query, reference


@pytest.mark.parametrize("method", ["pca", "cca"])
@pytest.mark.parametrize("sparse_x", [True, False])
def test_zero_cells_and_genes_are_handled(method, sparse_x):
    query, reference = _with_zero_cell_and_gene(sparse_x)
    before_q, before_r = snapshot(query), snapshot(reference)
    with pytest.warns(UserWarning) as record:
        emb = J.build_joint_embedding(query, reference, method=method, n_comps=10)
    messages = " ".join(str(w.message) for w in record)
    assert "1 query cell(s) have zero counts" in messages
    assert "1 shared gene(s) have no counts" in messages
    assert emb.method == method
    assert "gene7" not in emb.genes and len(emb.genes) == 39
    assert emb.query.shape == (40, 10) and emb.reference.shape == (80, 10)
    assert emb.query.dtype == np.float32
    assert np.all(np.isfinite(emb.query)) and np.all(np.isfinite(emb.reference))
    np.testing.assert_array_equal(emb.query_usable, np.arange(40) != 5)
    assert emb.reference_usable.all()
    norms = np.linalg.norm(np.vstack([emb.query[emb.query_usable], emb.reference]), axis=1)
    if method == "cca":  # canonical vectors at unit length, as Seurat's; PCA coordinates as they are
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        assert not np.allclose(norms, 1.0, rtol=1e-2)
    assert np.all(emb.query[~emb.query_usable] == 0)
    assert emb.info["n_genes"] == 39 and emb.info["n_comps"] == 10 and emb.info["log_normalised"]
    assert_unchanged(query, before_q)
    assert_unchanged(reference, before_r)


@pytest.mark.parametrize("method", ["pca", "cca"])
def test_joint_embedding_separates_cell_types(method):
    query, reference = make_pair(n_query=60, n_ref=120, n_genes=40, seed=5)
    emb = J.build_joint_embedding(query, reference, method=method, n_comps=8)
    # nearest reference cell (cosine on unit rows) has the query cell's type
    nearest = np.argmax(emb.query @ emb.reference.T, axis=1)
    acc = np.mean(reference.obs["celltype"].to_numpy()[nearest] == query.obs["true_celltype"].to_numpy())
    assert acc > 0.9


def test_cellmapper_use_rep_none_leaves_zero_cells_unmapped():
    query, reference = _with_zero_cell_and_gene()
    with (
        pytest.warns(UserWarning, match="zero counts"),
        pytest.warns(UserWarning, match="shared gene\\(s\\) have no counts"),
    ):
        cmap = CellMapper(query, reference).fit(
            use_rep=None, obs_keys="celltype", n_neighbors=10, progress=False, n_comps=10
        )
    unmapped = query.obs["cellmapper_unmapped"].to_numpy()
    np.testing.assert_array_equal(unmapped, np.arange(40) == 5)
    np.testing.assert_array_equal(cmap.unmapped, unmapped)
    assert query.obs["celltype_pred"].iloc[5] == "unmapped"
    assert query.obs["celltype_conf"].iloc[5] == 0
    assert query.obs["celltype_entropy"].iloc[5] == 1
    assert not query.obs["celltype_pred"].isna().any()
    assert not np.isnan(query.obs["celltype_conf"].to_numpy()).any()
    assert "X_cellmapper_joint" in query.obsm
    assert "shared genes" in str(query.uns["cellmapper"]["use_rep"])
    pred, truth = query.obs["celltype_pred"].to_numpy(), query.obs["true_celltype"].to_numpy()
    acc = np.mean(pred[~unmapped] == truth[~unmapped])
    assert acc > 0.9


def test_zero_count_reference_cells_are_excluded():
    query, reference = make_pair(n_query=30, n_ref=80, seed=6)
    rx = reference.X.toarray()
    rx[[0, 1]] = 0
    reference.X = sparse.csr_matrix(rx)
    with pytest.warns(UserWarning, match="2 reference cell"):
        cmap = CellMapper(query, reference).fit(
            use_rep=None, obs_keys="celltype", n_neighbors=5, progress=False
        )
    assert not np.isin(cmap.neighbors.indices, [0, 1]).any()
    assert cmap.mapping_matrix[:, [0, 1]].nnz == 0


def test_too_few_shared_genes_raises():
    query, reference = make_pair(n_query=10, n_ref=20, n_genes=40)
    query.var_names = [f"ENSG{i:05d}" for i in range(38)] + ["gene38", "gene39"]
    with pytest.raises(CellMapperInputError, match=r"share 2 gene name\(s\); at least 5"):
        J.build_joint_embedding(query, reference)


def test_too_few_shared_genes_raises_before_search_in_cellmapper(monkeypatch):
    import napari_cellmapper.core.mapper as mapper_mod

    query, reference = make_pair(n_query=10, n_ref=20, n_genes=40)
    query.var_names = [f"other{i}" for i in range(40)]
    before_q, before_r = snapshot(query), snapshot(reference)
    monkeypatch.setattr(mapper_mod, "iter_search", lambda *a, **k: pytest.fail("search must not run"))
    with pytest.raises(CellMapperInputError, match="gene identifiers"):
        CellMapper(query, reference).fit(use_rep=None, obs_keys="celltype", n_neighbors=5, progress=False)
    assert_unchanged(query, before_q)
    assert_unchanged(reference, before_r)


def test_all_zero_query_raises():
    query, reference = make_pair(n_query=10, n_ref=20)
    query.X = sparse.csr_matrix(query.shape, dtype=np.float32)
    with pytest.raises(CellMapperInputError, match="Every query cell has zero counts"):
        J.build_joint_embedding(query, reference)


def test_unknown_method_raises():
    query, reference = make_pair(n_query=10, n_ref=20)
    with pytest.raises(CellMapperInputError, match="Unknown joint method 'harmony'"):
        J.build_joint_embedding(query, reference, method="harmony")


def test_shared_genes_in_reference_order():
    q = AnnData(np.ones((2, 4), np.float32), var=pd.DataFrame(index=["d", "b", "a", "zz"]))
    r = AnnData(np.ones((2, 4), np.float32), var=pd.DataFrame(index=["a", "b", "c", "d"]))
    assert J.shared_genes(q, r) == ["a", "b", "d"]


def test_log_normalised_input_is_not_renormalised():
    query, reference = make_pair(n_query=30, n_ref=60, seed=2)
    for a in (query, reference):
        a.X = np.log1p(a.X.toarray() * 1.37).astype(np.float32)
    emb = J.build_joint_embedding(query, reference, n_comps=5)
    assert emb.info["log_normalised"] is False
    assert np.all(np.isfinite(emb.query))


def test_layer_is_used():
    query, reference = make_pair(n_query=20, n_ref=40, seed=4)
    for a in (query, reference):
        a.layers["counts"] = a.X.copy()
        a.X = sparse.csr_matrix(a.shape, dtype=np.float32)  # X unusable: only the layer has counts
    emb = J.build_joint_embedding(query, reference, layer="counts", n_comps=5)
    assert emb.query_usable.all()


def test_n_comps_capped_by_genes():
    query, reference = make_pair(n_query=20, n_ref=40, n_genes=8, seed=4)
    emb = J.build_joint_embedding(query, reference, n_comps=50)
    assert emb.query.shape[1] == emb.info["n_comps"] == 7


def test_l2_normalise_keeps_zero_rows():
    out = J.l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0]])


def test_shared_genes_without_counts_raise_clear_error():
    query, reference = make_pair(n_query=20, n_ref=40, n_genes=20, seed=1)
    qx, rx = query.X.toarray(), reference.X.toarray()
    qx[:, :10] = 0  # query detects only genes 10..19
    rx[:, 10:] = 0  # reference detects only genes 0..9
    qx[:, 0] = rx[:, 0] = 0
    qx[:, 10] += 1
    rx[:, 0] += 1
    query.X, reference.X = sparse.csr_matrix(qx), sparse.csr_matrix(rx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CellMapperInputError, match="gene"):
            J.build_joint_embedding(query, reference)


def test_cca_single_query_cell_is_clear():
    query, reference = make_pair(n_query=1, n_ref=40)
    with warnings.catch_warnings():
        # one query cell leaves some shared genes without counts: that warning is expected here
        warnings.filterwarnings("ignore", ".*shared gene", UserWarning)
        try:
            J.build_joint_embedding(query, reference, method="cca")
        except CellMapperInputError:
            pass  # a clear input error is acceptable; a crash inside scipy is not


def test_duplicate_var_names_are_reported(monkeypatch):
    import napari_cellmapper.core.mapper as mapper_mod

    query, reference = make_pair(n_query=20, n_ref=40)
    names = reference.var_names.tolist()
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.var_names = names
    monkeypatch.setattr(mapper_mod, "iter_search", lambda *a, **k: pytest.fail("search must not run"))
    with pytest.raises(CellMapperInputError, match="var names|duplicate"):
        CellMapper(query, reference).fit(use_rep=None, obs_keys="celltype", progress=False)


def _agreement(a: J.JointEmbedding, b: J.JointEmbedding) -> float:
    """|correlation| of the first (cell-type) component of the two embeddings, over all cells."""
    x = np.concatenate([a.query[:, 0], a.reference[:, 0]])
    y = np.concatenate([b.query[:, 0], b.reference[:, 0]])
    return abs(float(np.corrcoef(x, y)[0, 1]))


@pytest.mark.parametrize("scaling", ["dataset", "gene"])
def test_implicit_sparse_path_matches_the_dense_path(monkeypatch, scaling):
    query, reference = make_pair(n_query=150, n_ref=300, n_genes=60, seed=8)
    dense = J.build_joint_embedding(query, reference, n_comps=8, scaling=scaling)
    monkeypatch.setattr(J, "DENSE_LIMIT", 0)
    implicit = J.build_joint_embedding(query, reference, n_comps=8, scaling=scaling)
    assert dense.info["solver"].startswith("exact") and implicit.info["solver"].startswith("randomized")
    assert _agreement(dense, implicit) > 0.99
    nearest = np.argmax(implicit.query @ implicit.reference.T, axis=1)
    truth = query.obs["true_celltype"].to_numpy()
    assert np.mean(reference.obs["celltype"].to_numpy()[nearest] == truth) > 0.9


def test_implicit_pca_fitted_on_a_sample_projects_everyone(monkeypatch):
    query, reference = make_pair(n_query=200, n_ref=300, n_genes=60, seed=9)
    monkeypatch.setattr(J, "DENSE_LIMIT", 0)
    monkeypatch.setattr(J, "PCA_FIT_ROWS", 100)
    emb = J.build_joint_embedding(query, reference, n_comps=8)
    assert emb.query.shape == (200, 8) and emb.reference.shape == (300, 8)
    nearest = np.argmax(emb.query @ emb.reference.T, axis=1)
    assert (
        np.mean(reference.obs["celltype"].to_numpy()[nearest] == query.obs["true_celltype"].to_numpy()) > 0.9
    )


def test_whole_transcriptome_input_makes_no_dense_copy():
    """10,000 + 5,000 cells x 4,000 sparse genes: a dense copy would take 240 MB; the run must
    stay far below (inputs ~2 MB, the embedding 0.5 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n_genes = 4000

    def counts(n: int, seed: int) -> AnnData:
        x = sparse.random(n, n_genes, density=0.005, random_state=seed, format="csr", dtype=np.float32)
        x.data = np.ceil(x.data * 5)
        a = AnnData(X=x)
        a.var_names = [f"g{j}" for j in range(n_genes)]
        a.obs_names = [f"c{seed}_{i}" for i in range(n)]
        return a

    query, reference = counts(5000, 1), counts(10_000, 2)
    rng.random()
    dense_bytes = (query.n_obs + reference.n_obs) * n_genes * 4
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = J.build_joint_embedding(query, reference, n_comps=10, n_top_genes=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert emb.info["solver"].startswith("randomized") and emb.info["n_genes"] > 3000
    assert peak < dense_bytes / 8, (
        f"peak {peak / 1e6:.0f} MB against a dense copy of {dense_bytes / 1e6:.0f} MB"
    )


def test_highly_variable_genes_are_selected_above_n_top_genes():
    query, reference = make_pair(n_query=60, n_ref=120, n_genes=40, seed=10)
    emb = J.build_joint_embedding(query, reference, n_comps=5, n_top_genes=12)
    assert len(emb.genes) == 12 and emb.info["n_shared_genes"] == 40
    assert "12 highly variable of 40" in emb.info["gene_selection"]
    every = J.build_joint_embedding(query, reference, n_comps=5, n_top_genes=None)
    assert len(every.genes) == 40 and every.info["gene_selection"] == "all shared genes"
    with pytest.raises(CellMapperInputError, match="n_top_genes"):
        J.build_joint_embedding(query, reference, n_top_genes=0)


def test_quantile_normalised_integers_are_not_renormalised_and_the_decision_is_recorded():
    from test_normalization import quantile_normalised

    query, reference = make_pair(n_query=80, n_ref=120, n_genes=40, seed=11)
    query.X = quantile_normalised(1, 80, 40)
    reference.X = quantile_normalised(2, 120, 40)
    auto = J.build_joint_embedding(query, reference, n_comps=5)
    as_is = J.build_joint_embedding(query, reference, n_comps=5, normalize=False)
    counted = J.build_joint_embedding(query, reference, n_comps=5, normalize=True)
    np.testing.assert_allclose(auto.query, as_is.query, atol=1e-5)
    assert not np.allclose(auto.query, counted.query, atol=1e-3)
    assert "quantile" in auto.info["normalize"]["query"] and not auto.info["log_normalised"]
    CellMapper(query, reference).fit(None, obs_keys="celltype", n_neighbors=10, n_comps=5, progress=False)
    assert "quantile" in query.uns["cellmapper"]["joint"]["normalize"]["reference"]


def test_joint_options_reach_the_embedding_through_fit():
    query, reference = make_pair(n_query=60, n_ref=120, n_genes=40, seed=12)
    q1, q2 = query.copy(), query.copy()
    CellMapper(q1, reference).fit(None, obs_keys="celltype", n_neighbors=10, n_comps=6, progress=False)
    CellMapper(q2, reference).fit(
        None, obs_keys="celltype", n_neighbors=10, n_comps=6, scaling="gene", n_top_genes=20, normalize=True,
        progress=False,
    )  # fmt: skip
    joint = q2.uns["cellmapper"]["joint"]
    assert joint["scaling"] == "gene" and joint["n_genes"] == 20 and joint["n_comps"] == 6
    assert joint["normalize"]["setting"] == "True"
    assert not np.allclose(q1.obsm["X_cellmapper_joint"], q2.obsm["X_cellmapper_joint"])


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("role", ["query", "reference"])
def test_non_finite_expression_is_named_and_counted(dense, role):
    query, reference = make_pair(n_query=30, n_ref=40, seed=4, sparse_x=not dense)
    target = query if role == "query" else reference
    x = target.X.toarray() if sparse.issparse(target.X) else target.X.copy()
    x[2, 3], x[2, 4], x[5, 6] = np.nan, np.inf, -np.inf
    target.layers["counts"] = x if dense else sparse.csr_matrix(x)
    other = reference if role == "query" else query
    other.layers["counts"] = other.X.copy()
    message = rf"The {role}'s layer 'counts' holds 3 NaN or inf .*\(2 cell"
    with pytest.raises(CellMapperInputError, match=message):
        J.build_joint_embedding(query, reference, layer="counts")
