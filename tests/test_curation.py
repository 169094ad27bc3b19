"""Curated labels: own column, undo/redo, provenance, consistent colours, stored by anndata."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_cellmapper.core.curation import LabelCuration


def _table() -> AnnData:
    table = AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]))
    table.obs["t_pred"] = pd.Categorical(["A", "B", "A", None, "B", "A"], categories=["A", "B", "C"])
    table.uns["t_pred_colors"] = np.asarray(["#ff0000", "#00ff00", "#0000ff"], dtype=object)
    return table


def _consistent(table: AnnData, column: str) -> None:
    assert len(table.uns[f"{column}_colors"]) == len(table.obs[column].cat.categories)


def test_assign_undo_redo_keep_the_predictions_and_record_who_when():
    table = _table()
    curation = LabelCuration(table, "t")
    assert curation.categories() == ["A", "B", "C"] and not curation.can_undo
    curation.assign([0, 1], "B", who="ana")
    curation.assign([1, 3], "Ependymal", who="ana")  # a new label
    labels = table.obs["t_curated"].astype(object).tolist()
    assert labels == ["B", "Ependymal", "A", "Ependymal", "B", "A"]
    assert table.obs["t_pred"].astype(object).where(table.obs["t_pred"].notna(), None).tolist() == [
        "A", "B", "A", None, "B", "A"
    ]  # fmt: skip
    assert table.obs["t_curated_edit"].tolist() == [0, 1, -1, 1, -1, -1]
    _consistent(table, "t_curated")
    assert list(table.uns["t_curated_colors"][:3]) == ["#ff0000", "#00ff00", "#0000ff"]  # types keep theirs
    assert table.uns["t_curated_colors"][3] not in table.uns["t_curated_colors"][:3]
    prov = curation.provenance()
    assert prov["label"].tolist() == ["B", "Ependymal"] and prov["n_cells"].tolist() == [2, 2]
    assert set(prov["who"]) == {"ana"} and all(prov["when"])
    curation.undo()
    assert table.obs["t_curated"].astype(object).tolist()[:2] == ["B", "B"] and pd.isna(
        table.obs["t_curated"].iloc[3]
    )
    assert table.obs["t_curated_edit"].tolist() == [0, 0, -1, -1, -1, -1]
    assert len(curation.provenance()) == 1 and curation.can_redo
    curation.redo()
    assert (
        table.obs["t_curated"].astype(object).tolist()[3] == "Ependymal" and len(curation.provenance()) == 2
    )
    curation.undo()
    curation.undo()
    assert curation.undo() is None and (table.obs["t_curated_edit"] == -1).all()
    curation.assign([5], "C")
    assert not curation.can_redo  # a new edit clears the redo list


def test_curation_is_stored_and_taken_up_again(tmp_path):
    table = _table()
    LabelCuration(table, "t").assign([2], "Microglia", who="bo")
    path = tmp_path / "curated.h5ad"
    table.write_h5ad(path)
    back = anndata.read_h5ad(path)
    resumed = LabelCuration(back, "t")
    assert back.obs["t_curated"].astype(object).iloc[2] == "Microglia" and len(resumed.provenance()) == 1
    assert not resumed.can_undo  # edits of an earlier session stay, but are not undone
    resumed.assign([4], "Microglia")
    assert resumed.provenance()["edit"].tolist() == [0, 1]
    _consistent(back, "t_curated")


def test_bad_edits_are_refused_before_anything_changes():
    table = _table()
    curation = LabelCuration(table, "t")
    before = table.obs.copy()
    with pytest.raises(ValueError, match="Type a label"):
        curation.assign([0], "  ")
    with pytest.raises(ValueError, match="Select cells"):
        curation.assign([], "A")
    with pytest.raises(IndexError):
        curation.assign([99], "A")
    pd.testing.assert_frame_equal(table.obs, before)
    with pytest.raises(KeyError, match="transfer 'x'"):
        LabelCuration(table, "x")
