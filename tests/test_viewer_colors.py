"""Colour-by semantics: identifier-like columns are never coloured with a legend."""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_cellmapper.viewer.colors import color_info, is_identifier


def test_unique_per_cell_columns_are_identifiers():
    n = 5_000
    ids = pd.Series([f"cell_{i}" for i in range(n)])
    assert is_identifier(ids)
    assert is_identifier(ids.astype("category"))
    types = pd.Series(np.repeat(["a", "b", "c", "d"], n // 4)).astype("category")
    assert not is_identifier(types)
    assert is_identifier(pd.Series(np.arange(n) + 7))  # integer instance ids
    assert not is_identifier(pd.Series(np.arange(n, dtype=float)))  # measurements: a colormap
    assert not is_identifier(pd.Series(np.arange(n) % 40))  # integer counts
    assert not is_identifier(ids.iloc[:150])  # small tables: a legend is cheap and useful


def test_identifier_gets_no_legend():
    ids = pd.Series([f"cell_{i}" for i in range(1_000)]).astype("category")
    info = color_info(ids, "cell_id")
    assert info.categorical and info.entries == ()
    info = color_info(pd.Series(["a", "b"] * 500).astype("category"), "cell_type")
    assert [label for label, _ in info.entries] == ["a", "b"]
