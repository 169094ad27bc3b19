"""Labels coloured through a table of colour codes (viewer.label_codes)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellmapper.viewer import label_codes as LC


def _raster() -> np.ndarray:
    raster = np.zeros((40, 60), dtype=np.int32)
    raster[2:10, 3:12] = 7
    raster[20:30, 30:50] = 1_000
    raster[31:39, 5:15] = 3  # a label without a table row
    return raster


@pytest.mark.parametrize("dense_limit", [LC.DENSE_LIMIT, 10])  # dense table, sorted search
def test_codes_follow_the_cells_and_hide_the_rest(monkeypatch, dense_limit):
    monkeypatch.setattr(LC, "DENSE_LIMIT", dense_limit)
    raster = _raster()
    codes = LC.LabelCodes([raster, raster[::2, ::2]], np.array([1_000, 7]))
    codes.set_codes(np.array([2, 5]))
    full, half = (np.asarray(level) for level in codes.levels())
    assert full.dtype == np.uint8 and half.shape == (20, 30)  # few colours: one byte a pixel
    expected = np.select([raster == 1_000, raster == 7], [2, 5], 0)
    np.testing.assert_array_equal(full, expected)
    np.testing.assert_array_equal(half, expected[::2, ::2])
    codes.set_codes(np.array([1, 1]))  # a new colouring: new arrays, new codes
    np.testing.assert_array_equal(np.asarray(codes.levels()[0]), (expected > 0).astype(int))


@pytest.mark.parametrize("dense_limit", [LC.DENSE_LIMIT, 10])
def test_labels_outside_the_table_get_no_code(monkeypatch, dense_limit):
    monkeypatch.setattr(LC, "DENSE_LIMIT", dense_limit)
    codes = LC.LabelCodes([np.zeros((2, 2), np.int32)], np.array([7, 1_000]))
    codes.set_codes(np.array([2, 5]))
    block = np.array([[0, 7, 1_000, 1_001], [5_000, -1, 3, 2**31 - 1]], dtype=np.int32)
    np.testing.assert_array_equal(codes.encode(block), [[0, 2, 5, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(codes.encode(block.astype(np.uint32)), [[0, 2, 5, 0], [0, 0, 0, 0]])


def test_raw_value_reads_the_raw_raster_block_by_block():
    import dask.array as da

    raster = _raster()
    codes = LC.LabelCodes([da.from_array(raster, chunks=(16, 16))], np.array([7, 1_000]))
    for yx in [(5, 5), (25, 40), (35, 10), (0, 0), (39.4, 59.4)]:
        assert codes.raw_value(yx) == raster[int(round(yx[0])), int(round(yx[1]))]
    assert codes.raw_value((-1, 5)) == 0 and codes.raw_value((5, 60)) == 0
    assert len(codes._blocks) <= LC._BLOCK_CACHE


def test_color_codes_one_code_per_distinct_colour():
    rgba = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0.5, 0.5, 0.5, 1]], dtype=float)
    codes, colours = LC.color_codes(rgba)
    assert codes.min() == 1 and len(colours) == 3
    np.testing.assert_allclose(colours[codes - 1], rgba, atol=0.5 / 255)
    assert codes[0] == codes[2] != codes[1]


@pytest.mark.gui
def test_cell_labels_answer_in_cell_ids_and_hover_shows_the_cell(make_napari_viewer):
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    raster = _raster()
    codes = LC.LabelCodes([raster], np.array([7, 1_000]))
    codes.set_codes(np.array([1, 2]))
    features = pd.DataFrame({"index": [7, 1_000], "cell_type": ["B cell", "T cell"]})
    viewer = make_napari_viewer()
    cmap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "red", 2: "blue"})
    layer = LC.make_cell_labels(codes, features=features, colormap=cmap)
    viewer.add_layer(layer)
    assert layer.get_value((25, 40)) == 1_000  # not its code, 2
    assert layer.get_value((0, 0)) == 0
    status = layer.get_status((5, 5))
    assert "cell_type: B cell" in status["value"] and "7" in status["value"]
    LC.show_codes(layer)  # the data follow a new table
    assert np.asarray(layer.data).max() == 2


def test_raw_value_comes_from_the_blocks_napari_read_for_display():
    import dask.array as da

    raster = _raster()
    level0 = da.from_array(raster, chunks=(16, 16))
    codes = LC.LabelCodes([level0, da.from_array(raster[::2, ::2], chunks=(16, 16))], np.array([7, 1_000]))
    codes.set_codes(np.array([1, 2]))
    np.asarray(codes.levels()[1][10:15, 15:25])  # napari reads a tile of level 1
    kept = {key[0] for key in codes._blocks}
    assert kept == {1}
    codes.raw = [None, codes.raw[1]]  # level 0 unreadable: the answer must come from what was kept
    assert codes.raw_value((12, 20), level=1) == raster[24, 40] == 1_000


def test_a_recolouring_reads_the_raw_blocks_of_the_view_once():
    """The raw blocks napari read for display are kept: the next colouring of the same view
    encodes them again without reading the raster."""
    import dask.array as da

    raster = _raster()
    reads = []

    def counted(block, block_info=None):
        reads.append(tuple(lo for lo, _ in block_info[0]["array-location"]))
        return block

    level0 = da.from_array(raster, chunks=(16, 16)).map_blocks(counted, dtype=raster.dtype)
    codes = LC.LabelCodes([level0], np.array([7, 1_000]))
    codes.set_codes(np.array([1, 2]))
    first = np.asarray(codes.levels()[0][0:20, 0:20])  # napari reads the tiles in view
    assert len(reads) == 4
    codes.set_codes(np.array([3, 4]))  # another colouring, the same view
    second = np.asarray(codes.levels()[0][0:20, 0:20])
    assert len(reads) == 4  # nothing read again
    np.testing.assert_array_equal(second, np.select([first == 1, first == 2], [3, 4], 0))
    whole = np.asarray(codes.levels()[0])  # the whole level (12 blocks): the cache stays bounded
    assert len(reads) >= 4 + 8 and len(codes._blocks) <= LC._BLOCK_CACHE
    np.testing.assert_array_equal(whole, np.select([raster == 7, raster == 1_000], [3, 4], 0))


def test_coded_levels_are_named_by_their_table_without_dask_tokenising():
    raster = np.zeros((32, 32), dtype=np.int32)
    raster[:16] = 7
    raster[16:] = 1_000
    codes = LC.LabelCodes([raster, raster[::2, ::2]], np.array([7, 1_000]))
    codes.set_codes(np.array([1, 2]))
    first = [level.name for level in codes.levels()]
    assert first == [level.name for level in codes.levels()]  # same table: same keys
    assert first[0] != first[1]  # one name per level
    codes.set_codes(np.array([2, 1]))
    second = codes.levels()
    assert not {level.name for level in second} & set(first)  # a new colouring: new keys
    np.testing.assert_array_equal(np.asarray(second[0])[0, 0], 2)
    other = LC.LabelCodes([raster], np.array([7, 1_000]))
    other.set_codes(np.array([2, 1]))
    assert other.levels()[0].name != second[0].name  # another layer's codes never share keys
