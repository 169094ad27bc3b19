"""Segmentation labels coloured through a lookup table: the raster shows colour codes, not cell ids.

napari colours a Labels layer cell by cell: a ``DirectLabelColormap`` with one entry per label is
validated, de-duplicated and turned into a label-to-texture mapping in Python, about 0.7 s per
100k labels on every recolouring (2 s for a 300k-cell Xenium sample, most of it napari's). A
colouring has few distinct colours, though (the categories, or a colormap's 256 steps), so here
the layer's data are the raw label raster passed through a table ``label -> colour code``
(lazily, level by level, only where napari reads), and the colormap holds one entry per code.
A recolouring is then one NumPy pass over the cells plus napari reading the tiles in view again.

The layer (``CellLabels``, a napari ``Labels``) still answers in cell ids: its ``get_value``
reads the raw labels (from the raw blocks napari just read for display, else from the raster),
so hovering shows the cell's features (``layer.features`` keeps one row per cell, ``index`` =
label) and a click finds the cell.

Pure NumPy/dask here except ``CellLabels``, which imports napari when first used.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from functools import lru_cache
from typing import Any

import numpy as np

#: largest label id served by a dense lookup table (above: a sorted search per pixel)
DENSE_LIMIT = 50_000_000
#: raw raster blocks kept for ``LabelCodes.raw_value``: the last ones napari read for display
_BLOCK_CACHE = 4


class LabelCodes:
    """Raw label levels and the current ``label -> code`` table (0: not drawn)."""

    def __init__(self, levels: list[Any], ids: np.ndarray) -> None:
        import dask.array as da

        self.raw = [lvl if isinstance(lvl, da.Array) else da.from_array(np.asarray(lvl)) for lvl in levels]
        self.ids = np.asarray(ids, dtype=np.int64)
        self._dense = len(self.ids) == 0 or int(self.ids.max(initial=0)) <= DENSE_LIMIT
        if not self._dense:
            self._order = np.argsort(self.ids)
            self._sorted = self.ids[self._order]
        self.table = np.zeros(1, dtype=np.uint16)  # codes of label ids (dense) or of sorted ids
        self._blocks: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}  # (level, starts)
        self._lock = threading.Lock()  # napari's status thread reads them too
        self._token = uuid.uuid4().hex[:12]  # this object's part of the coded levels' dask keys

    # ------------------------------------------------------------------ colouring
    def set_codes(self, codes: np.ndarray) -> None:
        """One code per cell (the order of ``ids``; 0 hides a cell)."""
        codes = np.asarray(codes)
        dtype = np.uint8 if codes.max(initial=0) < 256 else np.uint16 if codes.max() < 65536 else np.uint32
        if self._dense:  # one more entry, 0: labels above every cell's id are clipped to it
            table = np.zeros(int(self.ids.max(initial=0)) + 2, dtype=dtype)
            table[self.ids] = codes
        else:
            table = np.asarray(codes, dtype=dtype)[self._order]
        self.table = table

    def encode(self, block: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        """Codes of a block of raw labels (labels outside the table: 0), in the table's dtype
        (uint8 for up to 255 colours: a quarter of the raw int32 labels in napari's caches)."""
        block = np.asarray(block)
        table = self.table if table is None else table
        if self._dense and (table[0] == 0 or block.dtype.kind == "u"):  # one gather, in place of five
            # passes: labels above the table clip to its last entry (0); below 0 to entry 0 (no cell)
            codes = np.take(table, block, mode="clip")
        elif self._dense:
            inside = (block >= 0) & (block < len(table))
            codes = np.where(inside, table[np.where(inside, block, 0)], 0)
        else:
            at = np.clip(np.searchsorted(self._sorted, block), 0, len(self._sorted) - 1)
            codes = np.where(self._sorted[at] == block, table[at], 0)
        return codes.astype(table.dtype, copy=False)

    def levels(self) -> list[Any]:
        """The coded levels for the current table: lazy, ``encode`` runs on the blocks napari
        reads. New arrays for every table (their dask keys hash it), so that no cache of
        napari's or dask's serves the codes of an earlier colouring. The keys are named here:
        dask's own tokenising pickled this object with its cached blocks (0.1 s per colouring
        at 300k labels)."""
        table = self.table
        digest = hashlib.blake2b(table.tobytes(), digest_size=8)
        digest.update(str(table.dtype).encode())
        key = f"cellmapper-codes-{self._token}-{digest.hexdigest()}"
        import dask.array as da

        return [
            da.map_blocks(
                self._encode_block,
                level=i,
                table=table,
                dtype=table.dtype,
                chunks=lvl.chunks,
                name=f"{key}-{i}",
                meta=np.empty((0,) * lvl.ndim, dtype=table.dtype),
            )
            for i, lvl in enumerate(self.raw)
        ]

    def _encode_block(self, level: int, table: np.ndarray, block_info: Any = None) -> np.ndarray:
        """``encode`` of one block of raw labels, for dask: the raw block comes from those kept
        (a recolouring of the same view reads nothing again: 0.06-0.5 s of zarr reads at 300k-1M
        cells), else from the raster, and is kept (for ``raw_value`` too)."""
        info = block_info[None]
        starts = tuple(int(lo) for lo, _ in info["array-location"])
        return self.encode(self._raw_block(level, tuple(info["chunk-location"]), starts), table)

    def _raw_block(self, level: int, index: tuple[int, ...], starts: tuple[int, ...]) -> np.ndarray:
        """The raw block ``index`` of ``level`` (its first pixel at ``starts``), kept or read."""
        with self._lock:
            block = self._blocks.get((level, starts))
        if block is None:
            block = np.asarray(self.raw[level].blocks[index])
        self._keep(level, starts, block)
        return block

    def _keep(self, level: int, starts: tuple[int, ...], block: np.ndarray) -> None:
        with self._lock:
            self._blocks.pop((level, starts), None)  # the latest used last: dropped last
            self._blocks[(level, starts)] = block
            while len(self._blocks) > _BLOCK_CACHE:
                self._blocks.pop(next(iter(self._blocks)))

    # ------------------------------------------------------------------ lookup
    def raw_value(self, yx: Any, level: int = 0) -> int:
        """The raw label at a pixel of ``level`` (0 outside the raster): from a block napari
        read for display when there is one (a click or the mouse is where the user looks),
        else read from the raster."""
        array = self.raw[level]
        index = tuple(int(np.floor(v + 0.5)) for v in np.asarray(yx, dtype=float)[-array.ndim :])
        if any(i < 0 or i >= n for i, n in zip(index, array.shape, strict=True)):
            return 0
        with self._lock:
            kept = list(self._blocks.items())
        for (kept_level, starts), block in reversed(kept):
            offset = tuple(i - s for i, s in zip(index, starts, strict=True))
            if kept_level == level and all(0 <= o < n for o, n in zip(offset, block.shape, strict=True)):
                return int(block[offset])
        block_index = tuple(
            int(np.searchsorted(np.cumsum(chunks), i, side="right"))
            for i, chunks in zip(index, array.chunks, strict=True)
        )
        starts = tuple(int(np.sum(chunks[:b])) for b, chunks in zip(block_index, array.chunks, strict=True))
        block = self._raw_block(level, block_index, starts)
        return int(block[tuple(i - s for i, s in zip(index, starts, strict=True))])


def color_codes(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (1..k, one per cell) and the k distinct colours of per-cell RGBA values (0-1)."""
    channels = (np.clip(np.asarray(rgba, dtype=np.float64), 0.0, 1.0) * 255).round().astype(np.uint32)
    packed = (channels[:, 0] << 24) | (channels[:, 1] << 16) | (channels[:, 2] << 8) | channels[:, 3]
    distinct, inverse = np.unique(packed, return_inverse=True)
    colors = np.stack([(distinct >> s) & 255 for s in (24, 16, 8, 0)], axis=1).astype(np.float32) / 255
    return inverse.astype(np.int64) + 1, colors


def codes_colormap(colors: np.ndarray) -> Any:
    """napari's colormap for codes 1..k in ``colors`` ((k, 4) RGBA, 0-1); 0 is not drawn."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping: dict[Any, Any] = {k + 1: tuple(c) for k, c in enumerate(np.asarray(colors, float).tolist())}
    mapping[None] = mapping[0] = (0.0, 0.0, 0.0, 0.0)
    return DirectLabelColormap(color_dict=mapping)


def make_cell_labels(codes: LabelCodes, **kwargs: Any) -> Any:
    """A napari Labels layer showing ``codes``' coded levels that answers in raw cell ids."""
    levels = codes.levels()
    layer = _cell_labels_class()(levels if len(levels) > 1 else levels[0], **kwargs)
    layer.cell_codes = codes
    return layer


def show_codes(layer: Any) -> None:
    """Give a ``make_cell_labels`` layer the coded levels of its codes' current table."""
    levels = layer.cell_codes.levels()
    layer.data = levels if len(levels) > 1 else levels[0]


@lru_cache(maxsize=1)
def _cell_labels_class() -> type:
    from napari.layers import Labels

    class CellLabels(Labels):
        """napari Labels whose data are colour codes; values (hovering, clicks) are cell ids."""

        cell_codes: LabelCodes

        def get_value(
            self,
            position: Any,
            *,
            view_direction: Any = None,
            dims_displayed: Any = None,
            world: bool = False,
        ) -> Any:
            value = super().get_value(
                position, view_direction=view_direction, dims_displayed=dims_displayed, world=world
            )
            shown = value[-1] if isinstance(value, tuple) else value
            if shown is None:
                return value
            yx = np.asarray(self.world_to_data(position) if world else position, dtype=float)
            level = int(value[0]) if isinstance(value, tuple) else 0
            if level:  # the level napari shows (as napari's own value): its pixel under yx
                factor = np.asarray(self.level_shapes[0], float) / np.asarray(self.level_shapes[level], float)
                yx = np.floor((yx + 0.5) / factor[-len(yx) :])
            raw = self.cell_codes.raw_value(yx, level)
            return (value[0], raw) if isinstance(value, tuple) else raw

    return CellLabels
