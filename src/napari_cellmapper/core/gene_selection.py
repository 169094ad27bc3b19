"""Highly variable genes for the joint space (Seurat's dispersion, per dataset, then combined).

Each dataset ranks its genes by dispersion (variance / mean of the normalised values),
standardised among genes of similar mean (20 bins of equal size); a gene's score is the mean of
its two datasets' standardised dispersions, so a gene must vary in both to be chosen.
"""

from __future__ import annotations

import numpy as np

N_BINS = 20


def _normalised_dispersion(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    disp = np.log(np.divide(var, mean, out=np.full_like(var, 1e-12), where=mean > 0) + 1e-12)
    order = np.argsort(mean, kind="stable")
    out = np.zeros_like(disp)
    for chunk in np.array_split(order, min(N_BINS, mean.size)):
        d = disp[chunk]
        sd = d.std()
        out[chunk] = (d - d.mean()) / sd if sd > 0 else 0.0
    out[mean <= 0] = -np.inf
    return out


def highly_variable(means: list[np.ndarray], variances: list[np.ndarray], n_top: int) -> np.ndarray:
    """Sorted column indices of the ``n_top`` genes with the highest combined dispersion score."""
    score = np.mean([_normalised_dispersion(m, v) for m, v in zip(means, variances, strict=True)], axis=0)
    top = np.argsort(-score, kind="stable")[:n_top]
    return np.sort(top)
