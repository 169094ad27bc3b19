"""Label QC computations: histogram, threshold, agreement table, composition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_cellmapper.core import qc
from napari_cellmapper.core.validation import CellMapperInputError


def _labels(values, categories):
    return pd.Categorical(values, categories=categories)


def test_constants_match_the_transfer():
    from napari_cellmapper.core import transfer

    assert qc.UNASSIGNED == transfer.UNASSIGNED and qc.UNMAPPED == transfer.UNMAPPED


def test_confidence_histogram_ignores_unmapped_cells():
    counts, edges = qc.confidence_histogram([0.0, 0.05, 0.5, 0.99, 1.0, np.nan], bins=10)
    assert counts.sum() == 5 and len(edges) == 11
    assert edges[0] == 0.0 and edges[-1] == 1.0
    assert counts[0] == 2 and counts[5] == 1 and counts[-1] == 2


def test_threshold_labels_greys_out_cells_below():
    labels = _labels(["a", "b", "a", None, "unmapped"], ["a", "b", "unmapped"])
    conf = np.array([0.9, 0.3, 0.5, np.nan, 0.0])
    out, colors = qc.threshold_labels(labels, conf, 0.5, ["#ff0000", "#00ff00", "#d3d3d3"])
    assert list(out.categories) == ["a", "b", "unmapped", "unassigned"]
    assert len(colors) == len(out.categories)
    assert colors == ["#ff0000", "#00ff00", "#d3d3d3", qc.UNASSIGNED_COLOR]
    # 0.5 is not below 0.5; missing and "unmapped" cells stay as they were
    assert list(out.astype(object)[:3]) == ["a", "unassigned", "a"]
    assert pd.isna(out[3]) and out[4] == "unmapped"


def test_threshold_zero_changes_nothing_and_categories_are_stable():
    labels = _labels(["a", "b", "b"], ["a", "b"])
    conf = [0.1, 0.2, 0.9]
    low, _ = qc.threshold_labels(labels, conf, 0.0)
    high, colors = qc.threshold_labels(labels, conf, 1.0)
    assert list(low.astype(str)) == ["a", "b", "b"]
    assert list(high.astype(str)) == ["unassigned"] * 3
    assert list(low.categories) == list(high.categories) == ["a", "b", "unassigned"]
    assert len(colors) == 3  # a palette that does not fit gets the default one


def test_existing_unassigned_category_is_reused_and_greyed():
    labels = _labels(["a", "unassigned"], ["a", "unassigned"])
    out, colors = qc.threshold_labels(labels, [0.2, 0.0], 0.5, ["#ff0000", "#d3d3d3"])
    assert list(out.categories) == ["a", "unassigned"] and colors == ["#ff0000", qc.UNASSIGNED_COLOR]
    assert list(out.astype(str)) == ["unassigned", "unassigned"]


def test_unassigned_grey_differs_from_every_label_colour():
    assert qc.unassigned_color(["#1f77b4", "#ff7f0e"]) == qc.UNASSIGNED_COLOR
    tab10_grey = qc.unassigned_color(["#1f77b4", "#7f7f7f"])
    assert tab10_grey != qc.UNASSIGNED_COLOR and tab10_grey in qc.UNASSIGNED_GREYS
    assert qc.unassigned_color(["red", "#ffffff"]) == qc.UNASSIGNED_COLOR  # names are not compared
    labels = _labels(["a", "b"], ["a", "b"])
    _, colors = qc.threshold_labels(labels, [0.1, 0.9], 0.5, ["#1f77b4", "#7f7f7f"])
    assert colors[:2] == ["#1f77b4", "#7f7f7f"] and colors[2] == tab10_grey


def test_threshold_labels_checks_lengths():
    with pytest.raises(CellMapperInputError, match="confidence"):
        qc.threshold_labels(["a", "b"], [0.1], 0.5)


def test_apply_threshold_writes_column_colours_and_threshold():
    obs = pd.DataFrame(
        {
            "cell_type_pred": _labels(["x", "y", "x", "y"], ["x", "y"]),
            "cell_type_conf": [0.2, 0.8, 0.6, 0.4],
        },
        index=[f"c{i}" for i in range(4)],
    )
    adata = AnnData(obs=obs, uns={"cell_type_pred_colors": np.array(["#111111", "#222222"], dtype=object)})
    name = qc.apply_threshold(adata, "cell_type", 0.5)
    assert name == "cell_type_pred_thresholded" == qc.thresholded_key("cell_type")
    column = adata.obs[name]
    assert isinstance(column.dtype, pd.CategoricalDtype)
    assert list(column.astype(str)) == ["unassigned", "y", "x", "unassigned"]
    colors = adata.uns[f"{name}_colors"]
    assert len(colors) == len(column.cat.categories) and colors[-1] == qc.UNASSIGNED_COLOR
    assert adata.uns[f"{name}_threshold"] == 0.5
    assert list(adata.obs["cell_type_pred"].astype(str)) == ["x", "y", "x", "y"]  # untouched
    with pytest.raises(CellMapperInputError, match="other_pred"):
        qc.apply_threshold(adata, "other", 0.5)


def test_agreement_table_equals_crosstab():
    rng = np.random.default_rng(0)
    truth = pd.Series(pd.Categorical(rng.choice(["T", "B", "NK", "Mono"], 300)), name="annotation")
    pred = pd.Series(
        pd.Categorical(
            np.where(rng.random(300) < 0.7, truth.astype(str), rng.choice(["T", "B", "DC"], 300)),
            categories=["B", "DC", "T", "NK", "Mono", "never"],
        ),
        name="predicted",
    )
    pred[:5] = np.nan  # not mapped: left out
    result = qc.agreement_table(truth, pred)
    expected = pd.crosstab(truth, pred)
    expected = expected.loc[expected.sum(axis=1) > 0, expected.sum(axis=0) > 0]
    table = result.counts.loc[[str(i) for i in expected.index], [str(c) for c in expected.columns]]
    np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy())
    assert result.counts.to_numpy().sum() == 295 and "never" not in result.counts.columns
    np.testing.assert_allclose(result.fractions.sum(axis=1), 1.0)
    for row in result.counts.index:
        assert result.agreement[row] == pytest.approx(
            result.counts.at[row, row] / result.counts.loc[row].sum()
        )
        assert result.best[row] == result.counts.loc[row].idxmax()
    kept = pred.notna()
    assert result.overall == pytest.approx((truth[kept].astype(str) == pred[kept].astype(str)).mean())


def test_agreement_without_shared_names_is_nan():
    result = qc.agreement_table(["d1", "d1", "d2"], _labels(["a", "b", "a"], ["a", "b"]))
    assert result.agreement.isna().all() and np.isnan(result.overall)
    assert result.best["d1"] in ("a", "b") and result.best_fraction["d2"] == 1.0


def test_composition_rows_sum_to_one_in_category_order():
    groups = pd.Series(
        pd.Categorical(["n1", "n0", "n0", None, "n1"], categories=["n0", "n1", "n2"]), name="niche"
    )
    labels = _labels(["a", "b", "a", "a", None], ["b", "a"])
    table = qc.composition(groups, labels)
    assert list(table.index) == ["n0", "n1"] and list(table.columns) == ["b", "a"]
    np.testing.assert_allclose(table.loc["n0"], [0.5, 0.5])
    np.testing.assert_allclose(table.loc["n1"], [0.0, 1.0])
    counts = qc.composition(groups, labels, normalize=False)
    assert counts.to_numpy().sum() == 3 and table.index.name == "niche"


def test_integer_categories_become_strings():
    table = qc.composition(pd.Categorical([0, 1, 1]), pd.Categorical(["a", "a", "b"]))
    assert list(table.index) == ["0", "1"]


def test_annotation_columns_skip_numbers_and_identifiers():
    n = 300
    obs = pd.DataFrame(
        {
            "cell_type_true": pd.Categorical(np.resize(["a", "b", "c"], n)),
            "sample": np.resize(["s1", "s2"], n).astype(object),
            "barcode": [f"bc{i}" for i in range(n)],
            "score": np.linspace(0, 1, n),
            "constant": pd.Categorical(["x"] * n),
            "cell_type_pred": pd.Categorical(np.resize(["a", "b"], n)),
        }
    )
    assert qc.annotation_columns(obs, exclude=["cell_type_pred"]) == ["cell_type_true", "sample"]
