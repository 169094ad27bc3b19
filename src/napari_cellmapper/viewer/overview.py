"""A coloured raster of the cells, drawn instead of their points when the whole tissue is in view.

At whole-tissue zoom a 100k-1M-cell sample's cells are a few screen pixels wide, and a frame of
that many points is the slowest thing the canvas does in software OpenGL (llvmpipe: 50-80 ms per
100k points, whatever the shader; ``benchmarks/README.md``). At that zoom the same picture is a
texture: each cell a small disc of its colour in an RGBA raster whose pixel is one screen pixel
(:func:`raster_pixel`; rebuilt once the camera rests at a new zoom), drawn as one textured quad
in place of the points.

The raster is a vispy ``Image`` child of the points layer's own canvas node, so it is placed by
the layer's transformation (pixel scale, affine, coordinate system) and drawn where the points
are, in the layer order; napari's model is untouched: the layer, its features, hover, clicks and
selection stay the points'. A cell's disc is at least one raster pixel wide, so every cell keeps
at least one screen pixel of its colour, as a point clamped at the canvas minimum does. Where the
raster would be wider than :data:`MAX_SIDE` pixels, or the cells wider than :data:`MAX_STAMP`
pixels on screen (zoomed in), the points are drawn as before.

The reference embedding's view (``widgets/embedding``) uses the same raster for its cells
(:class:`OverviewSource` is what either gives it).

Pure NumPy here except :class:`CellOverview`, which imports vispy when it first draws.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: the raster's longest side, in pixels (a texture of at most 4096 x 4096 x 4 bytes)
MAX_SIDE = 4096
#: the narrowest disc drawn, in raster pixels: a raster pixel is one screen pixel
#: (:func:`raster_pixel`), so no cell falls between the screen's samples
MIN_STAMP = 1
#: the widest disc: the points are drawn instead when the median cell is wider on screen
MAX_STAMP = 7


#: milliseconds the camera must rest before the raster is rebuilt at its new zoom
SETTLE_MS = 150


def raster_pixel(screen_per_data: float) -> float:
    """Data units per raster pixel at this zoom: one screen pixel, so that every raster pixel is
    drawn exactly once (a raster pixel of 1.07 screen pixels, say, doubles every fourteenth
    column and row: a visible lattice over a slide of cells). NaN for no zoom."""
    if not np.isfinite(screen_per_data) or screen_per_data <= 0:
        return float("nan")
    return 1.0 / float(screen_per_data)


def debounced(milliseconds: int = SETTLE_MS) -> Callable[[Callable[[], object]], None]:
    """``defer(callback)``: run ``callback`` once the calls have stopped for ``milliseconds``
    (a Qt single-shot timer, restarted by every call; the callback is held weakly if a method)."""
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.setSingleShot(True)
    timer.setInterval(milliseconds)
    pending: list[Any] = [None]

    def fire() -> None:
        callback = pending[0]() if isinstance(pending[0], weakref.WeakMethod) else pending[0]
        if callback is not None:
            callback()

    timer.timeout.connect(fire)

    def defer(callback: Callable[[], object]) -> None:
        pending[0] = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else callback
        timer.start()

    defer.timer = timer  # type: ignore[attr-defined] - kept alive with the function
    return defer


@dataclass(frozen=True)
class OverviewGrid:
    """Where each cell falls on a raster of ``pixel`` data units per pixel.

    ``origin``: (y, x) of the raster's corner in the layer's data coordinates; ``shape``: (rows,
    columns); ``flat``: the raster pixels (flat indices) painted, ``cell``: the cell painting
    each (cells of one disc size in their order, so later cells cover earlier ones as points do);
    ``stamp``: the median cell's disc, in pixels.
    """

    origin: np.ndarray
    pixel: float
    shape: tuple[int, int]
    flat: np.ndarray
    cell: np.ndarray
    stamp: int
    n_cells: int


def _disc(diameter: int) -> np.ndarray:
    """(m, 2) pixel offsets of a disc ``diameter`` pixels wide around the cell's pixel (an even
    diameter is centred on that pixel's upper-left corner)."""
    low, high = -(diameter // 2), (diameter - 1) // 2
    dy, dx = np.mgrid[low : high + 1, low : high + 1]
    centre = 0.0 if diameter % 2 else -0.5
    keep = (dy - centre) ** 2 + (dx - centre) ** 2 <= (diameter / 2) ** 2 + 0.25
    return np.column_stack([dy[keep], dx[keep]])


def overview_grid(
    coords_yx: np.ndarray, sizes: float | np.ndarray, pixel: float, max_side: int = MAX_SIDE
) -> OverviewGrid | None:
    """The raster's grid for cells at ``coords_yx`` (n, 2) of diameter ``sizes`` (data units; one
    or one per cell) at ``pixel`` data units per raster pixel. None when the raster cannot stand
    for the points: no cells, no finite position, not 2-D, wider than ``max_side`` pixels, or the
    median cell wider than :data:`MAX_STAMP` pixels."""
    coords = np.asarray(coords_yx)
    if coords.ndim != 2 or coords.shape[1] != 2 or not len(coords) or not (np.isfinite(pixel) and pixel > 0):
        return None
    finite = np.isfinite(coords[:, 0]) & np.isfinite(coords[:, 1])  # per column: 10x faster at 1M
    if not finite.any():
        return None
    sizes = np.broadcast_to(np.asarray(sizes, dtype=np.float64), (len(coords),))[finite]
    discs = np.floor(np.nan_to_num(sizes) / pixel + 0.5)
    discs = np.clip(discs, MIN_STAMP, MAX_STAMP + 1, out=discs).astype(np.int8)
    counts = np.bincount(discs, minlength=MAX_STAMP + 2)
    stamp = int(np.searchsorted(np.cumsum(counts), (len(discs) + 1) // 2))  # the median, no sort
    if stamp > MAX_STAMP:
        return None
    discs = np.minimum(discs, MAX_STAMP, out=discs)
    yx = coords if finite.all() else coords[finite]
    low = np.array([yx[:, 0].min(), yx[:, 1].min()], dtype=np.float64)
    high = np.array([yx[:, 0].max(), yx[:, 1].max()], dtype=np.float64)
    margin = (MAX_STAMP + 1) * pixel
    origin = low - margin
    shape = np.ceil((high + margin - origin) / pixel).astype(np.int64) + 1
    if shape.max() > max_side:
        return None
    cells = np.flatnonzero(finite).astype(np.int32 if len(coords) < 2**31 else np.int64)
    ij = ((yx - origin) / pixel).astype(np.int32)  # positive: truncation is the floor
    base = ij[:, 0] * np.int32(shape[1]) + ij[:, 1]  # flat pixel of each cell (< 4096^2)
    flats, owners = [], []
    diameters = np.flatnonzero(np.bincount(discs))  # a few sizes
    for diameter in diameters:
        which = None if len(diameters) == 1 else np.flatnonzero(discs == diameter)
        disc = _disc(int(diameter))
        offsets = (disc[:, 0] * shape[1] + disc[:, 1]).astype(np.int32)
        at = base if which is None else base[which]
        flats.append((at[:, None] + offsets[None, :]).ravel())
        owners.append(np.repeat(cells if which is None else cells[which], len(offsets)))
    return OverviewGrid(
        origin=origin,
        pixel=float(pixel),
        shape=(int(shape[0]), int(shape[1])),
        flat=np.concatenate(flats),
        cell=np.concatenate(owners),
        stamp=stamp,
        n_cells=len(coords),
    )


def paint(
    grid: OverviewGrid, rgba: np.ndarray, opacity: float = 1.0, out: np.ndarray | None = None
) -> np.ndarray:
    """The (rows, columns, 4) uint8 raster of the cells in colours ``rgba`` ((n, 4) floats in
    0-1, or one colour); empty pixels are transparent. ``out`` (same shape, uint8) is reused."""
    colors = np.broadcast_to(np.asarray(rgba, dtype=np.float32), (grid.n_cells, 4))
    scaled = np.clip(colors, 0.0, 1.0) * np.float32(255.0)
    words = np.rint(scaled).astype(np.uint8).view(np.uint32).reshape(-1)
    if out is None or out.shape != (*grid.shape, 4) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        out = np.zeros((*grid.shape, 4), dtype=np.uint8)
    else:
        out.fill(0)
    out.reshape(-1, 4).view(np.uint32).reshape(-1)[grid.flat] = words[grid.cell]
    return out


class OverviewSource(Protocol):
    """What :class:`CellOverview` draws: cells, their colours, and the canvas nodes showing them."""

    def coords_yx(self) -> np.ndarray:
        """(n, 2) cell positions, (y, x), in the coordinates of the nodes of :meth:`targets`."""

    def sizes(self, screen_per_data: float) -> float | np.ndarray:
        """The cells' diameters in those coordinates (one, or one per cell) at this zoom."""

    def colors(self) -> np.ndarray:
        """(n, 4) RGBA floats in 0-1, opacity included."""

    def screen_per_data(self) -> float | None:
        """Screen pixels per data unit now; None where no raster may be drawn (hidden, 3-D)."""

    def targets(self) -> list[tuple[Any, Any]]:
        """(node, markers): the raster goes under ``node`` (data coordinates in (x, y) order) and
        stands for the vispy ``markers`` while shown."""


class CellOverview:
    """Keeps the raster of one set of cells on its canvas and swaps it with their points by zoom.

    Call :meth:`recolor` when the colours change, :meth:`invalidate` when the cells move or
    change size, and :meth:`update` when the camera (or anything else of the view) changes.
    ``defer`` (see :func:`debounced`): a zoom's raster is built once the camera rests, the last
    raster standing in meanwhile (scaled); without it, at once.
    """

    def __init__(
        self, source: OverviewSource, defer: Callable[[Callable[[], object]], None] | None = None
    ) -> None:
        self.source = source
        self._defer = defer
        self._building = False
        self._grids: dict[tuple[float, ...], OverviewGrid | None] = {}
        self._grid: OverviewGrid | None = None  # the grid of the raster painted
        self._raster: np.ndarray | None = None
        self._colors_stale = True
        self._version = 0
        #: per canvas node: [its raster visual, the grid it is placed for, the raster version it holds]
        self._images: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self.shown = False

    def _key(self, screen_per_data: float) -> tuple[tuple[float, ...], np.ndarray]:
        sizes = np.asarray(self.source.sizes(screen_per_data), dtype=np.float64)
        # napari's size setter emits no event: a resize is seen by a few sizes sampled
        key = (
            raster_pixel(screen_per_data),
            *sizes.ravel()[:: max(sizes.size // 7, 1)][:8].tolist(),
            sizes.size,
        )
        return key, sizes

    def grid(self, screen_per_data: float) -> OverviewGrid | None:
        """The grid for this zoom (None: the points are drawn), built now; the last two kept."""
        return self._grid_for(*self._key(screen_per_data))

    def _grid_for(self, key: tuple[float, ...], sizes: np.ndarray) -> OverviewGrid | None:
        if key not in self._grids:
            self._grids[key] = overview_grid(self.source.coords_yx(), sizes, key[0])
            while len(self._grids) > 2:
                self._grids.pop(next(iter(self._grids)))
        return self._grids[key]

    def invalidate(self, event: Any = None) -> None:
        """The cells moved or changed size: the raster is rebuilt now (the camera did not move)."""
        self._grids.clear()
        self._grid = None
        self._settle()

    def recolor(self, event: Any = None) -> None:
        """The colours (or opacity) changed: repainted now if shown, else when next shown."""
        self._colors_stale = True
        if self.shown:
            self.update()

    def wanted(self) -> OverviewGrid | None:
        """The grid of the raster that should stand for the points now (None: the points)."""
        scale = self.source.screen_per_data()
        if scale is None or not np.isfinite(scale) or scale <= 0:
            return None
        key, sizes = self._key(scale)
        moved = self._grid is not None and self._grid.pixel != key[0]  # the camera zoomed: defer
        if key in self._grids or self._defer is None or self._building or not moved:
            return self._grid_for(key, sizes)
        self._defer(self._settle)  # built once the camera rests; the last raster meanwhile
        current = self._grid
        same_cells = current is not None and any(
            grid is current and k[1:] == key[1:] for k, grid in self._grids.items()
        )
        return current if same_cells and 0.5 <= scale * current.pixel <= 2.0 else None

    def _settle(self) -> None:
        self._building = True
        try:
            self.update()
        finally:
            self._building = False

    def update(self, event: Any = None) -> bool:
        """Show the raster or the points, whichever the zoom calls for; True: the raster is shown."""
        grid = self.wanted()
        show = grid is not None
        targets = self.source.targets()
        if show and (self._colors_stale or grid is not self._grid):
            self._paint(grid)
        for node, markers in targets:
            entry = self._images.get(node)
            if show:
                if entry is None:
                    entry = self._images[node] = [self._new_image(node), None, -1]
                image, placed, version = entry
                if placed is not self._grid:
                    self._place(image)
                    entry[1] = self._grid
                if version != self._version:
                    image.set_data(self._raster)
                    image.update()
                    entry[2] = self._version
            image = entry[0] if entry is not None else None
            if markers.visible == show or (image is not None and image.visible != show):
                markers.visible = not show
                if image is not None:
                    image.visible = show
                node.update()
        self.shown = show and bool(targets)
        return self.shown

    def _paint(self, grid: OverviewGrid) -> None:
        self._grid = grid
        colors = np.asarray(self.source.colors(), dtype=np.float32)
        if colors.ndim != 2 or len(colors) != grid.n_cells:
            colors = np.broadcast_to(np.float32([0.83, 0.83, 0.83, 1.0]), (grid.n_cells, 4))
        self._raster = paint(grid, colors, out=self._raster)
        self._colors_stale = False
        self._version += 1

    def _new_image(self, node: Any) -> Any:
        """A raster visual under ``node``, hidden until :meth:`update` swaps it with the points."""
        from vispy.scene.visuals import Image

        image = Image(
            self._raster,
            parent=node,
            method="subdivide",
            interpolation="nearest",
            texture_format="auto",
            clim=(0, 255),
        )
        image.set_gl_state("translucent", depth_test=False)
        image.visible = False
        return image

    def _place(self, image: Any) -> None:
        """Scale and place the raster on the grid (the node's coordinates: data (x, y))."""
        from vispy.visuals.transforms import STTransform

        grid = self._grid
        image.transform = STTransform(
            scale=(grid.pixel, grid.pixel), translate=(float(grid.origin[1]), float(grid.origin[0]))
        )
