"""``Y_query = M · Y_reference`` for labels, numbers, embeddings and expression, in chunks.

``M`` is the row-normalised CSR mapping matrix of :mod:`.kernels`. Nothing here forms a dense
copy of the expression matrix or of the probabilities beyond one chunk of query rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from napari_cellmapper.core import label_kernels
from napari_cellmapper.core.calibration import FLOOR
from napari_cellmapper.core.label_head import pool
from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds
from napari_cellmapper.core.sparse_product import iter_product

DEFAULT_TRANSFER_CHUNK = 131_072
#: rows per block when mixing probabilities
_MIX_ROWS = 32_768
UNMAPPED = "unmapped"
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class LabelTransfer:
    """Transferred categorical labels for the query.

    Attributes
    ----------
    codes
        Predicted category codes, ``-1`` where the cell is unmapped.
    confidence
        Highest class probability (0 where unmapped).
    entropy
        Shannon entropy of the class probabilities divided by ``log(n_categories)`` (1 where unmapped).
    probabilities
        ``(n_query, n_categories)`` float32 class probabilities (rows of unmapped cells are 0).
    categories
        Category names, in the reference's order.
    """

    codes: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    probabilities: np.ndarray
    categories: pd.Index

    @property
    def unmapped(self) -> np.ndarray:
        """Cells without any labelled neighbour."""
        return self.codes < 0

    def predictions(
        self,
        unmapped_label: str = UNMAPPED,
        *,
        min_confidence: float = 0.0,
        unassigned_label: str = UNASSIGNED,
    ) -> pd.Categorical:
        """Predicted labels as a Categorical with the reference's categories.

        Unmapped cells get the explicit category ``unmapped_label``, mapped cells whose confidence
        is below ``min_confidence`` get ``unassigned_label`` (each added only when needed).
        """
        categories = list(self.categories)
        codes = self.codes
        for label, cells in (
            (unmapped_label, self.unmapped),
            (unassigned_label, ~self.unmapped & (self.confidence < min_confidence)),
        ):
            if cells.any():
                if label not in categories:
                    categories.append(label)
                codes = np.where(cells, categories.index(label), codes)
        return pd.Categorical.from_codes(codes, categories=categories)


def category_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (``-1`` for missing) and categories of a categorical or label column."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    return values.cat.codes.to_numpy().astype(np.int64), values.cat.categories


def _class_probabilities(indptr, indices, data, codes, out) -> None:
    """``out[r]``: the weights of row ``r`` of M summed per class of the reference cells
    (``codes``, -1: no label, ignored), divided by their total (float64 sums); ``out`` starts at 0."""
    n, n_cat = out.shape
    lo, hi = indptr[0], indptr[-1]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    classes = codes[indices[lo:hi]]
    keep = classes >= 0
    rows, classes, weights = rows[keep], classes[keep], data[lo:hi][keep]
    sums = np.bincount(rows * n_cat + classes, weights=weights, minlength=n * n_cat).reshape(n, n_cat)
    total = np.bincount(rows, weights=weights, minlength=n)[:, None]
    out += np.divide(sums, total, out=np.zeros_like(sums), where=total > 0).astype(out.dtype)


def iter_transfer_labels(
    matrix: sparse.csr_matrix,
    codes: np.ndarray,
    categories: pd.Index,
    *,
    chunk_size: int = DEFAULT_TRANSFER_CHUNK,
    stage: str = "transfer labels",
) -> Steps[LabelTransfer]:
    """Class probabilities ``M · onehot(labels)``; reference cells without a label are ignored."""
    n_query, n_cat = matrix.shape[0], len(categories)
    proba = np.zeros((n_query, n_cat), dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64)
    vote = (
        label_kernels.class_probabilities
        if label_kernels.use_kernels(n_query, n_cat)
        else _class_probabilities
    )
    for start, stop in chunk_bounds(n_query, chunk_size):
        vote(matrix.indptr[start : stop + 1], matrix.indices, matrix.data, codes, proba[start:stop])
        yield Progress(stage, stop, n_query)
    return summarise_probabilities(proba, categories)


def summarise_probabilities(proba: np.ndarray, categories: pd.Index) -> LabelTransfer:
    """Prediction, confidence and normalised entropy from class probabilities."""
    confidence = proba.max(axis=1) if proba.shape[1] else np.zeros(proba.shape[0], np.float32)
    mapped = confidence > 0
    codes = np.where(mapped, proba.argmax(axis=1), -1).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(proba > 0, proba * np.log(proba), 0)
    norm = np.log(len(categories)) if len(categories) > 1 else 1.0
    entropy = np.where(mapped, np.clip(-plogp.sum(axis=1) / norm, 0, 1), 1).astype(np.float32)
    return LabelTransfer(codes, confidence.astype(np.float32), entropy, proba, categories)


def _mix_rows(knn, head, weight, inv_t, floor, log_norm, proba, confidence, codes, entropy) -> None:
    """The pooled probabilities (:func:`.label_head.pool`), then ``p^inv_t`` (values below
    ``floor`` raised to it; zeros stay zero), renormalised; its max, argmax and entropy, into the
    output arrays. Rows of ``knn`` without probability are unmapped."""
    mapped = (knn > 0).any(axis=1)
    v = pool(knn, head, weight)
    if inv_t != 1:
        with np.errstate(divide="ignore"):
            powered = np.where(v <= floor, floor**inv_t, np.exp(inv_t * np.log(v)))
        v = np.where(v > 0, powered, v)
    v[~mapped] = 0
    total = v.sum(axis=1, keepdims=True)
    p = np.divide(v, total, out=np.zeros_like(v), where=total > 0)
    proba[:] = p
    confidence[:] = np.where(mapped, p.max(axis=1), 0)
    codes[:] = np.where(mapped, p.argmax(axis=1), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0).sum(axis=1)
    entropy[:] = np.where(mapped, np.clip(h / log_norm, 0, 1), 1)


def mix_probabilities(
    knn: np.ndarray, head: np.ndarray | None, weight: float, temperature: float, categories: pd.Index
) -> LabelTransfer:
    """:class:`LabelTransfer` of the k-NN and head probabilities pooled (:func:`.label_head.pool`)
    and calibrated by ``temperature`` (see :mod:`.calibration`): by the label kernels, or in NumPy
    in blocks of rows (bounded temporaries)."""
    n, n_cat = knn.shape
    if head is None:
        head, weight = knn, 0.0
    proba, confidence, codes, entropy = label_kernels.summary_arrays(n, n_cat)
    log_norm = float(np.log(n_cat)) if n_cat > 1 else 1.0
    kernels = label_kernels.use_kernels(n, n_cat)  # one pass per row, in parallel, no temporaries
    mix = label_kernels.mix_rows if kernels else _mix_rows
    # the kernels take all rows at once; NumPy blocks of rows keep its float64 temporaries bounded
    for start, stop in chunk_bounds(n, max(n, 1) if kernels else _MIX_ROWS):
        rows = slice(start, stop)
        mix(
            knn[rows], head[rows], float(weight), 1.0 / float(temperature), FLOOR, log_norm,
            proba[rows], confidence[rows], codes[rows], entropy[rows],
        )  # fmt: skip
    return LabelTransfer(codes, confidence, entropy, proba, categories)


def transfer_numeric(matrix: sparse.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Weighted mean of a numeric reference column; missing reference values are ignored.

    Unmapped query cells (or cells whose neighbours all lack a value) get 0.
    """
    values = np.asarray(values, dtype=np.float64)
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    sums = matrix @ filled
    weight = matrix @ present.astype(np.float64)
    return np.divide(sums, weight, out=np.zeros_like(sums), where=weight > 0).astype(np.float32)


def iter_transfer_dense(
    matrix: sparse.csr_matrix,
    values: np.ndarray,
    *,
    chunk_size: int = DEFAULT_TRANSFER_CHUNK,
    stage: str = "transfer embedding",
) -> Steps[np.ndarray]:
    """``M · Y`` for a dense reference matrix (an embedding), float32, chunked."""
    values = np.asarray(values, dtype=np.float32)
    out = np.empty((matrix.shape[0], values.shape[1]), dtype=np.float32)
    yield Progress(stage, 0, matrix.shape[0])
    for start, stop in chunk_bounds(matrix.shape[0], chunk_size):
        out[start:stop] = matrix[start:stop] @ values
        yield Progress(stage, stop, matrix.shape[0])
    return out


def iter_transfer_expression(
    matrix: sparse.csr_matrix,
    expression: np.ndarray | sparse.spmatrix | sparse.sparray,
    *,
    chunk_size: int = DEFAULT_TRANSFER_CHUNK,
    stage: str = "transfer expression",
    row_order: np.ndarray | None = None,
) -> Steps[np.ndarray | sparse.csr_matrix]:
    """``M · X`` for the reference expression: sparse in, sparse (CSR, float32) out.

    Sparse input goes through :mod:`.sparse_product` (parallel; ``row_order``, a permutation of
    the query rows that keeps neighbouring cells together, makes it faster); dense input through
    :func:`iter_transfer_dense`.
    """
    if not sparse.issparse(expression):
        return (
            yield from iter_transfer_dense(matrix, np.asarray(expression), chunk_size=chunk_size, stage=stage)
        )
    return (yield from iter_product(matrix, expression, chunk_size, stage, row_order=row_order))
