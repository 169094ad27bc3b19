"""normalize='auto' | True | False: what is done with the values, and why."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from napari_cellmapper import CellMapperInputError
from napari_cellmapper.core import normalization as N


def _decide(x, normalize="auto"):
    x = sparse.csr_matrix(x) if not isinstance(x, np.ndarray) else x
    totals = np.asarray(x.sum(axis=1)).ravel()
    return N.decide(x, np.arange(x.shape[1]), totals, totals != 0, normalize, "query")


def _counts(seed=0, n=300, g=40):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(0.5, 2.0, g), size=(n, g)).astype(np.float32)


def quantile_normalised(seed=0, n=300, g=40) -> np.ndarray:
    """Integers 0..101: every gene's values mapped onto the same reference distribution by rank
    (what Zhu et al. did to the seqFISH and scRNA-seq data)."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(size=(n, g)) * rng.uniform(0.1, 10, g)
    target = np.sort(np.clip(np.round(rng.normal(45, 15, n)), 1, 101))
    ranks = raw.argsort(axis=0).argsort(axis=0)
    return target[ranks].astype(np.float32)


def test_counts_are_normalised():
    assert _decide(_counts()).mode == N.COUNTS


def test_quantile_normalised_integers_are_not_counts():
    d = _decide(quantile_normalised())
    assert d.mode == N.AS_IS and "quantile" in d.reason


def test_equal_library_sizes_get_log1p_only():
    x = _counts() + 1
    x = x / x.sum(axis=1, keepdims=True) * 1e4
    assert _decide(x).mode == N.LOG1P


def test_log_values_are_used_as_they_are():
    assert _decide(np.log1p(_counts() * 1.37)).mode == N.AS_IS


def test_explicit_settings():
    assert _decide(quantile_normalised(), True).mode == N.COUNTS
    assert _decide(_counts(), False).mode == N.AS_IS
    with pytest.raises(CellMapperInputError, match="negative"):
        _decide(np.log(_counts() + 0.5), True)


@pytest.mark.parametrize("bad", ["yes", 1, None, "AUTO"])
def test_unknown_setting_is_clear(bad):
    with pytest.raises(CellMapperInputError, match="Unknown normalize"):
        N.check_normalize(bad)


def test_transform_never_modifies_the_chunk():
    x = sparse.csr_matrix(_counts())
    before = x.copy()
    for mode in (N.COUNTS, N.LOG1P, N.AS_IS):
        N.transform(x, N.Decision(mode, ""), np.ones(x.shape[0]))
    assert (x != before).nnz == 0
