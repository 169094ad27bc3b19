"""A closed-form classifier head in the joint space, combined with the k-NN class probabilities.

Shrunk linear discriminant analysis: class means and one pooled within-class covariance, shrunk
towards its mean variance (``SHRINKAGE``; ``SELF_TRAINED_SHRINKAGE`` once self-trained), equal
class priors (a small reference class is not outvoted). It is fitted on at most ``MAX_CELLS``
reference cells in one pass (no iterations), so it costs a few tens of milliseconds at 100k cells.
The mapping matrix ``M`` is untouched: embeddings and expression are still ``M · Y``; only the
class probabilities become the log-linear pool ``p ∝ (M · onehot + ε)^(1 - w) · head^w`` (see
:func:`pool`; with the graph vote, ``M · onehot`` is first mixed with it: :mod:`.graph_vote`).

On the quality panel (``benchmarks/quality.py``) the pool gained 0.9-5.3 points of accuracy over
k-NN alone, most on cross-platform data where a class's reference cells sit off the query's. The
earlier arithmetic mean ``(1 - w) · knn + w · head`` let the head's near-one-hot probabilities
decide almost every cell (the mean with any weight gave about the head's own labels); the
geometric pool lets a clear k-NN vote stand and the head settle the split ones.

Self-training (:func:`self_trained`): the head is fitted once more on the reference cells and the
query cells that the pool labels with confidence ``>= SELF_TRAINING``, so its class means and
covariance also describe the query's platform. On the panel it gained MERFISH 1.2 points (2.5
with the joint space's rows no longer scaled to unit length) at about the cost of one more fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADS = ("lda", "none")
MAX_CELLS = 20_000
#: covariance shrinkage of the head fitted on the reference alone, which must carry over to the
#: query's platform, and of the self-trained head, which has seen the query (chosen on the quality
#: panel: 0.3 / 0.1 lifted xplat-visium 0.5-0.9 points at no cost elsewhere; see benchmarks/README.md)
SHRINKAGE = 0.3
SELF_TRAINED_SHRINKAGE = 0.1
#: chosen on the quality panel (0.2-0.4 within 1 point everywhere; see benchmarks/README.md)
DEFAULT_WEIGHT = 0.25
#: confidence from which a query cell's pooled label trains the head (chosen on the quality panel:
#: 0.8-0.95 within half a point everywhere; see benchmarks/README.md)
SELF_TRAINING = 0.9
#: what a class without any k-NN vote counts as in the pool (a 30-NN vote is about 0.033)
KNN_FLOOR = 1e-3
#: the head's probabilities are float32 softmaxes: underflowed zeros are not vetoes
HEAD_FLOOR = 1e-12


@dataclass(frozen=True)
class LinearHead:
    """``softmax(x @ coef + intercept)``; classes absent from the training cells get 0."""

    coef: np.ndarray  # (dims, classes)
    intercept: np.ndarray  # (classes,), -inf for absent classes

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        scores = np.asarray(x, np.float32) @ self.coef + self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores


def class_statistics(x: np.ndarray, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Class means ``(n_classes, dims)``, which classes have rows, and the pooled within-class
    covariance of the rows of ``x`` (every code ``>= 0``), float64."""
    xs = np.asarray(x, np.float64)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    means = np.zeros((n_classes, xs.shape[1]))
    np.add.at(means, codes, xs)
    present = counts > 0
    means[present] /= counts[present, None]
    centred = xs - means[codes]
    cov = centred.T @ centred / max(codes.size - present.sum(), 1)
    return means, present, cov


def fit_lda(
    x: np.ndarray, codes: np.ndarray, n_classes: int, *, shrinkage: float = SHRINKAGE, seed: int = 0
) -> LinearHead:
    """Shrunk LDA on the rows of ``x`` with a class code (``codes >= 0``), equal priors."""
    rows = np.flatnonzero(codes >= 0)
    if rows.size > MAX_CELLS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_CELLS, replace=False))
    means, present, cov = class_statistics(x[rows], codes[rows], n_classes)
    ridge = float(np.trace(cov)) / cov.shape[0] if cov.shape[0] else 0.0
    cov = (1 - shrinkage) * cov + shrinkage * max(ridge, 1e-12) * np.eye(cov.shape[0])
    solved = np.linalg.solve(cov, means.T)  # (dims, classes)
    intercept = -0.5 * np.einsum("cd,dc->c", means, solved)
    intercept[~present] = -np.inf
    return LinearHead(solved.astype(np.float32), intercept.astype(np.float32))


def self_trained(
    x_ref: np.ndarray,
    codes: np.ndarray,
    x_query: np.ndarray,
    query_codes: np.ndarray,
    confidence: np.ndarray,
    n_classes: int,
    threshold: float,
    *,
    shrinkage: float = SELF_TRAINED_SHRINKAGE,
    seed: int = 0,
) -> tuple[LinearHead | None, int]:
    """Shrunk LDA on the labelled reference rows and the query rows whose label (``query_codes``,
    ``>= 0``) has ``confidence >= threshold``, and how many query rows qualified (the head is None
    when none did).

    The same as :func:`fit_lda` on both sets of rows stacked, without stacking them: at most
    ``MAX_CELLS`` rows are drawn first (as :func:`fit_lda` draws them), then gathered."""
    chosen = np.flatnonzero((confidence >= threshold) & (query_codes >= 0))
    if chosen.size == 0:
        return None, 0
    ref_rows = np.flatnonzero(codes >= 0)
    total = ref_rows.size + chosen.size
    picked = np.arange(total)
    if total > MAX_CELLS:
        picked = np.sort(np.random.default_rng(seed).choice(picked, MAX_CELLS, replace=False))
    from_ref = picked[picked < ref_rows.size]
    from_query = chosen[picked[picked >= ref_rows.size] - ref_rows.size]
    rows_ref = ref_rows[from_ref]
    x = np.vstack([np.asarray(x_ref[rows_ref], np.float32), np.asarray(x_query[from_query], np.float32)])
    labels = np.concatenate([codes[rows_ref], query_codes[from_query]])
    return fit_lda(x, labels, n_classes, shrinkage=shrinkage, seed=seed), int(chosen.size)


def pool(knn: np.ndarray, head: np.ndarray, weight: float) -> np.ndarray:
    """Log-linear pool ``(knn + KNN_FLOOR)^(1 - weight) · head^weight``, renormalised, float64.

    Rows of ``knn`` without probability (unmapped cells) stay 0, and so do classes that neither
    the k-NN vote nor the head gives anything. ``weight`` 0 returns ``knn`` itself."""
    knn = np.asarray(knn, np.float64)
    if weight <= 0:
        return knn.copy()
    head = np.asarray(head, np.float64)
    log_v = (1 - weight) * np.log(knn + KNN_FLOOR) + weight * np.log(np.maximum(head, HEAD_FLOOR))
    log_v -= log_v.max(axis=1, keepdims=True)
    v = np.exp(log_v)
    v[(knn <= 0) & (head <= 0)] = 0
    v[~(knn > 0).any(axis=1)] = 0
    total = v.sum(axis=1, keepdims=True)
    return np.divide(v, total, out=np.zeros_like(v), where=total > 0)


def combine(knn: np.ndarray, head: np.ndarray, weight: float) -> np.ndarray:
    """:func:`pool` as float32 (the mapping's class probabilities, same shape as ``knn``)."""
    return pool(knn, head, weight).astype(np.float32)
