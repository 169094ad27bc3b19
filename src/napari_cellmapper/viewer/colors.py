"""What a colour-by choice means: categorical palette or continuous colormap, for any cells layer.

Points are coloured by ``viewer/points.py``; shapes and labels get per-cell RGBA from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from napari_cellmapper.core.palettes import colors_for

CONTINUOUS_COLORMAP = "viridis"
#: A categorical/string column with more distinct values than this, and mostly one value per cell,
#: is an identifier (cell_id, barcode): never a default colouring, never a legend.
IDENTIFIER_MIN_VALUES = 200


@dataclass(frozen=True)
class ColorInfo:
    """How cells are coloured now: a legend (categorical) or a colormap with limits (continuous)."""

    key: str
    categorical: bool
    entries: tuple[tuple[str, str], ...] = ()  # (label, hex) for categorical
    colormap: str = CONTINUOUS_COLORMAP
    clim: tuple[float, float] = (0.0, 1.0)


def is_categorical(values: pd.Series) -> bool:
    """Categorical, boolean, string-like columns are drawn with a palette."""
    return isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind in "bOSU"


def is_identifier(values: pd.Series) -> bool:
    """Identifier-like column (cell_id, barcode): over 200 values, strings mostly unique, or
    integers all distinct."""
    n = len(values)
    if n <= IDENTIFIER_MIN_VALUES or values.dtype.kind == "b":
        return False
    if values.dtype.kind in "iu":
        return int(values.nunique()) == n
    if not is_categorical(values):
        return False
    if isinstance(values.dtype, pd.CategoricalDtype) and len(values.cat.categories) <= IDENTIFIER_MIN_VALUES:
        return False
    n_values = int(values.nunique(dropna=True))
    return n_values > IDENTIFIER_MIN_VALUES and n_values > n // 2


def palette_for(categories: list[str], uns: Any = None, key: str | None = None) -> list[str]:
    """Colours for ``categories``: ``uns[f"{key}_colors"]`` when it fits, else a default palette."""
    colors = None
    if uns is not None and key is not None:
        colors = uns.get(f"{key}_colors") if hasattr(uns, "get") else None
    if colors is not None and len(colors) >= len(categories):
        return [str(c) for c in list(colors)[: len(categories)]]
    return colors_for(categories, colors)


def as_categorical(values: pd.Series) -> pd.Categorical:
    """A pandas Categorical of a column (booleans and strings become categories)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.array  # type: ignore[return-value]
    return pd.Categorical(values.astype("string").astype(object).where(values.notna(), None))


def clim_of(values: np.ndarray) -> tuple[float, float]:
    """Finite min/max of values, widened when constant."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def rgba_for(
    values: pd.Series,
    colors: list[str] | None = None,
    colormap: str = CONTINUOUS_COLORMAP,
    clim: tuple[float, float] | None = None,
) -> np.ndarray:
    """(n, 4) float RGBA per cell (``viewer/points.py`` lookups); missing values are light grey."""
    from napari_cellmapper.viewer.points import categorical_rgba, continuous_rgba

    if is_categorical(values):
        return categorical_rgba(as_categorical(values), colors)
    return continuous_rgba(values, colormap, clim)


def color_info(
    values: pd.Series, key: str, colors: list[str] | None = None, colormap: str = CONTINUOUS_COLORMAP
) -> ColorInfo:
    """Legend entries or colormap limits describing how ``values`` are drawn."""
    if is_categorical(values):
        if is_identifier(values):
            return ColorInfo(key, True)
        from napari_cellmapper.viewer.points import legend_entries

        frame = pd.DataFrame({key: as_categorical(values)})
        entries = legend_entries(frame, key, colors, missing_label="not mapped")
        return ColorInfo(key, True, entries=tuple(entries))
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return ColorInfo(key, False, colormap=colormap, clim=clim_of(numbers))
