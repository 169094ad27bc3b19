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


def test_identifier_decision_on_a_sample_of_a_large_table_matches_the_full_count():
    n = 200_000
    rng = np.random.default_rng(0)
    ids = pd.Series([f"cell_{i}" for i in rng.permutation(n)])
    assert is_identifier(ids)
    assert not is_identifier(pd.Series(rng.choice([f"t{i}" for i in range(300)], n)))  # 300 types
    half = pd.Series([f"c{i % (n // 2 + 5_000)}" for i in range(n)])  # 60% distinct: counted
    assert is_identifier(half)
    assert not is_identifier(pd.Series([f"c{i % (n // 3)}" for i in range(n)]))  # 33% distinct
    ints = np.arange(n) + 3
    assert is_identifier(pd.Series(rng.permutation(ints)))
    ints[-1] = ints[0]  # one repeat, outside the sample: all values are counted
    assert not is_identifier(pd.Series(ints))


def test_identifier_gets_no_legend():
    ids = pd.Series([f"cell_{i}" for i in range(1_000)]).astype("category")
    info = color_info(ids, "cell_id")
    assert info.categorical and info.entries == ()
    info = color_info(pd.Series(["a", "b"] * 500).astype("category"), "cell_type")
    assert [label for label, _ in info.entries] == ["a", "b"]


def test_scores_on_unit_range_keep_it_unless_autoscaled():
    import numpy as np
    import pandas as pd

    from napari_cellmapper.viewer.colors import color_info, explanation, fixed_range

    values = pd.Series(np.array([0.4, 0.6]))
    for key in ("cell_type_conf", "cell_type_entropy", "P(B cells)", "presence_score", "mapping_quality"):
        assert fixed_range(key) == (0.0, 1.0) and color_info(values, key).clim == (0.0, 1.0)
        assert color_info(values, key, autoscale=True).clim == (0.4, 0.6)
        assert explanation(key)
    assert fixed_range("Gad1 (measured)") is None and color_info(values, "Gad1 (measured)").clim == (0.4, 0.6)


def test_dark_ended_colormaps_get_a_visible_start():
    import matplotlib
    import numpy as np
    from napari.utils.colormaps import ensure_colormap

    from napari_cellmapper.viewer.colors import visible_on_dark

    name = visible_on_dark("magma")
    assert name == "magma_bright" and visible_on_dark("magma") == name  # registered once
    first = matplotlib.colormaps[name](0.0)
    assert max(first[:3]) > 0.2  # magma itself starts at black
    np.testing.assert_allclose(ensure_colormap(name).map(np.array([0.0]))[0][:3], first[:3], atol=1e-2)
    assert visible_on_dark("cividis") == "cividis"
