"""What a colour-by choice means: categorical palette or continuous colormap, for any cells layer.

Points are coloured by ``viewer/points.py``; shapes and labels get per-cell RGBA from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from napari_cellmapper.core.palettes import fitted_colors

#: colormaps whose darkest end vanishes on napari's black canvas, and where to start them instead
_DARK_START = {"viridis": 0.15, "magma": 0.3, "inferno": 0.3, "plasma": 0.1}
CONTINUOUS_COLORMAP = "viridis"
#: scores that live in [0, 1]: drawn over that fixed range unless autoscaled
_UNIT_KEYS = ("mapping_quality", "presence_score")
_UNIT_SUFFIXES = ("_conf", "_entropy")
PROBABILITY_PREFIX = "P("
#: one line on what a score means, shown with its colour bar
_EXPLANATIONS = {
    "mapping_quality": "How well the reference covers the cell: 1 = as close to its reference neighbours "
    "as a typical reference cell is to its own; near 0 = farther than almost any (a type the "
    "reference may lack).",
    "presence_score": "How well each reference cell is represented in the query (0 = absent).",
}
_SUFFIX_EXPLANATIONS = {
    "_conf": "Probability of the predicted label.",
    "_entropy": "Uncertainty of the label: 0 = one type, 1 = every type equally likely.",
}
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
    note: str = ""  # what the value means (continuous scores)


def fixed_range(key: str) -> tuple[float, float] | None:
    """(0, 1) for scores defined on that range (confidence, entropy, probabilities, presence,
    mapping quality), so that colours compare across samples and runs; None for the rest."""
    if key in _UNIT_KEYS or key.endswith(_UNIT_SUFFIXES) or key.startswith(PROBABILITY_PREFIX):
        return (0.0, 1.0)
    return None


def explanation(key: str) -> str:
    """One line on what a score means ("" when there is nothing to add)."""
    if key in _EXPLANATIONS:
        return _EXPLANATIONS[key]
    if key.startswith(PROBABILITY_PREFIX):
        return "Probability of this type, from the reference neighbours (and the classifier head)."
    return next((text for suffix, text in _SUFFIX_EXPLANATIONS.items() if key.endswith(suffix)), "")


def visible_on_dark(name: str) -> str:
    """A colormap whose lowest colour still shows on a black canvas: ``name`` itself, or for
    colormaps that start at (near) black, ``"<name>_bright"``, the same colours from a lighter
    start, registered with napari and matplotlib on first use."""
    start = _DARK_START.get(name)
    if start is None:
        return name
    bright = f"{name}_bright"
    import matplotlib
    from matplotlib.colors import ListedColormap

    if bright not in matplotlib.colormaps:
        colors = matplotlib.colormaps[name](np.linspace(start, 1.0, 256))
        matplotlib.colormaps.register(ListedColormap(colors, name=bright))
        try:
            from napari.utils.colormaps import Colormap, ensure_colormap
        except ImportError:  # the library without napari: matplotlib's registry serves
            return bright
        ensure_colormap(Colormap(colors, name=bright, display_name=bright))
    return bright


_ID_SAMPLE = 10_000


def is_categorical(values: pd.Series) -> bool:
    """Categorical, boolean, string-like columns are drawn with a palette."""
    return isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind in "bOSU"


def is_identifier(values: pd.Series) -> bool:
    """Identifier-like column (cell_id, barcode): over 200 values, strings mostly unique, or
    integers all distinct.

    Decided on a random sample of 10,000 values when that is clear, counting every value only in
    between: counting 300k cell ids took 30-60 ms per column on every refresh of the colour
    choices. The number of distinct values is estimated from the repeats within the sample
    (``D ≈ s² / 2r``, the birthday problem); it decides only with a wide margin around ``n / 2``."""
    n = len(values)
    if n <= IDENTIFIER_MIN_VALUES or values.dtype.kind == "b":
        return False
    integers = values.dtype.kind in "iu"
    if not integers and not is_categorical(values):
        return False
    if isinstance(values.dtype, pd.CategoricalDtype) and len(values.cat.categories) <= IDENTIFIER_MIN_VALUES:
        return False
    if n > 4 * _ID_SAMPLE:
        picked = np.random.default_rng(0).choice(n, _ID_SAMPLE, replace=False)
        repeats = _ID_SAMPLE - int(values.iloc[picked].nunique(dropna=True))
        if integers and repeats:
            return False
        distinct = _ID_SAMPLE**2 / (2 * max(repeats, 0.5))
        if not integers and distinct > 0.75 * n:
            return True
        if distinct < 0.3 * n:
            return False
    if integers:
        return int(values.nunique()) == n
    n_values = int(values.nunique(dropna=True))
    return n_values > IDENTIFIER_MIN_VALUES and n_values > n // 2


def palette_for(categories: list[str], uns: Any = None, key: str | None = None) -> list[str]:
    """Colours for ``categories``: ``uns[f"{key}_colors"]`` when it fits, else a default palette."""
    colors = None
    if uns is not None and key is not None:
        colors = uns.get(f"{key}_colors") if hasattr(uns, "get") else None
    return fitted_colors(categories, colors)


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
    values: pd.Series,
    key: str,
    colors: list[str] | None = None,
    colormap: str = CONTINUOUS_COLORMAP,
    autoscale: bool = False,
) -> ColorInfo:
    """Legend entries or colormap limits describing how ``values`` are drawn: scores on [0, 1]
    keep that range unless ``autoscale``; other numbers span their finite min/max."""
    if is_categorical(values):
        if is_identifier(values):
            return ColorInfo(key, True)
        from napari_cellmapper.viewer.points import legend_entries

        frame = pd.DataFrame({key: as_categorical(values)})
        entries = legend_entries(frame, key, colors, missing_label="not mapped")
        return ColorInfo(key, True, entries=tuple(entries))
    fixed = None if autoscale else fixed_range(key)
    clim = fixed or clim_of(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))
    return ColorInfo(key, False, colormap=colormap, clim=clim, note=explanation(key))
