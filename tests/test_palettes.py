"""Categorical palettes (scanpy's defaults) and colour-list helpers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_cellmapper.core import palettes as P

HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def test_palettes_are_valid_distinct_hex():
    assert len(P.DEFAULT_20) == 20 and len(P.DEFAULT_102) == 102
    for palette in (P.DEFAULT_20, P.DEFAULT_102):
        assert all(HEX.match(c) for c in palette)
        assert len({c.lower() for c in palette}) == len(palette)
    assert HEX.match(P.UNMAPPED_COLOR)
    assert P.UNMAPPED_COLOR.lower() not in {c.lower() for c in P.DEFAULT_20}


def test_scanpy_default_20_order():
    # scanpy.plotting.palettes.default_20 starts with these (checked against scanpy 1.12)
    assert P.DEFAULT_20[:5] == ["#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc"]
    assert P.DEFAULT_102[:3] == ["#FFFF00", "#1CE6FF", "#FF34FF"]


@pytest.mark.parametrize("n", [0, 1, 7, 20])
def test_default_palette_small(n):
    assert P.default_palette(n) == P.DEFAULT_20[:n]


def test_default_palette_large():
    assert P.default_palette(60) == P.DEFAULT_102[:60]
    assert len(set(P.default_palette(102))) == 102
    big = P.default_palette(250)
    assert len(big) == 250 and all(HEX.match(c) for c in big)


def test_colors_for_keeps_matching_colours():
    cats = ["a", "b", "c"]
    given = np.array(["#000000", "#111111", "#222222"], dtype=object)
    out = P.colors_for(cats, list(given))
    assert out == ["#000000", "#111111", "#222222"]
    assert all(isinstance(c, str) for c in out)


@pytest.mark.parametrize("colors", [None, ["#000000"], ["#0", "#1", "#2", "#3"]])
def test_colors_for_falls_back_to_default(colors):
    assert P.colors_for(["a", "b", "c"], colors) == P.DEFAULT_20[:3]


def test_fitted_colors_cut_a_longer_list_and_replace_a_shorter_one():
    from napari_cellmapper.core.palettes import default_palette, fitted_colors

    assert fitted_colors(["a", "b"], ["#111111", "#222222", "#333333"]) == ["#111111", "#222222"]
    assert fitted_colors(["a", "b", "c"], ["#111111"]) == default_palette(3)
    assert fitted_colors(["a"], None) == default_palette(1)
