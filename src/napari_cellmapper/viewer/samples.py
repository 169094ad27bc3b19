"""Several samples (the regions a table annotates: slides, sections) mapped in one run.

Every region's cells keep their own table rows; for the niches their positions are laid side by
side (each region shifted right of the previous one by a gap as wide as the widest region), so a
spatial neighbourhood never spans two samples; the region of each row is the group of the
presence scores (one score per reference cell and sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Samples:
    """Rows, side-by-side positions (y, x) and the region of each row, for one run."""

    rows: np.ndarray
    coords_yx: np.ndarray
    groups: np.ndarray


def side_by_side(
    regions: Sequence[str], rows: Sequence[np.ndarray], coords_yx: Sequence[np.ndarray]
) -> Samples:
    """Concatenate the regions' rows and positions, shifting each region's x past the previous."""
    if not regions:
        raise ValueError("No region to map.")
    spans = [float(np.ptp(c[:, 1])) if len(c) else 0.0 for c in coords_yx]
    gap = max(max(spans, default=0.0), 1.0)
    shifted, right = [], 0.0
    for coords in coords_yx:
        coords = np.asarray(coords, dtype=np.float64)
        if len(coords):
            coords = coords + np.array([0.0, right - coords[:, 1].min()])
            right = coords[:, 1].max() + gap
        shifted.append(coords)
    groups = np.concatenate(
        [np.full(len(r), name, dtype=object) for name, r in zip(regions, rows, strict=True)]
    )
    return Samples(
        rows=np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]),
        coords_yx=np.concatenate(shifted) if shifted else np.empty((0, 2)),
        groups=groups,
    )
