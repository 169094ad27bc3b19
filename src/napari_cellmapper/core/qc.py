"""Questioning transferred labels: confidence histogram, threshold, agreement, composition.

Pure pandas/NumPy (no plotting, no Qt). A confidence threshold relabels the mapped cells below it
``"unassigned"`` in a separate column, ``obs[f"{key}_pred_thresholded"]``, whose colours
(``uns[f"{key}_pred_thresholded_colors"]``, one per category) are the predictions' with a grey
``"unassigned"``; ``obs[f"{key}_pred"]`` itself is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_cellmapper.core.palettes import fitted_colors
from napari_cellmapper.core.transfer import UNASSIGNED, UNMAPPED  # labels of cells below / unmapped
from napari_cellmapper.core.validation import CellMapperInputError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "UNASSIGNED",
    "UNASSIGNED_COLOR",
    "Agreement",
    "agreement_table",
    "annotation_columns",
    "apply_threshold",
    "composition",
    "confidence_histogram",
    "threshold_labels",
    "thresholded_key",
    "unassigned_color",
]

#: Cells below the confidence threshold: a mid grey, dim on the tissue and distinct from the light
#: grey of cells that were not mapped at all.
UNASSIGNED_COLOR = "#808080"
#: Greys tried in turn for "unassigned": the first far enough from every label's colour (tab10's
#: own grey is #7f7f7f), else the farthest.
UNASSIGNED_GREYS = (UNASSIGNED_COLOR, "#4d4d4d", "#b3b3b3")
_MIN_DISTANCE = 60.0  # RGB distance (0-255 channels) that tells two colours apart at a glance
#: A string column with more distinct values than this is an identifier, not an annotation.
MAX_ANNOTATION_VALUES = 200


def thresholded_key(key: str) -> str:
    """Name of the thresholded labels of a transferred obs key: ``"<key>_pred_thresholded"``."""
    return f"{key}_pred_thresholded"


def confidence_histogram(confidence: Any, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of the finite confidences on [0, 1] in ``bins`` equal bins (NaN: not mapped)."""
    values = np.asarray(confidence, dtype=np.float64).ravel()
    values = np.clip(values[np.isfinite(values)], 0.0, 1.0)
    return np.histogram(values, bins=int(bins), range=(0.0, 1.0))


def _categorical(values: Any) -> pd.Categorical:
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return values.array  # type: ignore[return-value]
    if isinstance(values, pd.Categorical):
        return values
    series = pd.Series(np.asarray(values, dtype=object))
    return pd.Categorical(series.where(series.notna(), None).astype(object))


def _str_categorical(values: Any) -> pd.Categorical:
    """The values as a Categorical with string categories (codes kept, -1 where missing)."""
    cat = _categorical(values)
    names = [str(c) for c in cat.categories]
    if len(set(names)) < len(names):  # e.g. 1 and "1": merge them by their text
        return pd.Categorical(pd.Series(cat.astype(object)).map(lambda v: None if pd.isna(v) else str(v)))
    return pd.Categorical.from_codes(np.asarray(cat.codes), categories=names)


def _name(values: Any) -> str | None:
    name = getattr(values, "name", None)
    return None if name is None else str(name)


def _rgb(color: str) -> np.ndarray | None:
    text = str(color).strip().lstrip("#")
    if len(text) in (3, 4):
        text = "".join(c * 2 for c in text)
    try:
        return np.array([int(text[i : i + 2], 16) for i in (0, 2, 4)], dtype=float)
    except ValueError:  # a colour name: not compared
        return None


def unassigned_color(colors: Sequence[str]) -> str:
    """A grey for "unassigned" that no label colour in ``colors`` is mistaken for."""
    rgbs = [rgb for rgb in map(_rgb, colors) if rgb is not None]
    if not rgbs:
        return UNASSIGNED_COLOR
    distances = [min(float(np.linalg.norm(_rgb(g) - rgb)) for rgb in rgbs) for g in UNASSIGNED_GREYS]
    far = [g for g, d in zip(UNASSIGNED_GREYS, distances, strict=True) if d >= _MIN_DISTANCE]
    return far[0] if far else UNASSIGNED_GREYS[int(np.argmax(distances))]


def threshold_labels(
    labels: Any, confidence: Any, threshold: float, colors: Sequence[str] | None = None
) -> tuple[pd.Categorical, list[str]]:
    """Labels with every labelled cell whose confidence is below ``threshold`` set to ``"unassigned"``.

    Missing labels (cells not mapped) and ``"unmapped"`` stay as they are. The categories are the
    labels' followed by ``"unassigned"`` (always present, so they do not change with the
    threshold); the returned colours have one entry per category: ``colors`` when it fits the
    labels' categories (else the default palette) and a grey for ``"unassigned"``
    (:func:`unassigned_color`: ``UNASSIGNED_COLOR`` unless a label's colour is close to it).
    """
    cat = _categorical(labels)
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    if conf.shape != (len(cat),):
        raise CellMapperInputError(f"{len(cat)} labels but {conf.size} confidence values.")
    categories = [str(c) for c in cat.categories]
    palette = fitted_colors(categories, colors)
    others = [c for c, name in zip(palette, categories, strict=True) if name not in (UNASSIGNED, UNMAPPED)]
    grey = unassigned_color(others)
    if UNASSIGNED in categories:
        palette[categories.index(UNASSIGNED)] = grey
    else:
        categories.append(UNASSIGNED)
        palette.append(grey)
    codes = np.asarray(cat.codes, dtype=np.int64)
    keep = codes < 0
    if UNMAPPED in categories[: len(cat.categories)]:
        keep |= codes == categories.index(UNMAPPED)
    with np.errstate(invalid="ignore"):
        below = ~keep & (conf < float(threshold))
    codes = np.where(below, categories.index(UNASSIGNED), codes)
    return pd.Categorical.from_codes(codes, categories=categories), palette


def apply_threshold(adata: AnnData, key: str, threshold: float) -> str:
    """Write ``obs[f"{key}_pred_thresholded"]`` with its colours and threshold into ``adata``.

    Reads ``obs[f"{key}_pred"]``, ``obs[f"{key}_conf"]`` and ``uns[f"{key}_pred_colors"]``; writes
    ``uns[f"{key}_pred_thresholded_colors"]`` and ``uns[f"{key}_pred_thresholded_threshold"]``.
    Returns the column name.
    """
    pred, conf = f"{key}_pred", f"{key}_conf"
    missing = [c for c in (pred, conf) if c not in adata.obs]
    if missing:
        raise CellMapperInputError(f"The table has no {', '.join(map(repr, missing))}: map {key!r} first.")
    colors = adata.uns.get(f"{pred}_colors")
    labels, palette = threshold_labels(
        adata.obs[pred], adata.obs[conf].to_numpy(dtype=np.float64, na_value=np.nan), threshold, colors
    )
    name = thresholded_key(key)
    adata.obs[name] = labels
    adata.uns[f"{name}_colors"] = np.asarray(palette, dtype=object)
    adata.uns[f"{name}_threshold"] = float(threshold)
    return name


@dataclass(frozen=True)
class Agreement:
    """Predicted labels against an annotation the query already carries.

    ``counts`` is the cross table (rows: annotation, columns: predicted; cells with both, empty
    rows and columns dropped). Per row: ``agreement`` is the fraction predicted under the same
    name (NaN when no predicted category has that name), ``best``/``best_fraction`` the most
    frequent prediction. ``overall``: matching cells over the cells whose annotation names a
    predicted category (NaN when none does, e.g. regions against cell types).
    """

    counts: pd.DataFrame
    agreement: pd.Series
    best: pd.Series
    best_fraction: pd.Series
    overall: float

    @property
    def fractions(self) -> pd.DataFrame:
        """``counts`` with each row divided by its total."""
        total = self.counts.sum(axis=1).replace(0, np.nan)
        return self.counts.div(total, axis=0).fillna(0.0)


def _cross_counts(rows: Any, columns: Any) -> pd.DataFrame:
    """Cells per (row label, column label), both present; empty rows/columns dropped, order kept."""
    r, c = _str_categorical(rows), _str_categorical(columns)
    if len(r) != len(c):
        raise CellMapperInputError(f"{len(r)} values against {len(c)}: one per cell in both.")
    rc, cc = np.asarray(r.codes, np.int64), np.asarray(c.codes, np.int64)
    both = (rc >= 0) & (cc >= 0)
    n_r, n_c = len(r.categories), len(c.categories)
    flat = np.bincount(rc[both] * n_c + cc[both], minlength=n_r * n_c).reshape(n_r, n_c)
    keep_r, keep_c = flat.sum(axis=1) > 0, flat.sum(axis=0) > 0
    return pd.DataFrame(
        flat[np.ix_(keep_r, keep_c)],
        index=pd.Index(np.asarray(r.categories, dtype=object)[keep_r], name=_name(rows)),
        columns=pd.Index(np.asarray(c.categories, dtype=object)[keep_c], name=_name(columns)),
    )


def agreement_table(annotation: Any, predicted: Any) -> Agreement:
    """Cross table of an annotation against predicted labels, with per-row agreement."""
    counts = _cross_counts(annotation, predicted)
    counts.columns.name = "predicted"
    predicted_names = set(_str_categorical(predicted).categories)
    total = counts.sum(axis=1).astype(np.float64)
    same = pd.Series(
        [counts.at[r, r] if r in counts.columns else 0 for r in counts.index], index=counts.index, dtype=float
    )
    named = pd.Series([r in predicted_names for r in counts.index], index=counts.index, dtype=bool)
    agreement = (same / total.replace(0.0, np.nan)).where(named)
    if counts.shape[1]:
        best = counts.idxmax(axis=1)
        best_fraction = counts.max(axis=1) / total.replace(0.0, np.nan)
    else:
        best, best_fraction = pd.Series(dtype=object), pd.Series(dtype=float)
    considered = float(total[named].sum())
    overall = float(same[named].sum() / considered) if considered else float("nan")
    return Agreement(counts, agreement, best, best_fraction, overall)


def composition(groups: Any, labels: Any, *, normalize: bool = True) -> pd.DataFrame:
    """Fraction (or count) of each label per group: rows groups, columns labels, rows sum to 1.

    Cells without a group or a label are left out; rows and columns keep their categorical order,
    empty ones dropped.
    """
    counts = _cross_counts(groups, labels)
    if not normalize:
        return counts
    return counts.div(counts.sum(axis=1), axis=0).astype(np.float64)


def annotation_columns(obs: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Columns of ``obs`` that annotate cells with a few categories (2 to 200 values, not ids)."""
    skip = {str(e) for e in exclude}
    out = []
    for column in obs.columns:
        name = str(column)
        values = obs[column]
        if name in skip or values.dtype.kind in "fiucmM":
            continue
        if not (
            isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind in "bOSU" or _is_string(values)
        ):
            continue
        n = int(values.nunique(dropna=True))
        if 2 <= n <= MAX_ANNOTATION_VALUES and (n <= 20 or n <= len(values) // 2):
            out.append(name)
    return out


def _is_string(values: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(values.dtype)
