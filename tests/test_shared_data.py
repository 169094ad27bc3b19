"""Accuracy on real data (../shared/data); skipped with a reason when the folder is absent."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _shared_data import DEFAULT_DATA, merfish_hypothalamus  # noqa: E402

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not (DEFAULT_DATA / "merfish_hypothalamus").is_dir(),
        reason=f"real data not found at {DEFAULT_DATA} (only CI and developers have ../shared/data)",
    ),
]


def test_merfish_from_counts_alone_beats_the_bar():
    from napari_cellmapper import CellMapper
    from napari_cellmapper.core.metrics import accuracy, macro_f1

    reference, query = merfish_hypothalamus()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-count reference cells and all-zero genes warn
        CellMapper(query, reference).fit(None, obs_keys="cell_type", progress=False)
    keep = query.obs["cell_type_true"].notna()
    truth = query.obs.loc[keep, "cell_type_true"].astype(str)
    pred = query.obs.loc[keep, "cell_type_pred"].astype(str)
    assert accuracy(truth, pred) >= 0.78
    assert macro_f1(truth, pred) >= 0.7
    assert query.obs["cellmapper_unmapped"].sum() == 0
