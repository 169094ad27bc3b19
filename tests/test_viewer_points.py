"""viewer/points.py: colour helpers (pure) and the fast Points layer (GUI, napari viewer)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from napari_cellmapper.viewer import points as P
from napari_cellmapper.viewer.points import (
    DEFAULT_20,
    MISSING_COLOR,
    categorical_rgba,
    continuous_rgba,
    legend_entries,
)

GREY = np.array([0xD3, 0xD3, 0xD3, 255], dtype=np.float32) / 255
RED, GREEN, BLUE = (1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1)


def _hex_rgba(h: str) -> np.ndarray:
    h = h.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0], dtype=np.float32)


# ------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------
def test_categorical_rgba_exact_with_given_hex_colours():
    values = pd.Categorical(["a", "b", None, "a", "c"], categories=["a", "b", "c"])
    rgba = categorical_rgba(values, ["#ff0000", "#00ff00", "#0000ff"])
    assert rgba.dtype == np.float32 and rgba.shape == (5, 4)
    np.testing.assert_array_equal(rgba, np.array([RED, GREEN, GREY, RED, BLUE], dtype=np.float32))
    assert MISSING_COLOR == "#d3d3d3"


def test_categorical_rgba_series_dict_and_defaults():
    s = pd.Series(["x", "y", "x", np.nan])  # not categorical: made categorical (x, y)
    np.testing.assert_array_equal(
        categorical_rgba(s, {"y": "#0000ff"}),  # x has no colour: default palette, rank 0
        np.array([_hex_rgba(DEFAULT_20[0]), BLUE, _hex_rgba(DEFAULT_20[0]), GREY], dtype=np.float32),
    )
    cat = pd.Series(pd.Categorical(["b", "a"], categories=["a", "b"]))
    np.testing.assert_array_equal(
        categorical_rgba(cat, None), np.stack([_hex_rgba(DEFAULT_20[1]), _hex_rgba(DEFAULT_20[0])])
    )
    # short colour list: the rest from the default palette; names and #rgba hex accepted
    out = categorical_rgba(pd.Categorical(["a", "b", "c"]), ["red", "#00ff0080"])
    np.testing.assert_allclose(out[0], RED)
    np.testing.assert_allclose(out[1], [0, 1, 0, 128 / 255], atol=1e-7)
    np.testing.assert_allclose(out[2], _hex_rgba(DEFAULT_20[2]))


def test_categorical_rgba_many_categories_uses_102_palette():
    cats = [f"c{i}" for i in range(30)]
    out = categorical_rgba(pd.Categorical(cats, categories=cats))
    np.testing.assert_allclose(out[29], _hex_rgba(P.DEFAULT_102[29]))


def test_continuous_rgba_ends_nan_and_clim():
    from napari.utils.colormaps import ensure_colormap

    viridis = ensure_colormap("viridis")
    lo_c, hi_c = np.asarray(viridis.map(np.array([0.0, 1.0])), dtype=np.float32)
    rgba = continuous_rgba(np.array([0.0, 1.0, np.nan, 0.5]), "viridis")
    assert rgba.dtype == np.float32 and rgba.shape == (4, 4)
    np.testing.assert_allclose(rgba[0], lo_c, atol=1e-6)
    np.testing.assert_allclose(rgba[1], hi_c, atol=1e-6)
    np.testing.assert_array_equal(rgba[2], GREY)
    np.testing.assert_allclose(rgba[3], np.asarray(viridis.map(np.array([0.5])))[0], atol=4 / 255)
    # clim: values below/above are clipped to the end colours, inf is missing
    out = continuous_rgba(np.array([-1.0, 0.0, 2.0, 5.0, np.inf]), "viridis", clim=(0.0, 2.0))
    np.testing.assert_allclose(out[0], lo_c, atol=1e-6)
    np.testing.assert_allclose(out[1], lo_c, atol=1e-6)
    np.testing.assert_allclose(out[2], hi_c, atol=1e-6)
    np.testing.assert_allclose(out[3], hi_c, atol=1e-6)
    np.testing.assert_array_equal(out[4], GREY)
    # with clim (0, 4), the value 2 is in the middle
    np.testing.assert_allclose(
        continuous_rgba(np.array([2.0]), "viridis", clim=(0, 4))[0],
        continuous_rgba(np.array([0.5]), "viridis", clim=(0, 1))[0],
    )
    # constant and all-NaN input do not fail
    assert continuous_rgba(np.full(3, 7.0)).shape == (3, 4)
    np.testing.assert_array_equal(continuous_rgba(np.full(2, np.nan)), np.stack([GREY, GREY]))
    # nullable pandas column with <NA>
    s = pd.Series([0.0, None, 1.0], dtype="Float64")
    np.testing.assert_array_equal(continuous_rgba(s)[1], GREY)


def test_legend_entries_from_features():
    feats = pd.DataFrame(
        {
            "ct": pd.Categorical(["a", "c", None], categories=["a", "b", "c"]),
            "conf": [0.1, 0.2, 0.3],
        }
    )
    assert legend_entries(feats, "ct", ["#ff0000", "#00ff00", "#0000ff"]) == [
        ("a", "#ff0000"),
        ("c", "#0000ff"),
        ("NA", MISSING_COLOR),
    ]
    assert legend_entries(feats, "ct", {"b": "#00ff00"}, only_present=False)[1] == ("b", "#00ff00")
    assert legend_entries(feats, "conf") == []
    assert legend_entries(feats, None) == []


def test_pure_helpers_import_without_napari():
    code = (
        "import sys; import pandas as pd; "
        "from napari_cellmapper.viewer.points import categorical_rgba, legend_entries; "
        "categorical_rgba(pd.Categorical(['a', None]), ['#ff0000']); "
        "legend_entries(pd.DataFrame({'x': ['a']}), 'x'); "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------
# napari viewer
# ------------------------------------------------------------------------------------------
def _cells(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, size=(n, 2)).astype(np.float32)
    ct_codes = rng.integers(0, 3, n)
    ct_codes[:5] = -1  # unmapped
    feats = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(ct_codes, categories=["B", "T", "NK"]),
            "confidence": rng.random(n).astype(np.float32),
            "niche": pd.Categorical.from_codes(rng.integers(0, 4, n), categories=list("wxyz")),
            "label": np.array(["p", "q"])[rng.integers(0, 2, n)],  # strings -> categorical
        }
    )
    return coords, feats


CT_COLORS = ["#ff0000", "#00ff00", "#0000ff"]


def _vispy_layer(viewer, layer):
    return viewer.window._qt_viewer.canvas.layer_to_visual[layer]


def _uploaded_face(viewer, layer) -> np.ndarray:
    return np.array(_vispy_layer(viewer, layer).node.points_markers._data["a_bg_color"])


@pytest.mark.gui
def test_add_recolour_categorical_continuous_categorical(make_napari_viewer):
    viewer = make_napari_viewer()
    coords, feats = _cells()
    layer = P.add_cell_points(viewer, coords, feats, "cell_type", colors={"cell_type": CT_COLORS}, size=7)
    n_layers = len(viewer.layers)
    assert layer in viewer.layers and layer.visible
    np.testing.assert_array_equal(layer.data, coords)
    face = np.asarray(layer.face_color)
    np.testing.assert_allclose(face[:5], np.tile(GREY, (5, 1)))  # unmapped cells grey
    codes = feats["cell_type"].cat.codes.to_numpy()
    for i in (5, 6, 7, 100, 599):
        np.testing.assert_allclose(face[i], _hex_rgba(CT_COLORS[codes[i]]))
    assert list(layer.features.columns) == ["cell_type", "confidence", "niche", "label"]
    assert isinstance(layer.features["label"].dtype, pd.CategoricalDtype)
    assert layer.metadata["cellmapper_color_by"] == "cell_type"
    assert layer.metadata["cellmapper_kind"] == "categorical"
    assert layer.metadata["cellmapper_colors"] == {"B": "#ff0000", "T": "#00ff00", "NK": "#0000ff"}
    np.testing.assert_allclose(_uploaded_face(viewer, layer), face)

    # categorical -> continuous
    P.color_points_by(layer, "confidence")
    expected = continuous_rgba(feats["confidence"].to_numpy(), "viridis")
    np.testing.assert_allclose(np.asarray(layer.face_color)[[0, 7, 300]], expected[[0, 7, 300]])
    assert layer.metadata["cellmapper_color_by"] == "confidence"
    assert layer.metadata["cellmapper_kind"] == "continuous"
    assert layer.metadata["cellmapper_colormap"] == "viridis"
    lo, hi = layer.metadata["cellmapper_clim"]
    assert lo == pytest.approx(float(feats["confidence"].min()))
    assert hi == pytest.approx(float(feats["confidence"].max()))
    assert "cellmapper_colors" not in layer.metadata
    assert layer.face_color_mode == "direct"
    np.testing.assert_allclose(_uploaded_face(viewer, layer), np.asarray(layer.face_color))

    # given clim and colormap
    P.color_points_by(layer, "confidence", colormap="magma", clim=(0.0, 0.5))
    assert layer.metadata["cellmapper_clim"] == (0.0, 0.5)
    assert layer.metadata["cellmapper_colormap"] == "magma"
    big = np.flatnonzero(feats["confidence"].to_numpy() > 0.5)[:3]
    top = continuous_rgba(np.array([1.0]), "magma", clim=(0, 1))[0]
    np.testing.assert_allclose(np.asarray(layer.face_color)[big], np.tile(top, (len(big), 1)))

    # -> another categorical (default palette) -> back to cell type with its colours remembered
    P.color_points_by(layer, "niche")
    np.testing.assert_allclose(np.asarray(layer.face_color), categorical_rgba(feats["niche"], None))
    P.color_points_by(layer, "cell_type")
    np.testing.assert_allclose(np.asarray(layer.face_color), face)
    np.testing.assert_allclose(_uploaded_face(viewer, layer), face)

    assert len(viewer.layers) == n_layers
    assert viewer.layers[-1] is layer
    assert list(layer.features.columns) == ["cell_type", "confidence", "niche", "label"]
    pd.testing.assert_series_equal(
        layer.features["confidence"].reset_index(drop=True), feats["confidence"], check_names=False
    )
    assert legend_entries(layer, "cell_type")[:3] == [("B", "#ff0000"), ("T", "#00ff00"), ("NK", "#0000ff")]
    assert legend_entries(layer, "cell_type")[-1] == ("NA", MISSING_COLOR)


@pytest.mark.gui
def test_uploaded_colours_equal_napari_own_upload(make_napari_viewer):
    """Guard of the private fast path: the vertex buffer written in place holds what napari's
    own full upload (VispyPointsLayer._on_data_change) would write."""
    viewer = make_napari_viewer()
    coords, feats = _cells(300)
    layer = P.add_cell_points(viewer, coords, feats, "niche")
    vis = _vispy_layer(viewer, layer)
    assert P._vispy_points_of(layer) == [vis]
    for key in ("confidence", "cell_type", "label"):
        P.color_points_by(layer, key)
        fast = _uploaded_face(viewer, layer)
        vis._on_data_change()  # napari's own path
        np.testing.assert_array_equal(fast, _uploaded_face(viewer, layer))
        np.testing.assert_array_equal(fast, np.asarray(layer.face_color, dtype=np.float32))


@pytest.mark.gui
def test_public_fallback_without_canvas_fast_path(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    coords, feats = _cells(200)
    layer = P.add_cell_points(viewer, coords, feats, "cell_type")
    monkeypatch.setattr(P, "_vispy_points_of", lambda layer: [])  # canvas not reachable
    P.color_points_by(layer, "confidence")
    expected = continuous_rgba(feats["confidence"].to_numpy())
    np.testing.assert_allclose(np.asarray(layer.face_color), expected)
    np.testing.assert_allclose(_uploaded_face(viewer, layer), expected)  # napari's own upload


@pytest.mark.gui
def test_symbol_fast_path_keeps_symbol_semantics(make_napari_viewer):
    from napari.layers.points._points_constants import Symbol

    viewer = make_napari_viewer()
    coords, feats = _cells(100)
    layer = P.add_cell_points(viewer, coords, feats, "cell_type")
    assert layer.symbol[0] == "disc" and layer.symbol[0] == Symbol.DISC
    assert all(s == Symbol.DISC for s in layer.symbol[:10])
    markers = _vispy_layer(viewer, layer).node.points_markers
    disc = markers._symbol_shader_values["disc"]
    assert np.all(markers._data["a_symbol"] == disc)
    layer.symbol = "square"  # public setter still works afterwards
    assert layer.symbol[0] == Symbol.SQUARE
    assert np.all(markers._data["a_symbol"] == markers._symbol_shader_values["square"])


@pytest.mark.gui
def test_large_layer_drawing_defaults_and_kwargs(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    coords, feats = _cells(50)
    small = P.add_cell_points(viewer, coords, feats, "cell_type", name="small")
    assert np.all(small.border_width == 0) and small.antialiasing == 1
    monkeypatch.setattr(P, "LARGE_LAYER", 10)
    big = P.add_cell_points(
        viewer, coords, feats, "confidence", name="big", scale=(2, 2), translate=(5, 5), opacity=0.5
    )
    assert big.antialiasing == 0
    assert tuple(big.canvas_size_limits) == (1, 10000)
    assert tuple(big.scale) == (2, 2) and tuple(big.translate) == (5, 5) and big.opacity == 0.5
    assert np.all(big.size == 5.0)
    hidden = P.add_cell_points(viewer, coords, feats, "niche", name="hidden", visible=False, antialiasing=1)
    assert not hidden.visible and hidden.antialiasing == 1
    assert [layer.name for layer in viewer.layers] == ["small", "big", "hidden"]


@pytest.mark.gui
def test_color_by_none_and_errors(make_napari_viewer):
    viewer = make_napari_viewer()
    coords, feats = _cells(40)
    layer = P.add_cell_points(viewer, coords, feats, None)
    assert layer.metadata["cellmapper_color_by"] is None
    np.testing.assert_allclose(np.asarray(layer.face_color), np.tile(GREY, (40, 1)))
    P.color_points_by(layer, "niche")
    P.color_points_by(layer, None)
    np.testing.assert_allclose(np.asarray(layer.face_color), np.tile(GREY, (40, 1)))
    with pytest.raises(KeyError):
        P.color_points_by(layer, "nope")
    with pytest.raises(KeyError):
        P.add_cell_points(viewer, coords, feats, "nope")
    with pytest.raises(ValueError):
        P.add_cell_points(viewer, coords, feats.iloc[:10], "niche")
    assert len(viewer.layers) == 1


@pytest.mark.gui
def test_hover_status_shows_feature_values(make_napari_viewer):
    viewer = make_napari_viewer()
    coords = np.array([[10.0, 10.0], [50.0, 50.0]], dtype=np.float32)
    feats = pd.DataFrame({"cell_type": pd.Categorical(["B", "T"]), "confidence": [0.25, 0.75]})
    layer = P.add_cell_points(viewer, coords, feats, "cell_type", size=10)
    status = layer.get_status((50.0, 50.0), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "T" in text and "0.75" in text


@pytest.mark.gui
def test_rendered_pixels_follow_recolouring(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    coords = np.array([[0.0, 0.0], [50.0, 50.0], [100.0, 100.0]], dtype=np.float32)
    feats = pd.DataFrame({"kind": pd.Categorical(["a", "b", "a"]), "score": [0.0, 1.0, 0.0]})
    P.add_cell_points(viewer, coords, feats, "kind", colors={"kind": ["#0000ff", "#ff0000"]}, size=30)
    viewer.reset_view()

    def centre_pixel():
        img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
        h, w = img.shape[:2]
        return img[h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2, :3].reshape(-1, 3).mean(0)

    np.testing.assert_allclose(centre_pixel(), [255, 0, 0], atol=3)  # the middle point is "b"
    layer = viewer.layers[0]
    P.color_points_by(layer, "score", colormap="gray")
    np.testing.assert_allclose(centre_pixel(), [255, 255, 255], atol=3)
    P.color_points_by(layer, "kind", colors={"b": "#00ff00"})
    np.testing.assert_allclose(centre_pixel(), [0, 255, 0], atol=3)


def _markers_of(layer):
    return [vis.node.points_markers for vis in P._vispy_points_of(layer)]


@pytest.mark.gui
def test_gl_points_draw_the_same_pixels_as_quads(make_napari_viewer):
    """GL_POINTS (large layers) and napari's instanced quads give the same picture, recoloured too."""
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, 400, (3000, 2)).astype(np.float32)
    feats = pd.DataFrame({"kind": pd.Categorical(rng.choice(list("abc"), 3000)), "score": rng.random(3000)})
    shots = {}
    for variant in ("quads", "points", "switched"):  # switched: to points after the first upload
        viewer.layers.clear()
        layer = P.add_cell_points(viewer, coords, feats, "kind", size=6, gl_points=variant == "points")
        (markers,) = _markers_of(layer)
        viewer.reset_view()
        if variant == "switched":
            viewer.screenshot(canvas_only=True, flash=False)
            assert markers._data is not None and P._use_gl_points(markers)
        assert markers._method == ("instanced" if variant == "quads" else "points")
        shots[variant, "kind"] = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
        P.color_points_by(layer, "score")
        shots[variant, "score"] = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    for variant in ("points", "switched"):
        for key in ("kind", "score"):
            quads, points = shots["quads", key].astype(int), shots[variant, key].astype(int)
            assert quads.shape == points.shape
            assert (quads[..., :3].sum(-1) > 0).mean() > 0.1  # something was drawn
            assert (np.abs(quads - points).max(axis=-1) <= 8).mean() > 0.99
    assert np.abs(shots["points", "kind"].astype(int) - shots["points", "score"]).max() > 50


@pytest.mark.gui
def test_gl_points_default_for_large_layers_only(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    coords, feats = _cells(50)
    small = P.add_cell_points(viewer, coords, feats, "cell_type", name="small")
    assert [m._method for m in _markers_of(small)] == ["instanced"]
    monkeypatch.setattr(P, "LARGE_LAYER", 10)
    big = P.add_cell_points(viewer, coords, feats, "cell_type", name="big")
    (markers,) = _markers_of(big)
    assert markers._method == "points" and markers._draw_mode == "points"
    assert P._use_gl_points(markers)  # idempotent
    kept = P.add_cell_points(viewer, coords, feats, "cell_type", name="kept", gl_points=False)
    assert [m._method for m in _markers_of(kept)] == ["instanced"]


def test_gl_points_refuses_an_unexpected_visual():
    class NotMarkers:
        _method = "instanced"
        _draw_mode = "triangles"

    assert not P._use_gl_points(NotMarkers())
    assert not P._use_gl_points(object())


def _red_fraction_of_drawn_cells(viewer) -> tuple[float, float]:
    """(share of lit canvas pixels, share of those that are red) in a canvas screenshot."""
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    QApplication.processEvents()
    img = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    lit = img.sum(-1) > 60
    r, g, b = img[lit].T
    return float(lit.mean()), float(np.mean((r > 2 * g) & (r > 2 * b))) if lit.any() else 0.0


@pytest.mark.gui
@pytest.mark.parametrize("n", [20_000, P.LARGE_LAYER])
def test_small_cells_keep_their_colour_at_whole_tissue_zoom(make_napari_viewer, n):
    """Issue 11 defect 1: cells under napari's 2 px minimum were drawn in the border's dimgray."""
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 20_000, (n, 2))
    feats = pd.DataFrame({"t": pd.Categorical(["a"] * n, categories=["a", "b"])})
    layer = P.add_cell_points(viewer, coords, feats, "t", colors={"t": ["#0000ff", "#ff0000"]}, size=5.0)
    feats["t"] = pd.Categorical(["b"] * n, categories=["a", "b"])
    layer.features = feats
    P.color_points_by(layer, "t")  # the recolour path writes the border colours too
    lit, red = _red_fraction_of_drawn_cells(viewer)
    assert viewer.scene.camera.zoom * 5.0 < 1.0  # cells are under a pixel on screen
    assert lit > 0.05 and red > 0.95, (lit, red)


@pytest.mark.gui
def test_gl_points_draw_clamped_cells_one_pixel_wide(make_napari_viewer, monkeypatch):
    """Cells clamped at the 1 px minimum are 1 px on the canvas (vispy's edge floor widened them to
    3 px: 9 fragments each), in their face colour; cells above the minimum keep their size."""
    monkeypatch.setattr(P, "LARGE_LAYER", 100)
    viewer = make_napari_viewer(show=True)
    side = 20
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 1000.0
    feats = pd.DataFrame({"t": pd.Categorical(["a"] * len(grid))})
    layer = P.add_cell_points(viewer, grid, feats, "t", colors={"t": ["#ff0000"]}, size=5.0, overview=False)
    (markers,) = _markers_of(layer)
    assert markers._method == "points" and P._EDGE_FLOOR not in markers.shared_program._vcode
    lit, red = _red_fraction_of_drawn_cells(viewer)
    img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    assert viewer.scene.camera.zoom * 5.0 < 1.0  # every cell is clamped
    n_lit = int((img.sum(-1) > 60).sum())
    assert 0.8 * len(grid) <= n_lit <= 1.5 * len(grid), n_lit  # one pixel per cell (9 before)
    assert red > 0.95
    viewer.scene.camera.center = (10_000.0, 10_000.0)  # on a cell
    viewer.scene.camera.zoom = 40.0 / 5.0  # cells of 40 px: not clamped, drawn at their size
    img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    assert 0.5 * np.pi * 20**2 < (img.sum(-1) > 60).sum() < 2 * np.pi * 20**2


def test_vertex_shader_left_alone_where_vispy_has_neither_line():
    class Program:
        vert = None

    class Other:
        shared_program = Program()
        _shaders = {"vertex": "void main() { gl_PointSize = 1.0; }"}

    assert P._points_vertex_shader(Other()) == (False, False)
    assert Program.vert is None
    assert P._points_vertex_shader(object()) == (False, False)


def _grid_layer(viewer, monkeypatch, size: float, gl_points: bool = True):
    """A layer of 20 x 20 cells 100 apart, each of its own colour (of 7); GL_POINTS by default."""
    monkeypatch.setattr(P, "LARGE_LAYER", 100)
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2) * 100.0
    feats = pd.DataFrame({"t": pd.Categorical(np.arange(len(grid)) % 7)})
    layer = P.add_cell_points(viewer, grid, feats, "t", size=size, overview=False, gl_points=gl_points)
    return layer, _markers_of(layer)[0]


def _shot(viewer) -> np.ndarray:
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)


@pytest.mark.gui
def test_gl_points_draw_cells_over_the_canvas_edge(make_napari_viewer, monkeypatch):
    """GL drops a point whose centre leaves the viewport: a cell half over the canvas' edge
    vanished (issue 15). With the guard band the picture is the quads' one, edges included."""
    viewer = make_napari_viewer(show=True)
    layers = {gl: _grid_layer(viewer, monkeypatch, size=80.0, gl_points=gl) for gl in (True, False)}
    _shot(viewer)  # the window settles
    canvas = viewer.window._qt_viewer.canvas.native  # test only: the canvas' size in pixels
    viewer.scene.camera.zoom = 1.0  # cells 80 px wide
    # the canvas' edges through columns and rows of cells: their centres are outside it
    viewer.scene.camera.center = (1000.0 + canvas.height() / 2 + 20, 1000.0 + canvas.width() / 2 + 20)
    shots = {}
    for gl_points, (layer, markers) in layers.items():
        layers[not gl_points][0].visible = False
        layer.visible = True
        shots[gl_points] = _shot(viewer)
        assert markers._method == ("points" if gl_points else "instanced")
    assert P._GUARD_SCALE in layers[True][1].shared_program._vcode
    points, quads = shots[True], shots[False]
    lit = quads.sum(-1) > 60
    assert lit[:, :3].any() and lit[:3, :].any()  # cells cut by the left and the top edges
    assert (np.abs(quads - points).max(-1) <= 8).mean() > 0.999


@pytest.mark.gui
def test_gl_points_wider_than_gl_allows_are_drawn_as_quads(make_napari_viewer, monkeypatch):
    """GL clamps a point to its largest size (255 px in llvmpipe): zoomed in further, the layer is
    drawn as quads (the cell at its size), and as points again once zoomed out."""
    monkeypatch.setattr(P, "_GL_LIMITS", [(64.0, 16384)])  # a small GL limit: small screenshots
    viewer = make_napari_viewer(show=True)
    layer, markers = _grid_layer(viewer, monkeypatch, size=40.0)
    viewer.scene.camera.center = (1000.0, 1000.0)  # on a cell

    def centre_cell_width() -> int:  # the lit run through the canvas' centre, in pixels
        row = _shot(viewer)
        row = row[row.shape[0] // 2].sum(-1) > 60
        middle = len(row) // 2
        left = middle - np.argmin(row[middle::-1])
        return int(middle + np.argmin(row[middle:]) - left)

    viewer.scene.camera.zoom = 1.0  # 40 px: points
    assert 36 <= centre_cell_width() <= 44 and markers._method == "points"
    viewer.scene.camera.zoom = 2.5  # 100 px: wider than GL's largest point
    assert 95 <= centre_cell_width() <= 105  # at its size, not 64 px
    assert markers._method == "instanced"
    viewer.scene.camera.zoom = 1.0
    assert 36 <= centre_cell_width() <= 44 and markers._method == "points"


def test_guard_margin():
    assert P._guard_margin(0.0, 255.0, 10_000) == 1
    assert P._guard_margin(40.0, 255.0, 10_000) == 21
    assert P._guard_margin(4000.0, 255.0, 10_000) == 129  # no point is wider than GL draws
    assert P._guard_margin(40.0, 255.0, 20) == 10  # within GL's largest viewport
    assert P._guard_margin(40.0, 255.0, -5) == 0


def test_quads_only_back_on_a_switched_visual():
    assert not P._use_quads(object())


@pytest.mark.gui
def test_disc_only_marker_draws_the_same_pixels_and_follows_the_symbols(make_napari_viewer, monkeypatch):
    """Large layers of discs get a fragment shader with the disc alone; another symbol puts
    vispy's own back, and discs again the disc-only one."""
    monkeypatch.setattr(P, "LARGE_LAYER", 100)
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(5)
    coords = rng.uniform(0, 400, (2000, 2)).astype(np.float32)
    feats = pd.DataFrame({"kind": pd.Categorical(rng.choice(list("abc"), 2000))})
    layer = P.add_cell_points(viewer, coords, feats, "kind", size=9)
    (markers,) = _markers_of(layer)
    viewer.reset_view()
    assert markers.shared_program.frag["marker"] is P._DISC_MARKERS[markers]
    discs = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    assert P.discs_only(markers, False)
    assert markers.shared_program.frag["marker"] is markers._symbol_func
    np.testing.assert_array_equal(np.asarray(viewer.screenshot(canvas_only=True, flash=False)), discs)
    P.discs_only(markers, True)
    layer.symbol = "square"  # the user picks another symbol in the layer controls
    assert markers.shared_program.frag["marker"] is markers._symbol_func
    squares = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    assert (squares[..., :3].sum(-1) > 0).sum() > (discs[..., :3].sum(-1) > 0).sum()  # corners drawn
    layer.symbol = "disc"
    assert markers.shared_program.frag["marker"] is P._DISC_MARKERS[markers]


@pytest.mark.gui
def test_per_cell_sizes_given_at_construction(make_napari_viewer):
    viewer = make_napari_viewer()
    coords, feats = _cells(50)
    sizes = np.linspace(2.0, 6.0, 50).astype(np.float32)
    layer = P.add_cell_points(viewer, coords, feats, "cell_type", size=sizes, name="varied")
    np.testing.assert_allclose(layer.size, sizes)
    assert layer.metadata["cellmapper_base_size"] == pytest.approx(float(np.median(sizes)))
    same = P.add_cell_points(viewer, coords, feats, "cell_type", size=np.full(50, 3.0), name="same")
    np.testing.assert_allclose(same.size, 3.0)  # equal sizes: one size for all
    with pytest.raises(ValueError, match="one per cell"):
        P.add_cell_points(viewer, coords, feats, "cell_type", size=sizes[:10], name="wrong")
    assert "wrong" not in viewer.layers
