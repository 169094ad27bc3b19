"""What to do with a dataset's expression values before the joint space: ``normalize=``.

``"auto"`` decides per dataset from a look at its values (decision and reason are recorded):

- non-negative values whose library sizes are already equal (CPM, or counts down-sampled to one
  depth): ``log1p`` only;
- negative or non-integer values (log-normalised, scaled): used as they are;
- integers with nearly no zeros whose genes all have about the same median (quantile-normalised
  values, e.g. 0..101): used as they are; re-normalising them as counts cost 7 points of accuracy
  on the seqFISH data set;
- other non-negative integers are counts: library-size normalisation, then ``log1p``.

``True`` always normalises and logs (counts), ``False`` never touches the values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from napari_cellmapper.core.validation import CellMapperInputError

NORMALIZE_CHOICES = ("auto", True, False)
#: library sizes within this ratio of each other count as equal
EQUAL_TOTALS_RATIO = 1.01
#: quantile-normalised: fewer zeros than this, gene medians within this ratio (central 90%)
QUANTILE_MAX_ZEROS = 0.01
QUANTILE_MEDIAN_RATIO = 2.0
SAMPLE_ROWS = 1000
SAMPLE_GENES = 500
CHUNK_ROWS = 4096

COUNTS, LOG1P, AS_IS = "counts", "log1p", "as_is"


@dataclass(frozen=True)
class Decision:
    """How one dataset's values are transformed, and why."""

    mode: str  # COUNTS (normalise + log1p), LOG1P or AS_IS
    reason: str


def row_chunks(
    x, cols: np.ndarray | None = None, size: int = CHUNK_ROWS
) -> Iterator[tuple[int, int, object]]:
    """``(start, stop, rows[start:stop][:, cols])`` over a CSR or dense matrix; only one chunk is
    ever copied."""
    for start in range(0, x.shape[0], size):
        stop = min(start + size, x.shape[0])
        chunk = x[start:stop]
        if cols is not None:
            chunk = chunk[:, cols]
        if sparse.issparse(chunk):
            chunk = sparse.csr_matrix(chunk, dtype=np.float32)
        else:
            chunk = np.asarray(chunk, dtype=np.float32)
        yield start, stop, chunk


def check_normalize(normalize: object) -> None:
    if not (normalize is True or normalize is False or (isinstance(normalize, str) and normalize == "auto")):
        raise CellMapperInputError(
            f"Unknown normalize {normalize!r}. Choose 'auto' (decide from the values), True (the "
            "values are counts: normalise library sizes and log1p) or False (use the values as they are)."
        )


def _sample(x, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """A dense sample of at most SAMPLE_ROWS x SAMPLE_GENES values of the shared columns."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(x.shape[0], min(SAMPLE_ROWS, x.shape[0]), replace=False))
    genes = np.sort(rng.choice(cols, min(SAMPLE_GENES, cols.size), replace=False))
    sub = x[rows][:, genes]
    return sub.toarray() if sparse.issparse(sub) else np.asarray(sub, dtype=np.float32)


def decide(
    x, cols: np.ndarray, totals: np.ndarray, usable: np.ndarray, normalize: object, role: str
) -> Decision:
    """The transformation of one dataset (``x`` restricted to ``cols``) for ``normalize``."""
    sample = _sample(x, cols)
    negative = bool((sample < 0).any())
    if normalize is True:
        if negative:
            raise CellMapperInputError(
                f"normalize=True treats the {role}'s values as counts, but some are negative. "
                "Pass normalize='auto' or False for values that are already normalised."
            )
        return Decision(COUNTS, "normalize=True: library-size normalisation and log1p")
    if normalize is False:
        return Decision(AS_IS, "normalize=False: values used as they are")
    t = totals[usable]
    if not negative and t.size and t.min() > 0 and t.max() / t.min() <= EQUAL_TOTALS_RATIO:
        return Decision(LOG1P, "library sizes already equal (normalised, not logged): log1p only")
    integer = np.allclose(sample, np.round(sample))
    if negative or not integer:
        return Decision(AS_IS, "negative or non-integer values (already normalised): used as they are")
    zeros = float((sample == 0).mean())
    medians = np.median(sample, axis=0)
    lo, hi = np.percentile(medians, [5, 95])
    if zeros < QUANTILE_MAX_ZEROS and lo > 0 and hi / lo <= QUANTILE_MEDIAN_RATIO:
        return Decision(
            AS_IS,
            "integers with nearly no zeros and equal gene medians (quantile-normalised): used as they are",
        )
    return Decision(COUNTS, "counts: library-size normalisation and log1p")


def transform(chunk, decision: Decision, size_factors: np.ndarray | None):
    """Apply ``decision`` to one chunk (a copy: the input is never modified)."""
    if decision.mode == AS_IS:
        return chunk.copy()
    if decision.mode == COUNTS:
        chunk = (
            (sparse.diags(size_factors.astype(np.float32)) @ chunk)
            if sparse.issparse(chunk)
            else chunk * size_factors[:, None].astype(np.float32)
        )
    else:
        chunk = chunk.copy()
    if sparse.issparse(chunk):
        chunk.data = np.log1p(chunk.data)
        return chunk
    return np.log1p(chunk)
