"""QC plots on plain matplotlib figures (no Qt) and their atomic PNG export."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from napari_cellmapper.core.qc import UNASSIGNED_COLOR, agreement_table, confidence_histogram
from napari_cellmapper.widgets.qc import plots


def test_histogram_greys_bins_below_threshold():
    fig = Figure()
    counts, edges = confidence_histogram(np.linspace(0, 1, 101), bins=10)
    ax = plots.draw_histogram(fig, counts, edges, 0.3)
    assert len(ax.patches) == 10 and ax.lines[0].get_xdata()[0] == 0.3
    colours = [patch.get_facecolor() for patch in ax.patches]
    assert all(np.allclose(c, to_rgba(UNASSIGNED_COLOR)) for c in colours[:3])
    assert not any(np.allclose(c, to_rgba(UNASSIGNED_COLOR)) for c in colours[3:])
    assert fig.get_facecolor() == to_rgba(plots.PlotTheme().background)


def test_agreement_heatmap_shows_fractions_and_counts():
    fig = Figure()
    result = agreement_table(
        pd.Series(["T", "T", "B", "B", "B"], name="truth"), pd.Categorical(["T", "B", "B", "B", "T"])
    )
    ax = plots.draw_agreement(fig, result)
    np.testing.assert_allclose(ax.images[0].get_array(), [[2 / 3, 1 / 3], [0.5, 0.5]])
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B (67%)", "T (50%)"]


def test_composition_bars_stack_to_one():
    fig = Figure()
    fractions = pd.DataFrame({"a": [0.25, 1.0], "b": [0.75, 0.0]}, index=pd.Index(["n0", "n1"], name="niche"))
    ax = plots.draw_composition(fig, fractions, {"a": "#ff0000", "b": "#0000ff"})
    ends = {}
    for patch in ax.patches:
        y = round(patch.get_y() + patch.get_height() / 2)
        ends[y] = max(ends.get(y, 0.0), patch.get_x() + patch.get_width())
    assert ends == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert np.allclose(ax.patches[0].get_facecolor(), to_rgba("#ff0000"))


def test_message_plot_has_no_axes_frame():
    fig = Figure()
    plots.draw_message(fig, "nothing yet")
    assert not fig.axes[0].axison and fig.axes[0].texts[0].get_text() == "nothing yet"


def test_save_png_is_atomic_and_readable(tmp_path, monkeypatch):
    fig = Figure(figsize=(3, 2))
    plots.draw_message(fig, "plot")
    umask = os.umask(0o022)
    try:
        path = plots.save_png(fig, tmp_path / "plot.png")
    finally:
        os.umask(umask)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert os.stat(path).st_mode & 0o777 == 0o644  # the umask's, not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save_png(fig, tmp_path / "plot.png")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"] and path.read_bytes() == data
