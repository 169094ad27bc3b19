"""The QC panel's plots drawn on matplotlib figures, and their atomic PNG export (no Qt here).

Each ``draw_*`` function clears the figure and draws one plot in the panel's theme colours, so
the same figure is shown in the dock and saved as a PNG.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from napari_cellmapper.core.qc import UNASSIGNED_COLOR, Agreement

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: above this many cells in a heatmap, counts are not written in the cells
MAX_ANNOTATED_CELLS = 400
PNG_DPI = 150


@dataclass(frozen=True)
class PlotTheme:
    """Figure colours: napari's dark theme by default."""

    background: str = "#23242b"
    text: str = "#f0f1f2"
    muted: str = "#8f949c"
    accent: str = "#4f8fd6"
    line: str = "#e3b617"


def _reset(fig: Figure, theme: PlotTheme) -> object:
    fig.clear()
    fig.set_facecolor(theme.background)
    ax = fig.add_subplot()
    ax.set_facecolor(theme.background)
    for spine in ax.spines.values():
        spine.set_color(theme.muted)
    ax.tick_params(colors=theme.text, labelsize=8)
    ax.xaxis.label.set_color(theme.text)
    ax.yaxis.label.set_color(theme.text)
    ax.title.set_color(theme.text)
    return ax


def draw_message(fig: Figure, text: str, theme: PlotTheme = PlotTheme()) -> None:
    """An empty plot saying why there is nothing to show."""
    ax = _reset(fig, theme)
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", color=theme.muted, fontsize=9, wrap=True)


def draw_histogram(
    fig: Figure,
    counts: np.ndarray,
    edges: np.ndarray,
    threshold: float,
    *,
    title: str = "Confidence",
    below_color: str = UNASSIGNED_COLOR,
    theme: PlotTheme = PlotTheme(),
) -> object:
    """Bars of cells per confidence bin (``below_color`` below ``threshold``), a line at the threshold."""
    ax = _reset(fig, theme)
    lefts, widths = edges[:-1], np.diff(edges)
    centres = lefts + widths / 2
    colors = [below_color if c < threshold else theme.accent for c in centres]
    ax.bar(lefts, counts, width=widths, align="edge", color=colors, edgecolor=theme.background, linewidth=0.5)
    ax.axvline(threshold, color=theme.line, linewidth=1.5, label=f"threshold {threshold:.2f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("cells", fontsize=8)
    ax.set_title(title, fontsize=9)
    legend = ax.legend(fontsize=7, frameon=False, loc="upper left")
    for text in legend.get_texts():
        text.set_color(theme.text)
    return ax


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def draw_agreement(
    fig: Figure, agreement: Agreement, *, title: str = "Agreement", theme: PlotTheme = PlotTheme()
) -> object:
    """Heatmap of the cross table (colour: fraction of the row; text: cells), rows named with
    their agreement."""
    ax = _reset(fig, theme)
    counts, fractions = agreement.counts, agreement.fractions
    ax.imshow(fractions.to_numpy(), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    rows = [
        f"{_short(str(r))} ({a:.0%})" if np.isfinite(a) else _short(str(r))
        for r, a in zip(counts.index, agreement.agreement.reindex(counts.index), strict=True)
    ]
    ax.set_yticks(range(len(rows)), rows, fontsize=6.5)
    ax.set_xticks(range(counts.shape[1]), [_short(str(c), 14) for c in counts.columns], fontsize=6.5)
    ax.tick_params(axis="x", labelrotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    if counts.size <= MAX_ANNOTATED_CELLS:
        values, share = counts.to_numpy(), fractions.to_numpy()
        for (i, j), value in np.ndenumerate(values):
            if value:
                ax.text(
                    j, i, str(value), ha="center", va="center", fontsize=6,
                    color="#000000" if share[i, j] > 0.6 else "#ffffff",
                )  # fmt: skip
    ax.set_ylabel(str(counts.index.name or "annotation"), fontsize=8)
    ax.set_title(title, fontsize=9)
    return ax


def draw_composition(
    fig: Figure,
    fractions: pd.DataFrame,
    colors: dict[str, str],
    *,
    title: str = "Composition",
    theme: PlotTheme = PlotTheme(),
) -> object:
    """Horizontal stacked bars: one per group (row), segments the labels' fractions (columns)."""
    ax = _reset(fig, theme)
    left = np.zeros(len(fractions))
    positions = np.arange(len(fractions))
    for label in fractions.columns:
        width = fractions[label].to_numpy(dtype=float)
        ax.barh(
            positions, width, left=left, color=colors.get(str(label), theme.muted), label=_short(str(label)),
            edgecolor=theme.background, linewidth=0.3, gid=f"composition:{label}",
        )  # fmt: skip
        left += width
    ax.set_yticks(positions, [_short(str(g)) for g in fractions.index], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("fraction of cells", fontsize=8)
    ax.set_ylabel(str(fractions.index.name or "group"), fontsize=8)
    ax.set_title(title, fontsize=9)
    legend = ax.legend(
        fontsize=6,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncols=1 + len(fractions.columns) // 14,
    )
    for text in legend.get_texts():
        text.set_color(theme.text)
    return ax


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = PNG_DPI) -> Path:
    """Write ``fig`` as a PNG atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi, facecolor=fig.get_facecolor())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)  # mkstemp's 0600 would make the plot private
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return path
