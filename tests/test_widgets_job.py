"""The worker's frozen job and result objects (no Qt): a result read back from a table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from _core_fixtures import make_pair
from anndata import AnnData

from napari_cellmapper.core.pipeline import MappingParams, annotate
from napari_cellmapper.widgets.job import MappingResult


def test_a_result_is_read_back_from_an_annotated_table():
    query, reference = make_pair()
    assert MappingResult.from_table(query) is None  # never mapped
    params = MappingParams(use_rep="X_joint", obs_keys=("celltype",), obsm_keys=("X_umap",))
    annotate(query, reference, params, progress=False)
    query.obs.loc[query.obs_names[:5], "celltype_pred"] = np.nan  # e.g. cells outside a region
    result = MappingResult.from_table(query)
    assert result.obs_keys == ("celltype",) and result.obsm_keys == ("X_umap",)
    assert list(result.rows) == list(range(5, query.n_obs))
    assert {"celltype_pred", "celltype_conf", "celltype_entropy"} <= set(result.obs.columns)
    assert {"celltype_proba", "X_umap_pred"} <= set(result.obsm) and "celltype_pred_colors" in result.uns
    assert result.color_keys[0] == "celltype_pred"
    assert result.neighbor_indices.shape == (query.n_obs - 5, 0) and result.mapping is None


def test_a_table_with_provenance_but_no_outputs_gives_none():
    table = AnnData(obs=pd.DataFrame(index=["a", "b"]))
    table.uns["cellmapper"] = {"pipeline": {"obs_keys": np.asarray(["celltype"])}}
    assert MappingResult.from_table(table) is None
