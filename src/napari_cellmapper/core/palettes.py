"""Categorical colour palettes (scanpy's defaults) and colour-list helpers, no plotting imports."""

from __future__ import annotations

from collections.abc import Sequence

# scanpy's default_20 (vega category20 reordered) and the start of default_102 (godsnot)
DEFAULT_20 = [
    "#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2", "#b5bd61",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31",
]  # fmt: skip
DEFAULT_102 = [
    "#FFFF00", "#1CE6FF", "#FF34FF", "#FF4A46", "#008941", "#006FA6", "#A30059", "#FFDBE5",
    "#7A4900", "#0000A6", "#63FFAC", "#B79762", "#004D43", "#8FB0FF", "#997D87", "#5A0007",
    "#809693", "#6A3A4C", "#1B4400", "#4FC601", "#3B5DFF", "#4A3B53", "#FF2F80", "#61615A",
    "#BA0900", "#6B7900", "#00C2A0", "#FFAA92", "#FF90C9", "#B903AA", "#D16100", "#DDEFFF",
    "#000035", "#7B4F4B", "#A1C299", "#300018", "#0AA6D8", "#013349", "#00846F", "#372101",
    "#FFB500", "#C2FFED", "#A079BF", "#CC0744", "#C0B9B2", "#C2FF99", "#001E09", "#00489C",
    "#6F0062", "#0CBD66", "#EEC3FF", "#456D75", "#B77B68", "#7A87A1", "#788D66", "#885578",
    "#FAD09F", "#FF8A9A", "#D157A0", "#BEC459", "#456648", "#0086ED", "#886F4C", "#34362D",
    "#B4A8BD", "#00A6AA", "#452C2C", "#636375", "#A3C8C9", "#FF913F", "#938A81", "#575329",
    "#00FECF", "#B05B6F", "#8CD0FF", "#3B9700", "#04F757", "#C8A1A1", "#1E6E00", "#7900D7",
    "#A77500", "#6367A9", "#A05837", "#6B002C", "#772600", "#D790FF", "#9B9700", "#549E79",
    "#FFF69F", "#201625", "#72418F", "#BC23FF", "#99ADC0", "#3A2465", "#922329", "#5B4534",
    "#FDE8DC", "#404E55", "#0089A3", "#CB7E98", "#A4E804", "#324E72",
]  # fmt: skip
UNMAPPED_COLOR = "#d3d3d3"


def default_palette(n: int) -> list[str]:
    """``n`` distinct hex colours: scanpy's default_20 up to 20, its default_102 up to 102, then cycled."""
    if n <= len(DEFAULT_20):
        return DEFAULT_20[:n]
    if n <= len(DEFAULT_102):
        return DEFAULT_102[:n]
    return [DEFAULT_102[i % len(DEFAULT_102)] for i in range(n)]


def fitted_colors(categories: Sequence[str], colors: Sequence[str] | None) -> list[str]:
    """``colors`` cut to one per category when it has at least that many (scanpy keeps
    ``uns[f"{key}_colors"]`` that way after categories go), else the default palette."""
    if colors is not None and len(colors) >= len(categories):
        return [str(c) for c in list(colors)[: len(categories)]]
    return default_palette(len(categories))


def colors_for(categories: Sequence[str], colors: Sequence[str] | None) -> list[str]:
    """``colors`` when it has one entry per category, else the default palette."""
    if colors is not None and len(colors) == len(categories):
        return [str(c) for c in colors]
    return default_palette(len(categories))
