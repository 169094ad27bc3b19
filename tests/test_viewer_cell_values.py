"""Per-cell values beyond the result's columns: measured genes, imputed genes, type probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.viewer.cell_values import cell_values, value_choices
from napari_cellmapper.widgets.job import MappingResult


def _case():
    table = AnnData(
        X=sparse.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3)),
        var=pd.DataFrame(index=["a", "b", "c"]),
        obs=pd.DataFrame(index=[f"q{i}" for i in range(4)]),
    )
    table.obs["t_pred"] = pd.Categorical(["x/y", "z", "z", "x/y"])
    table.obsm["t_proba"] = pd.DataFrame(
        {"x∕y": [0.9, 0.2, 0.1, 0.6], "z": [0.1, 0.8, 0.9, 0.4]}, index=table.obs_names
    )
    reference = AnnData(
        X=sparse.csr_matrix(np.array([[1.0, 0, 2], [3, 0, 4]], dtype=np.float32)),
        var=pd.DataFrame(index=["a", "d", "e"]),
        obs=pd.DataFrame(index=["r0", "r1"]),
    )
    mapping = sparse.csr_matrix(np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    result = MappingResult(
        job_id=1, rows=np.array([0, 1, 3]), obs=pd.DataFrame(index=table.obs_names), obsm={}, uns={},
        reference_obs=pd.DataFrame(index=reference.obs_names), neighbor_indices=np.zeros((3, 0), int),
        obs_keys=("t",), mapping=mapping,
    )  # fmt: skip
    return table, reference, result


def test_each_kind_of_value():
    table, reference, result = _case()
    name, values = cell_values("P(x/y)", table, result, reference)
    assert name == "P(x/y)" and values.tolist() == [0.9, 0.2, 0.1, 0.6]
    assert cell_values("z", table, result, reference)[0] == "P(z)"  # a bare type is its probability
    name, values = cell_values("b", table, result, reference)
    assert name == "b (measured)" and values.tolist() == [1, 4, 7, 10]
    name, values = cell_values("e", table, result, reference)  # only the reference has it
    assert name == "e (imputed)"
    np.testing.assert_allclose(values, [3.0, 2.0, np.nan, 4.0])  # row 2 was not mapped
    name, values = cell_values("a (imputed)", table, result, reference)
    np.testing.assert_allclose(values, [2.0, 1.0, np.nan, 3.0])
    assert cell_values("a", table, result, reference)[0] == "a (measured)"  # measured comes first


def test_choices_and_refusals():
    table, reference, result = _case()
    choices = value_choices(table, reference, result)
    assert {"P(x/y)", "P(z)", "a (measured)", "e (imputed)", "d (imputed)"} <= set(choices)
    assert not [c for c in value_choices(table, reference, None) if c.endswith("(imputed)")]
    with pytest.raises(KeyError, match="neither a transferred type nor a gene"):
        cell_values("nope", table, result, reference)
    with pytest.raises(KeyError, match="Run a mapping"):
        cell_values("e (imputed)", table, None, reference)
    other = reference.copy()
    other.obs_names = ["s0", "s1"]
    with pytest.raises(KeyError, match="reference changed"):
        cell_values("e (imputed)", table, result, other)
