"""Evaluation helpers: label-transfer accuracy and F1, confusion tables, expression correlation.

Label conventions (all functions below):

- cells whose *true* label is missing (NaN/None) or in ``exclude`` (e.g. ``{"Ambiguous"}``) are
  dropped before scoring;
- a missing prediction (NaN/None, an unmapped cell) is kept and counted as wrong, shown as the
  column ``"unmapped"`` in confusion tables;
- classes are the true labels that remain (in categorical order when ``y_true`` is categorical,
  otherwise sorted); predicted labels that are never true only lower the recall of the classes
  they were predicted for and do not enter the macro average.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_cellmapper.core.validation import CellMapperInputError

__all__ = [
    "UNMAPPED",
    "accuracy",
    "classification_report",
    "confusion_table",
    "correlation_summary",
    "expression_correlation",
    "f1_scores",
    "macro_f1",
    "weighted_f1",
]

UNMAPPED = "unmapped"


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------
def _categories(values: Any) -> list[str] | None:
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories]
    if isinstance(values, pd.Categorical):
        return [str(c) for c in values.categories]
    return None


def _as_labels(values: Any, name: str) -> np.ndarray:
    """Object array of str labels, ``None`` where missing."""
    if isinstance(values, pd.Series | pd.Categorical | pd.Index):
        arr = np.asarray(pd.Series(values).astype(object), dtype=object)
    else:
        arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise CellMapperInputError(f"{name} must be one label per cell (1-D), got shape {arr.shape}.")
    missing = pd.isna(arr)
    out = arr.copy()
    if (~missing).any():
        out[~missing] = pd.Series(arr[~missing]).astype(str).to_numpy(dtype=object)
    out[missing] = None
    return out


def _prepare(
    y_true: Any, y_pred: Any, exclude: Iterable[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, int]]:
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise CellMapperInputError(
            f"y_true has {t.size} labels but y_pred has {p.size}; "
            "pass one true and one predicted label per cell."
        )
    excl = {str(e) for e in (exclude or ())}
    missing_true = pd.isna(t)
    excluded = pd.Series(t).isin(excl).to_numpy() & ~missing_true
    keep = ~missing_true & ~excluded
    t, p = t[keep], p[keep]
    unmapped = pd.isna(p)
    p = p.copy()
    p[unmapped] = UNMAPPED
    order = _categories(y_true)
    present = set(t.tolist())
    classes = [c for c in order if c in present] if order is not None else sorted(present)
    counts = {
        "n_cells": int(t.size),
        "n_unmapped": int(unmapped.sum()),
        "n_excluded": int(excluded.sum()),
        "n_missing_true": int(missing_true.sum()),
    }
    return t.astype(str) if t.size else t, p.astype(str) if p.size else p, classes, counts


def accuracy(y_true: Any, y_pred: Any, *, exclude: Iterable[str] | None = None) -> float:
    """Fraction of cells whose predicted label equals the true label (unmapped = wrong).

    Returns NaN when no cell is left to score.
    """
    t, p, _, _ = _prepare(y_true, y_pred, exclude)
    return float(np.mean(t == p)) if t.size else float("nan")


def _per_class(t: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    rows = []
    for c in classes:
        is_t = t == c
        is_p = p == c
        tp = float(np.sum(is_t & is_p))
        n_pred = float(is_p.sum())
        support = int(is_t.sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, support))
    return pd.DataFrame(
        rows, index=pd.Index(list(classes), name="label"), columns=["precision", "recall", "f1", "support"]
    )


def f1_scores(y_true: Any, y_pred: Any, *, exclude: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support (classes = remaining true labels).

    Precision of class ``c`` uses all cells predicted ``c``; a class never predicted has precision
    0 and F1 0.
    """
    t, p, classes, _ = _prepare(y_true, y_pred, exclude)
    return _per_class(t, p, classes)


def macro_f1(y_true: Any, y_pred: Any, *, exclude: Iterable[str] | None = None) -> float:
    """Unweighted mean of the per-class F1 over the true classes (NaN if none)."""
    table = f1_scores(y_true, y_pred, exclude=exclude)
    return float(table["f1"].mean()) if len(table) else float("nan")


def weighted_f1(y_true: Any, y_pred: Any, *, exclude: Iterable[str] | None = None) -> float:
    """Mean of the per-class F1 weighted by the number of true cells of each class (NaN if none)."""
    table = f1_scores(y_true, y_pred, exclude=exclude)
    total = table["support"].sum()
    return float((table["f1"] * table["support"]).sum() / total) if total else float("nan")


def confusion_table(
    y_true: Any,
    y_pred: Any,
    *,
    exclude: Iterable[str] | None = None,
    normalize: str | None = None,
) -> pd.DataFrame:
    """Confusion matrix as a DataFrame: rows true labels, columns predicted labels.

    Rows follow the true classes (categorical order, else sorted). Columns are the predicted
    categories in their categorical order when ``y_pred`` is categorical (true classes it lacks are
    added), else the true classes followed by the other predicted labels sorted; ``"unmapped"``
    comes last when some cells were not mapped.

    Parameters
    ----------
    normalize
        ``None`` (counts), ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to 1) or ``"all"``.
    """
    if normalize not in (None, "true", "pred", "all"):
        raise CellMapperInputError(f"normalize must be None, 'true', 'pred' or 'all', got {normalize!r}.")
    t, p, classes, _ = _prepare(y_true, y_pred, exclude)
    observed = set(p.tolist())
    excl = {str(e) for e in (exclude or ())}
    pred_order = _categories(y_pred)
    if pred_order is not None:
        columns = [c for c in pred_order if c not in excl or c in observed]
        columns += [c for c in classes if c not in columns]
    else:
        columns = list(classes)
    columns += sorted(observed - set(columns) - {UNMAPPED})
    if UNMAPPED in observed:
        columns.append(UNMAPPED)
    row_pos = {c: i for i, c in enumerate(classes)}
    col_pos = {c: j for j, c in enumerate(columns)}
    counts = np.zeros((len(classes), len(columns)), dtype=np.int64)
    if t.size:
        np.add.at(counts, (np.array([row_pos[v] for v in t]), np.array([col_pos[v] for v in p])), 1)
    table = pd.DataFrame(
        counts, index=pd.Index(classes, name="true"), columns=pd.Index(columns, name="predicted")
    )
    if normalize is None:
        return table
    values = counts.astype(np.float64)
    if normalize == "true":
        denom = values.sum(axis=1, keepdims=True)
    elif normalize == "pred":
        denom = values.sum(axis=0, keepdims=True)
    else:
        denom = np.array([[values.sum()]])
    values = np.divide(values, denom, out=np.zeros_like(values), where=denom > 0)
    return pd.DataFrame(values, index=table.index, columns=table.columns)


def classification_report(
    y_true: Any, y_pred: Any, *, exclude: Iterable[str] | None = None
) -> dict[str, Any]:
    """A summary like sklearn's ``classification_report(output_dict=True)``.

    Keys: each class -> ``{"precision", "recall", "f1-score", "support"}``, ``"accuracy"``,
    ``"macro avg"``, ``"weighted avg"``, plus ``"n_cells"``, ``"n_unmapped"``, ``"n_excluded"`` and
    ``"n_missing_true"`` (cells dropped because their true label is missing).
    """
    t, p, classes, counts = _prepare(y_true, y_pred, exclude)
    table = _per_class(t, p, classes)
    report: dict[str, Any] = {}
    for c, row in table.iterrows():
        report[str(c)] = {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1-score": float(row["f1"]),
            "support": int(row["support"]),
        }
    total = int(table["support"].sum())
    nan = float("nan")
    report["accuracy"] = float(np.mean(t == p)) if t.size else nan
    report["macro avg"] = {
        "precision": float(table["precision"].mean()) if len(table) else nan,
        "recall": float(table["recall"].mean()) if len(table) else nan,
        "f1-score": float(table["f1"].mean()) if len(table) else nan,
        "support": total,
    }
    w = table["support"] / total if total else table["support"] * nan
    report["weighted avg"] = {
        "precision": float((table["precision"] * w).sum()) if total else nan,
        "recall": float((table["recall"] * w).sum()) if total else nan,
        "f1-score": float((table["f1"] * w).sum()) if total else nan,
        "support": total,
    }
    report.update(counts)
    return report


# --------------------------------------------------------------------------------------------
# expression
# --------------------------------------------------------------------------------------------
def _as_matrix(values: Any, name: str) -> tuple[Any, list[str] | None]:
    """(matrix, gene names or None) from an array, sparse matrix, DataFrame or AnnData."""
    if hasattr(values, "var_names") and hasattr(values, "X"):
        return values.X, [str(g) for g in values.var_names]
    if isinstance(values, pd.DataFrame):
        return values.to_numpy(dtype=np.float64), [str(g) for g in values.columns]
    if sp.issparse(values):
        return sp.csc_matrix(values), None
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise CellMapperInputError(f"{name} must be a 2-D cells x genes matrix, got shape {arr.shape}.")
    return arr, None


def _dense_cols(matrix: Any, cols: np.ndarray) -> np.ndarray:
    if sp.issparse(matrix):
        return np.asarray(sp.csc_matrix(matrix)[:, cols].toarray(), dtype=np.float64)
    return np.asarray(matrix[:, cols], dtype=np.float64)


def _column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = (a * b).sum(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    out = np.full(a.shape[1], np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def expression_correlation(
    imputed: Any,
    measured: Any,
    genes: Sequence[str] | None = None,
    *,
    chunk_size: int = 256,
) -> pd.DataFrame:
    """Per-gene Pearson and Spearman correlation of imputed against measured expression.

    Parameters
    ----------
    imputed, measured
        Cells x genes: dense arrays, sparse matrices, DataFrames or AnnData (same cells, same
        order). With gene names on both sides they are aligned by name; otherwise the shapes must
        match and ``genes`` names the columns.
    genes
        Genes to evaluate (e.g. the held-out genes); default all (shared) genes.

    Returns
    -------
    DataFrame indexed by gene with ``pearson``, ``spearman`` and ``constant`` (True where either
    side is constant over the cells, giving NaN correlations).
    """
    from scipy.stats import rankdata

    a, a_genes = _as_matrix(imputed, "imputed")
    b, b_genes = _as_matrix(measured, "measured")
    if a.shape[0] != b.shape[0]:
        raise CellMapperInputError(
            f"imputed has {a.shape[0]} cells but measured has {b.shape[0]}; "
            "pass the same cells in the same order."
        )
    if a_genes is not None and b_genes is not None:
        b_pos = {g: j for j, g in enumerate(b_genes)}
        a_pos = {g: j for j, g in enumerate(a_genes)}
        names = [g for g in a_genes if g in b_pos] if genes is None else [str(g) for g in genes]
        missing = [g for g in names if g not in a_pos or g not in b_pos]
        if not names:
            raise CellMapperInputError(
                "imputed and measured have no genes in both inputs; check the gene names (var_names/columns)."
            )
        if missing:
            raise CellMapperInputError(
                f"{len(missing)} genes are not in both inputs (e.g. {missing[:3]}); "
                "pass genes present on both sides."
            )
        a_idx = np.array([a_pos[g] for g in names], dtype=np.int64)
        b_idx = np.array([b_pos[g] for g in names], dtype=np.int64)
    else:
        if a.shape[1] != b.shape[1]:
            raise CellMapperInputError(
                f"imputed has {a.shape[1]} genes but measured has {b.shape[1]}; "
                "without gene names the columns "
                "must match one to one (pass DataFrames or AnnData to align by name)."
            )
        known = a_genes or b_genes
        if genes is not None and known is not None:
            pos = {g: j for j, g in enumerate(known)}
            missing = [str(g) for g in genes if str(g) not in pos]
            if missing:
                raise CellMapperInputError(f"genes not found: {missing[:3]} ...")
            names = [str(g) for g in genes]
            a_idx = b_idx = np.array([pos[g] for g in names], dtype=np.int64)
        else:
            if genes is not None and len(genes) != a.shape[1]:
                raise CellMapperInputError(
                    f"genes has {len(genes)} names but the matrices have {a.shape[1]} columns."
                )
            names = (
                [str(g) for g in genes]
                if genes is not None
                else (known or [str(j) for j in range(a.shape[1])])
            )
            a_idx = b_idx = np.arange(a.shape[1])
    pearson = np.full(len(names), np.nan)
    spearman = np.full(len(names), np.nan)
    constant = np.zeros(len(names), dtype=bool)
    for start in range(0, len(names), chunk_size):
        stop = min(start + chunk_size, len(names))
        x = _dense_cols(a, a_idx[start:stop])
        y = _dense_cols(b, b_idx[start:stop])
        finite = np.isfinite(x).all(axis=0) & np.isfinite(y).all(axis=0)
        if not finite.all():
            raise CellMapperInputError("expression contains NaN or inf; impute or drop those values first.")
        const = (
            (np.ptp(x, axis=0) == 0) | (np.ptp(y, axis=0) == 0) if x.shape[0] else np.ones(stop - start, bool)
        )
        constant[start:stop] = const
        if x.shape[0] >= 2:
            pearson[start:stop] = _column_pearson(x, y)
            spearman[start:stop] = _column_pearson(rankdata(x, axis=0), rankdata(y, axis=0))
        pearson[start:stop][const] = np.nan
        spearman[start:stop][const] = np.nan
    return pd.DataFrame(
        {"pearson": pearson, "spearman": spearman, "constant": constant}, index=pd.Index(names, name="gene")
    )


def correlation_summary(table: pd.DataFrame) -> dict[str, float | int]:
    """Mean and median Pearson/Spearman over genes, NaN (constant) genes excluded and counted."""
    n_nan = int(table["pearson"].isna().sum())
    out: dict[str, float | int] = {
        "n_genes": int(len(table)),
        "n_scored": int(len(table) - n_nan),
        "n_nan": n_nan,
    }
    for col in ("pearson", "spearman"):
        values = table[col].dropna()
        out[f"mean_{col}"] = float(values.mean()) if len(values) else float("nan")
        out[f"median_{col}"] = float(values.median()) if len(values) else float("nan")
    return out
