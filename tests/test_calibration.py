"""Temperature calibration of class probabilities."""

from __future__ import annotations

import numpy as np

from napari_cellmapper.core import calibration as C


def _overconfident(n=4000, seed=0):
    """Predictions right 70% of the time, stated with 0.97 confidence."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.7, truth, (truth + rng.integers(1, 3, n)) % 3)
    proba = np.full((n, 3), 0.015)
    proba[np.arange(n), pred] = 0.97
    return proba, truth, pred


def _ece(conf, correct, bins=15):
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return (
        sum(
            abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum()
            for b in range(bins)
            if (idx == b).any()
        )
        / conf.size
    )


def test_temperature_flattens_overconfident_probabilities_and_lowers_ece():
    proba, truth, pred = _overconfident()
    t = C.fit_temperature(proba, truth)
    assert t > 1
    calibrated = C.apply_temperature(proba, t)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), pred)  # the ranking is kept
    correct = pred == truth
    assert _ece(calibrated.max(axis=1), correct) < 0.5 * _ece(proba.max(axis=1), correct)


def test_zero_rows_stay_zero_and_few_labels_mean_no_change():
    proba = np.array([[0.0, 0.0], [0.6, 0.4]])
    out = C.apply_temperature(proba, 2.0)
    assert np.all(out[0] == 0) and out[1, 0] < 0.6
    assert C.fit_temperature(proba, np.array([0, 0])) == 1.0
