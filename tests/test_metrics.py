"""Evaluation helpers against hand-computed cases and sklearn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr

from napari_cellmapper.core.metrics import (
    UNMAPPED,
    accuracy,
    classification_report,
    confusion_table,
    correlation_summary,
    expression_correlation,
    f1_scores,
    macro_f1,
    weighted_f1,
)

# true:  a a b b c Ambiguous c
# pred:  a b b - c a         d      ("-" = unmapped)
TRUE = pd.Categorical(["a", "a", "b", "b", "c", "Ambiguous", "c"], categories=["c", "b", "a", "Ambiguous"])
PRED = ["a", "b", "b", None, "c", "a", "d"]


def test_accuracy_counts_unmapped_as_wrong_and_excludes_labels():
    # without Ambiguous: 6 cells, correct = a, b, c -> 3/6
    assert accuracy(TRUE, PRED, exclude={"Ambiguous"}) == pytest.approx(0.5)
    # with it: 7 cells, 3 correct
    assert accuracy(TRUE, PRED) == pytest.approx(3 / 7)
    assert accuracy(["x"], [np.nan]) == 0.0
    assert np.isnan(accuracy(["Ambiguous"], ["a"], exclude=["Ambiguous"]))


def test_f1_by_hand():
    table = f1_scores(TRUE, PRED, exclude={"Ambiguous"})
    assert list(table.index) == ["c", "b", "a"]  # categorical order
    # a: predicted a on cells 0 (a) [cell 5 excluded] -> P=1, R=1/2, F1=2/3
    # b: predicted b on cells 1 (a), 2 (b) -> P=1/2, R=1/2, F1=1/2
    # c: predicted c on cell 4 -> P=1, R=1/2, F1=2/3
    np.testing.assert_allclose(table.loc[["a", "b", "c"], "f1"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(table.loc[["a", "b", "c"], "precision"], [1, 1 / 2, 1])
    assert table["support"].tolist() == [2, 2, 2]
    assert macro_f1(TRUE, PRED, exclude={"Ambiguous"}) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert weighted_f1(TRUE, PRED, exclude={"Ambiguous"}) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_f1_matches_sklearn_on_true_classes():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    t = rng.choice(list("abcde"), 400, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    p = np.where(rng.random(400) < 0.6, t, rng.choice(list("abcdf"), 400)).astype(object)
    labels = sorted(set(t))
    assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", labels=labels))
    assert weighted_f1(t, p) == pytest.approx(f1_score(t, p, average="weighted", labels=labels))
    # a class never predicted gets F1 0 and still counts in the macro average
    p2 = np.where(t == "e", "a", p)
    assert f1_scores(t, p2).loc["e", "f1"] == 0.0
    assert macro_f1(t, p2) == pytest.approx(f1_score(t, p2, average="macro", labels=labels, zero_division=0))


def test_confusion_table_by_hand():
    table = confusion_table(TRUE, PRED, exclude={"Ambiguous"})
    assert list(table.index) == ["c", "b", "a"]
    assert list(table.columns) == ["c", "b", "a", "d", UNMAPPED]
    expected = np.array(
        [
            [1, 0, 0, 1, 0],  # c -> c, d
            [0, 1, 0, 0, 1],  # b -> b, unmapped
            [0, 1, 1, 0, 0],  # a -> b, a
        ]
    )
    np.testing.assert_array_equal(table.to_numpy(), expected)
    rows = confusion_table(TRUE, PRED, exclude={"Ambiguous"}, normalize="true")
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    # categorical predictions keep their category order (unused categories included)
    pred_cat = pd.Categorical(["a", "b", "b", "b"], categories=["b", "a", "z"])
    t2 = confusion_table(["a", "a", "b", "b"], pred_cat)
    assert list(t2.columns) == ["b", "a", "z"]
    np.testing.assert_array_equal(t2.to_numpy(), [[1, 1, 0], [2, 0, 0]])


def test_classification_report_layout():
    report = classification_report(TRUE, PRED, exclude={"Ambiguous"})
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["a"] == {"precision": 1.0, "recall": 0.5, "f1-score": pytest.approx(2 / 3), "support": 2}
    assert report["macro avg"]["f1-score"] == pytest.approx(macro_f1(TRUE, PRED, exclude={"Ambiguous"}))
    assert report["weighted avg"]["support"] == 6
    assert report["n_unmapped"] == 1 and report["n_excluded"] == 1 and report["n_cells"] == 6
    # missing true labels are dropped and counted
    rep2 = classification_report(["a", None, "b"], ["a", "a", "a"])
    assert rep2["n_missing_true"] == 1 and rep2["n_cells"] == 2


def test_label_inputs_strings_categorical_series_numbers():
    t = pd.Series(pd.Categorical(["x", "y", "x"]))
    p = pd.Series(["x", "x", np.nan])
    assert accuracy(t, p) == pytest.approx(1 / 3)
    assert accuracy([1, 2, 3], np.array([1, 2, 4])) == pytest.approx(2 / 3)


def test_bad_label_inputs():
    with pytest.raises(ValueError, match="y_true has 2 labels but y_pred has 3"):
        accuracy(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="1-D"):
        accuracy(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="normalize"):
        confusion_table(["a"], ["a"], normalize="rows")


def test_expression_correlation_matches_scipy_dense_and_sparse():
    rng = np.random.default_rng(0)
    measured = rng.poisson(3, (200, 6)).astype(np.float64)
    imputed = measured + rng.normal(0, 2, measured.shape)
    measured[:, 4] = 0.0  # a gene never detected: constant
    genes = [f"g{i}" for i in range(6)]
    table = expression_correlation(imputed, sp.csr_matrix(measured), genes=genes)
    assert list(table.index) == genes
    for j in (0, 1, 2, 3, 5):
        assert table.iloc[j]["pearson"] == pytest.approx(pearsonr(imputed[:, j], measured[:, j])[0])
        assert table.iloc[j]["spearman"] == pytest.approx(spearmanr(imputed[:, j], measured[:, j])[0])
    assert np.isnan(table.loc["g4", "pearson"]) and table.loc["g4", "constant"]
    summary = correlation_summary(table)
    assert summary["n_genes"] == 6 and summary["n_nan"] == 1 and summary["n_scored"] == 5
    assert summary["median_pearson"] == pytest.approx(table["pearson"].dropna().median())
    assert not np.isnan(summary["mean_spearman"])


def test_expression_correlation_aligns_by_gene_name():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    imputed = pd.DataFrame(x, columns=["A", "B", "C"])
    measured = pd.DataFrame(x[:, ::-1] * 2 + 1, columns=["C", "B", "A"])
    table = expression_correlation(imputed, measured, genes=["A", "C"])
    np.testing.assert_allclose(table["pearson"], 1.0)
    np.testing.assert_allclose(table["spearman"], 1.0)
    from anndata import AnnData

    ad = AnnData(X=sp.csr_matrix(measured.to_numpy()), var=pd.DataFrame(index=["C", "B", "A"]))
    np.testing.assert_allclose(expression_correlation(imputed, ad)["pearson"], 1.0)


def test_expression_correlation_bad_inputs():
    with pytest.raises(ValueError, match="3 cells but measured has 2"):
        expression_correlation(np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 genes but measured has 3"):
        expression_correlation(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no genes in both inputs"):
        expression_correlation(pd.DataFrame({"A": [1.0, 2.0]}), pd.DataFrame({"B": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="NaN"):
        expression_correlation(np.array([[np.nan], [1.0]]), np.array([[1.0], [2.0]]))
