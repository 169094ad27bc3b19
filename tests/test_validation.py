"""Input checks: each raises CellMapperInputError naming the problem, and modifies nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from napari_cellmapper import CellMapperInputError
from napari_cellmapper.core import validation as val


def _adata(n: int = 5, names=None) -> AnnData:
    a = AnnData(X=np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    a.obs_names = names if names is not None else [f"c{i}" for i in range(n)]
    a.obsm["emb"] = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return a


def test_error_is_value_error():
    assert issubclass(CellMapperInputError, ValueError)
    assert val.CellMapperInputError is CellMapperInputError


@pytest.mark.parametrize(
    ("keys", "expected"), [(None, []), ("a", ["a"]), (["a", "b"], ["a", "b"]), (("a",), ["a"])]
)
def test_as_key_list(keys, expected):
    assert val.as_key_list(keys) == expected


def test_check_choice():
    val.check_choice("kernel", "gauss", val.KERNELS)
    with pytest.raises(CellMapperInputError, match=r"Unknown kernel 'gaus'.*'gauss'"):
        val.check_choice("kernel", "gaus", val.KERNELS)


def test_known_choices():
    assert set(val.KERNELS) == {"gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal", "hnoca"}
    assert set(val.BACKENDS) >= {"auto", "faiss-exact", "faiss-ivf", "cupy"}
    assert set(val.METRICS) == {"euclidean", "cosine"}


def test_check_not_empty():
    val.check_not_empty(_adata(1), "query")
    with pytest.raises(CellMapperInputError, match=r"reference has no cells"):
        val.check_not_empty(_adata(0), "reference")


def test_check_unique_obs_names():
    val.check_unique_obs_names(_adata(3), "query")
    with pytest.raises(CellMapperInputError, match=r"duplicate obs names.*'x'"):
        val.check_unique_obs_names(_adata(3, names=["x", "x", "y"]), "query")


def test_get_rep_variants():
    a = _adata(4)
    np.testing.assert_array_equal(val.get_rep(a, "emb", "query"), a.obsm["emb"])
    np.testing.assert_array_equal(val.get_rep(a, "X", "query"), a.X)
    a.obsm["df"] = pd.DataFrame(np.ones((4, 2)), index=a.obs_names)
    assert val.get_rep(a, "df", "query").shape == (4, 2)
    a.obsm["sp"] = sparse.csr_matrix(np.eye(4, 3))
    out = val.get_rep(a, "sp", "query")
    assert isinstance(out, np.ndarray) and out.shape == (4, 3)


def test_get_rep_missing_names_key_and_role():
    with pytest.raises(CellMapperInputError, match=r"use_rep='X_scvi' is missing from the reference.*'emb'"):
        val.get_rep(_adata(), "X_scvi", "reference")


def test_get_rep_non_numeric():
    a = _adata(3)
    a.obsm["txt"] = np.array([["a", "b"]] * 3)
    with pytest.raises(CellMapperInputError, match="numeric"):
        val.get_rep(a, "txt", "query")


def test_check_reps_width_and_finite():
    q, r = np.zeros((3, 4)), np.zeros((5, 4))
    val.check_reps(q, r, "emb")
    with pytest.raises(CellMapperInputError, match=r"4 dimensions in the query but 3"):
        val.check_reps(q, np.zeros((5, 3)), "emb")
    bad = r.copy()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(CellMapperInputError, match=r"reference.*NaN or inf in 2 cell"):
        val.check_reps(q, bad, "emb")
    badq = q.copy()
    badq[0, 0] = -np.inf
    with pytest.raises(CellMapperInputError, match=r"query.*NaN or inf in 1 cell"):
        val.check_reps(badq, r, "emb")


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_check_k_rejects_non_positive_integers(k):
    with pytest.raises(CellMapperInputError, match="positive integer"):
        val.check_k(k, 10)


def test_check_k_bounds():
    val.check_k(10, 10)
    val.check_k(np.int64(3), 10)
    with pytest.raises(CellMapperInputError, match=r"n_neighbors=11 is larger than the reference \(10 cell"):
        val.check_k(11, 10)


def test_check_obs_keys():
    a = _adata(4)
    a.obs["ct"] = pd.Categorical(["a", "b", "a", None])
    a.obs["empty"] = pd.Series([np.nan] * 4, index=a.obs_names)
    a.obs["txt"] = ["x", "y", "x", "y"]
    a.obs["num"] = [1.0, 2.0, 3.0, 4.0]
    before = a.obs.copy()
    val.check_obs_keys(a, ["ct", "txt", "num"])
    with pytest.raises(CellMapperInputError, match=r"obs key 'missing' is not in reference.obs"):
        val.check_obs_keys(a, ["ct", "missing"])
    with pytest.raises(CellMapperInputError, match=r"'empty'.*only missing values"):
        val.check_obs_keys(a, ["empty"])
    pd.testing.assert_frame_equal(a.obs, before)


def test_is_categorical_like():
    assert val.is_categorical_like(pd.Series(["a", "b"]))
    assert val.is_categorical_like(pd.Series(["a", "b"], dtype="category"))
    assert val.is_categorical_like(pd.Series([True, False]))
    assert not val.is_categorical_like(pd.Series([1.0, 2.0]))
    assert not val.is_categorical_like(pd.Series([1, 2]))


def test_check_obsm_keys():
    a = _adata(3)
    val.check_obsm_keys(a, ["emb"])
    with pytest.raises(CellMapperInputError, match=r"obsm key 'X_umap' is not in reference.obsm"):
        val.check_obsm_keys(a, ["X_umap"])
    a.obsm["nan"] = np.array([[0.0], [np.nan], [1.0]])
    with pytest.raises(CellMapperInputError, match="NaN or inf"):
        val.check_obsm_keys(a, ["nan"])


def test_check_layer():
    a = _adata(3)
    a.layers["counts"] = a.X.copy()
    val.check_layer(a, "X")
    val.check_layer(a, "counts")
    with pytest.raises(CellMapperInputError, match=r"layer_key='raw' is not a layer.*'counts'"):
        val.check_layer(a, "raw")
    b = AnnData(obs=pd.DataFrame(index=["a", "b"]))
    with pytest.raises(CellMapperInputError, match=r"reference.X is empty"):
        val.check_layer(b, "X")


def test_get_rep_with_no_columns_is_refused_before_the_search(monkeypatch):
    from _core_fixtures import make_pair

    from napari_cellmapper import CellMapper
    from napari_cellmapper.core import mapper

    query, reference = make_pair(n_query=20, n_ref=30, seed=0)
    for adata in (query, reference):
        adata.obsm["empty"] = np.zeros((adata.n_obs, 0))
    with pytest.raises(CellMapperInputError, match="0 columns"):
        val.get_rep(reference, "empty", "reference")

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran")

    monkeypatch.setattr(mapper, "iter_search", no_search, raising=False)
    with pytest.raises(CellMapperInputError, match="0 columns"):
        CellMapper(query, reference).fit("empty", obs_keys="celltype", n_neighbors=5, progress=False)
