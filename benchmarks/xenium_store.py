"""A synthetic Xenium-like SpatialData store of any size, and a matching reference AnnData.

The store follows spatialdata-io's Xenium reader: ``morphology_focus`` (multiscale uint16 image,
``c, y, x``) and ``cell_labels`` (multiscale int32 labels) in pixels with an identity to
``global``; ``cell_boundaries`` (8-16-vertex polygons) and ``cell_circles`` (points with a
``radius``) in micrometres with ``Scale(1 / 0.2125)`` to ``global``; a ``table`` of sparse
counts on a gene panel whose rows are the cells (``cell_id``, ``region``, ``cell_labels``). The
table annotates ``cell_labels`` by default (spatialdata-io's current default), or the circles or
polygons. Rasters are dask arrays computed block by block from the cell layout (a numba loop per
block), so a 1M-cell store is written with memory bounded by a few blocks.

The tissue is a disc of cells on a jittered grid (one cell per grid square, cells never overlap),
about 36 px (7.8 µm) apart as in the issue's 300k-cell, 20,000 x 20,000 px sample. Cell types
follow smooth spatial domains, so niches exist; each type expresses its own gene programme in
the query panel and in the reference's larger gene set.

    python benchmarks/xenium_store.py --cells 300000 --out /tmp/xenium_300k.zarr \
        --reference /tmp/xenium_300k_ref.h5ad --reference-cells 50000
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from numba import njit
from scipy import sparse

PIXEL_SIZE = 0.2125  # µm per pixel of Xenium's morphology image
SPACING = 36.5  # px between cell centres (7.8 µm)
SCALE_FACTORS = (2, 2, 2)  # 4 pyramid levels
CHUNK = 4096
N_TYPES = 12
N_DOMAINS = 6
PROGRAMME = 40  # genes per cell type
ELEMENTS = {"cell_labels": "cell_labels", "cell_circles": "cell_id", "cell_boundaries": "cell_id"}


@dataclass(frozen=True)
class Layout:
    """Where the cells are: a grid of squares, each holding at most one cell.

    ``grid[gy, gx]`` is the label id of the cell in that square (0: none); cell ``i`` (label
    ``i + 1``) has its centre at ``(x[i], y[i])`` pixels and radius ``r[i]`` pixels.
    """

    size: int
    grid: np.ndarray
    x: np.ndarray
    y: np.ndarray
    r: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.size)


def make_layout(n_cells: int, seed: int = 0) -> Layout:
    """``n_cells`` cells in a disc of jittered grid squares (no overlaps, exact count)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_cells / (np.pi / 4) * 1.05))) + 2
    gy, gx = np.divmod(np.arange(side * side), side)
    centre = (side - 1) / 2
    # distance from the centre plus a little noise: a disc with a ragged edge
    dist = np.hypot(gx - centre, gy - centre) + rng.normal(0, 1.5, gx.size)
    chosen = np.sort(np.argsort(dist, kind="stable")[:n_cells])
    grid = np.zeros((side, side), dtype=np.int32)
    grid.ravel()[chosen] = np.arange(1, n_cells + 1, dtype=np.int32)
    r = SPACING * rng.uniform(0.28, 0.38, n_cells)
    slack = SPACING / 2 - r - 1.0
    x = (gx[chosen] + 0.5) * SPACING + rng.uniform(-1, 1, n_cells) * slack
    y = (gy[chosen] + 0.5) * SPACING + rng.uniform(-1, 1, n_cells) * slack
    return Layout(size=int(np.ceil(side * SPACING)), grid=grid, x=x, y=y, r=r)


@njit(cache=True, nogil=True)
def _paint(out, y0: int, x0: int, grid, cx, cy, r, image: bool) -> None:
    """Fill one block (``out``, zeros) with labels or a DAPI-like image: each cell is a disc of its
    radius; the image has bright nuclei, dim cytoplasm and a deterministic per-pixel noise."""
    gh, gw = grid.shape
    h_out, w_out = out.shape
    columns = np.empty(w_out, np.int64)
    for j in range(w_out):
        columns[j] = min(int((x0 + j + 0.5) // SPACING), gw - 1)
    for i in range(h_out):
        yc = y0 + i + 0.5
        gy = min(int(yc // SPACING), gh - 1)
        for j in range(w_out):
            xc = x0 + j + 0.5
            label = grid[gy, columns[j]]
            d2 = np.inf
            if label > 0:
                dx = xc - cx[label - 1]
                dy = yc - cy[label - 1]
                d2 = dx * dx + dy * dy
            inside = label > 0 and d2 <= r[label - 1] ** 2
            if not image:
                if inside:
                    out[i, j] = label
                continue
            h = np.uint64((y0 + i) * 73856093) ^ np.uint64((x0 + j) * 19349663)  # hash noise
            h = (h ^ (h >> np.uint64(13))) * np.uint64(0x9E3779B97F4A7C15)
            noise = float(h >> np.uint64(40)) / float(1 << 24) - 0.5
            value = 300.0 + 140.0 * noise
            if label > 0:
                sigma = 0.45 * r[label - 1]
                value += 3000.0 * np.exp(-d2 / (2.0 * sigma * sigma))
                if inside:
                    value += 400.0
            out[i, j] = min(max(value, 0.0), 65535.0)


def labels_block(layout: Layout, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """int32 cell labels of one block: each cell is a disc of its radius."""
    out = np.zeros((y1 - y0, x1 - x0), np.int32)
    _paint(out, y0, x0, layout.grid, layout.x, layout.y, layout.r, False)
    return out


def image_block(layout: Layout, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """uint16 DAPI-like signal of one block: bright nuclei, dim cytoplasm, noisy background."""
    out = np.zeros((y1 - y0, x1 - x0), np.uint16)
    _paint(out, y0, x0, layout.grid, layout.x, layout.y, layout.r, True)
    return out


def _raster(layout: Layout, block_fn, dtype: np.dtype):
    import dask.array as da

    chunks = (
        (CHUNK,) * (layout.size // CHUNK) + ((layout.size % CHUNK,) if layout.size % CHUNK else ()),
    ) * 2

    def fill(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return block_fn(layout, y0, y1, x0, x1)

    return da.map_blocks(fill, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


def polygons(layout: Layout, seed: int = 0):
    """One 8-16-vertex polygon per cell (µm), its vertices on a noisy circle of the cell's radius."""
    import shapely

    rng = np.random.default_rng(seed + 1)
    n_vertices = rng.integers(8, 17, layout.n)
    out = np.empty(layout.n, dtype=object)
    for m in np.unique(n_vertices):
        rows = np.flatnonzero(n_vertices == m)
        angles = np.linspace(0, 2 * np.pi, m, endpoint=False)[None, :] + rng.uniform(0, 1, (rows.size, 1))
        radius = layout.r[rows, None] * rng.uniform(0.9, 1.05, (rows.size, m))
        ring = np.stack(
            [layout.x[rows, None] + radius * np.cos(angles), layout.y[rows, None] + radius * np.sin(angles)],
            axis=-1,
        )
        ring = np.concatenate([ring, ring[:, :1]], axis=1) * PIXEL_SIZE
        out[rows] = shapely.polygons(ring)
    return out


def cell_ids(n: int) -> np.ndarray:
    """Xenium-style cell ids (``"aaaaaaab-1"``: eight letters a-p encoding the number, then ``-1``)."""
    letters = np.array(list("abcdefghijklmnop"))
    digits = (np.arange(n, dtype=np.int64)[:, None] >> (4 * np.arange(7, -1, -1))[None, :]) & 15
    return np.char.add(np.array(["".join(row) for row in letters[digits]]), "-1")


def cell_types(layout: Layout, seed: int = 0) -> np.ndarray:
    """Cell type codes drawn from the mixture of each cell's spatial domain (smooth bands)."""
    rng = np.random.default_rng(seed + 2)
    u = layout.x / layout.size * 2 * np.pi
    v = layout.y / layout.size * 2 * np.pi
    field = np.sin(2 * u + 0.7) + np.cos(3 * v - 0.4) + 0.6 * np.sin(u + 2 * v)
    edges = np.quantile(field, np.linspace(0, 1, N_DOMAINS + 1)[1:-1])
    domains = np.searchsorted(edges, field)
    mixtures = rng.dirichlet(np.full(N_TYPES, 0.4), size=N_DOMAINS)
    cum = np.cumsum(mixtures[domains], axis=1)
    return np.minimum((rng.random(layout.n)[:, None] > cum).sum(axis=1), N_TYPES - 1)


def _expression_means(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """(N_TYPES, n_genes) mean counts: background plus each type's programme."""
    means = rng.gamma(0.5, 0.1, size=(N_TYPES, n_genes))
    for t in range(N_TYPES):
        means[t, rng.choice(n_genes, min(PROGRAMME, n_genes), replace=False)] += rng.uniform(
            1.0, 6.0, PROGRAMME
        )
    return means


def counts(types: np.ndarray, means: np.ndarray, seed: int, chunk: int = 20_000) -> sparse.csr_matrix:
    """Poisson counts (float32 CSR) with a per-cell library-size factor, in row chunks."""
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, types.size, chunk):
        t = types[start : start + chunk]
        size = rng.lognormal(0.0, 0.3, t.size)[:, None]
        parts.append(sparse.csr_matrix(rng.poisson(means[t] * size).astype(np.float32)))
    return sparse.vstack(parts, format="csr")


def gene_names(n_panel: int, n_reference: int) -> tuple[np.ndarray, np.ndarray]:
    """Panel genes (the query's) and the reference's genes, which contain the whole panel."""
    names = np.array([f"GENE{i:05d}" for i in range(n_reference)])
    return names[:n_panel], names


def make_reference(n_cells: int, n_genes: int, n_panel: int, seed: int = 0) -> AnnData:
    """Reference AnnData: sparse counts on ``n_genes`` genes, ``obs["cell_type"]`` with colours."""
    from napari_cellmapper.core.palettes import default_palette

    rng = np.random.default_rng(seed + 3)
    _, ref_genes = gene_names(n_panel, n_genes)
    means = np.concatenate(
        [
            _expression_means(n_panel, np.random.default_rng(seed + 4)),
            _expression_means(n_genes - n_panel, rng),
        ],
        axis=1,
    )
    types = rng.choice(N_TYPES, n_cells, p=rng.dirichlet(np.full(N_TYPES, 3.0)))
    names = [f"type_{t:02d}" for t in range(N_TYPES)]
    adata = AnnData(
        X=counts(types, means, seed + 5),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(types, categories=names)},
            index=pd.Index([f"ref_{i}" for i in range(n_cells)]),
        ),
        var=pd.DataFrame(index=pd.Index(ref_genes)),
    )
    adata.uns["cell_type_colors"] = default_palette(N_TYPES)
    return adata


def make_table(layout: Layout, ids: np.ndarray, n_panel: int, region: str, seed: int = 0) -> AnnData:
    """The cell x panel-gene table, parsed to annotate ``region``."""
    from spatialdata.models import TableModel

    types = cell_types(layout, seed)
    panel, _ = gene_names(n_panel, n_panel)
    obs = pd.DataFrame(
        {
            "cell_id": ids,
            "region": pd.Categorical([region] * layout.n),
            "cell_labels": np.arange(1, layout.n + 1, dtype=np.int32),
            "cell_area": np.pi * (layout.r * PIXEL_SIZE) ** 2,
        },
        index=pd.Index(np.arange(layout.n).astype(str)),
    )
    table = AnnData(
        X=counts(types, _expression_means(n_panel, np.random.default_rng(seed + 4)), seed + 6),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(panel)),
    )
    table.obsm["spatial"] = np.column_stack([layout.x, layout.y]) * PIXEL_SIZE
    return TableModel.parse(table, region=region, region_key="region", instance_key=ELEMENTS[region])


def reannotate(table: AnnData, region: str) -> AnnData:
    """The same table annotating another of the store's cell elements (same cells)."""
    from spatialdata.models import TableModel

    out = table.copy()
    out.uns.pop("spatialdata_attrs", None)
    out.obs["region"] = pd.Categorical([region] * out.n_obs)
    return TableModel.parse(out, region=region, region_key="region", instance_key=ELEMENTS[region])


def annotated_copy(path: str | Path, region: str, out: str | Path) -> Path:
    """A copy of the store at ``out`` whose table annotates ``region``; rasters and shapes are
    hard links to the original's files (no second copy of the images), only the table is new."""
    import shutil
    import warnings

    import spatialdata as sd

    out = Path(out)
    tables = (Path(path) / "tables").resolve()

    def link_or_copy(src: str, dst: str) -> None:  # only the table is rewritten: copy it, link the rest
        (shutil.copy2 if Path(src).resolve().is_relative_to(tables) else os.link)(src, dst)

    shutil.copytree(path, out, copy_function=link_or_copy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
        sdata = sd.read_zarr(out, selection=("tables",))
    table = reannotate(sdata.tables["table"], region)  # in memory
    sdata.delete_element_from_disk("table")
    sdata.tables["table"] = table
    sdata.write_element("table")
    return out


def make_sdata(n_cells: int, *, n_genes: int = 400, region: str = "cell_labels", seed: int = 0):
    """The SpatialData object (rasters lazy) for ``n_cells`` cells."""
    import geopandas as gpd
    import spatialdata as sd
    from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel
    from spatialdata.transformations import Identity, Scale

    if region not in ELEMENTS:
        raise ValueError(f"region must be one of {sorted(ELEMENTS)}, not {region!r}")
    layout = make_layout(n_cells, seed)
    ids = cell_ids(n_cells)
    pixels = {"global": Identity()}
    microns = {"global": Scale([1 / PIXEL_SIZE, 1 / PIXEL_SIZE], axes=("x", "y"))}
    image = Image2DModel.parse(
        _raster(layout, image_block, np.dtype(np.uint16))[None],
        dims=("c", "y", "x"),
        c_coords=["DAPI"],
        scale_factors=list(SCALE_FACTORS),
        transformations=pixels,
        chunks=(1, CHUNK, CHUNK),
    )
    labels = Labels2DModel.parse(
        _raster(layout, labels_block, np.dtype(np.int32)),
        dims=("y", "x"),
        scale_factors=list(SCALE_FACTORS),
        transformations=pixels,
        chunks=(CHUNK, CHUNK),
    )
    index = pd.Index(ids, name="cell_id")
    circles = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": layout.r * PIXEL_SIZE},
            geometry=gpd.points_from_xy(layout.x * PIXEL_SIZE, layout.y * PIXEL_SIZE),
            index=index,
        ),
        transformations=microns,
    )
    boundaries = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=polygons(layout, seed), index=index), transformations=microns
    )
    return sd.SpatialData(
        images={"morphology_focus": image},
        labels={"cell_labels": labels},
        shapes={"cell_circles": circles, "cell_boundaries": boundaries},
        tables={"table": make_table(layout, ids, n_genes, region, seed)},
    )


def write_store(path: str | Path, n_cells: int, **kwargs) -> Path:
    """Write the store to ``path`` (which must not exist) and return it."""
    path = Path(path)
    make_sdata(n_cells, **kwargs).write(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300_000)
    parser.add_argument("--genes", type=int, default=400, help="query gene panel")
    parser.add_argument(
        "--region", default="cell_labels", choices=sorted(ELEMENTS), help="what the table annotates"
    )
    parser.add_argument("--out", required=True, help="SpatialData .zarr to write (must not exist)")
    parser.add_argument("--reference", help="also write a matching reference .h5ad here")
    parser.add_argument("--reference-cells", type=int, default=50_000)
    parser.add_argument("--reference-genes", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    write_store(args.out, args.cells, n_genes=args.genes, region=args.region, seed=args.seed)
    print(f"store: {args.cells} cells -> {args.out} in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.reference:
        t0 = time.perf_counter()
        make_reference(args.reference_cells, args.reference_genes, args.genes, args.seed).write_h5ad(
            args.reference
        )
        print(
            f"reference: {args.reference_cells} cells -> {args.reference} in {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
