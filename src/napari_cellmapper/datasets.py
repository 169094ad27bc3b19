"""Built-in examples that ship with the package and need no network.

:func:`pbmc_example` returns a reference and a query split from scanpy's bundled
``pbmc68k_reduced`` (700 PBMCs x 765 genes, log-normalised and scaled values; stored in
``_data/pbmc_example.h5ad`` by ``tools/make_example_data.py``). Licences: scanpy is
BSD-3-Clause; the underlying 10x Genomics PBMC data are CC-BY 4.0 (Zheng et al. 2017).

:func:`spatial_example` lays the query cells out on a synthetic tissue with planted spatial
domains, as a SpatialData object (image, cells as circles or labels, annotating table).
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError

PBMC_FILE = "pbmc_example.h5ad"

#: Spatial domains of :func:`spatial_example` and the probability that a cell of each type is
#: placed in each domain (rows sum to 1), i.e. the planted composition.
DOMAINS: tuple[str, ...] = ("B follicle", "T zone", "myeloid niche", "cytotoxic niche", "progenitor niche")
DOMAIN_PREFERENCES: dict[str, dict[str, float]] = {
    "CD19+ B": {"B follicle": 0.85, "T zone": 0.15},
    "CD4+/CD25 T Reg": {"T zone": 0.8, "B follicle": 0.2},
    "CD4+/CD45RO+ Memory": {"T zone": 1.0},
    "CD4+/CD45RA+/CD25- Naive T": {"T zone": 1.0},
    "CD8+/CD45RA+ Naive Cytotoxic": {"T zone": 0.5, "cytotoxic niche": 0.5},
    "CD8+ Cytotoxic T": {"cytotoxic niche": 0.9, "T zone": 0.1},
    "CD56+ NK": {"cytotoxic niche": 1.0},
    "CD14+ Monocyte": {"myeloid niche": 0.9, "cytotoxic niche": 0.1},
    "Dendritic": {"myeloid niche": 0.5, "progenitor niche": 0.3, "T zone": 0.2},
    "CD34+": {"progenitor niche": 1.0},
}
DOMAIN_COLORS: tuple[str, ...] = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")
_DOMAIN_SEEDS = np.array(
    [[75.0, 70.0], [225.0, 75.0], [150.0, 165.0], [70.0, 235.0], [230.0, 230.0]]
)  # (x, y)

IMAGE_SIZE = 300  # pixels, square
CELL_RADIUS = 3.0  # pixels (intrinsic units)
MIN_CELL_DISTANCE = 7.0  # pixels between cell centres, so label discs never overlap
#: Transformation of every element to "global": x' = 2 x + 100, y' = 2 y + 50 (microns).
GLOBAL_SCALE = 2.0
GLOBAL_TRANSLATION = (100.0, 50.0)


# --------------------------------------------------------------------------------------------
# pbmc reference / query


@lru_cache(maxsize=1)
def _pbmc_full() -> AnnData:
    import anndata

    with as_file(files("napari_cellmapper") / "_data" / PBMC_FILE) as path:
        return anndata.read_h5ad(path)


def pbmc_example() -> tuple[AnnData, AnnData]:
    """Reference and query from scanpy's ``pbmc68k_reduced``, split ~70/30 within each cell type.

    Returns
    -------
    reference, query
        Both: ``X`` (log-normalised, scaled, float32; 765 genes), ``obsm["X_pca"]`` and the same
        values as the joint representation ``obsm["X_joint"]``, ``obsm["X_umap"]``.
        Reference: ``obs["cell_type"]`` (categorical, 10 types) and ``uns["cell_type_colors"]``.
        Query: the true labels as ``obs["cell_type_true"]`` (same categories) with
        ``uns["cell_type_true_colors"]``; it has no ``cell_type`` column (that is to be mapped).
        Fresh copies on every call.
    """
    full = _pbmc_full()
    is_query = (full.obs["split"] == "query").to_numpy()
    reference = _finish(full[~is_query].copy())
    query = _finish(full[is_query].copy())
    query.obs["cell_type_true"] = query.obs.pop("cell_type")
    query.uns["cell_type_true_colors"] = query.uns.pop("cell_type_colors")
    return reference, query


def _finish(adata: AnnData) -> AnnData:
    del adata.obs["split"]
    adata.obsm["X_joint"] = adata.obsm["X_pca"].copy()
    adata.uns["cell_type_colors"] = list(adata.uns["cell_type_colors"])
    adata.uns.pop("source", None)
    return adata


# --------------------------------------------------------------------------------------------
# spatial example


def _assign_domains(cell_types: pd.Categorical, rng: np.random.Generator) -> np.ndarray:
    domains = np.empty(len(cell_types), dtype=object)
    for i, cell_type in enumerate(np.asarray(cell_types)):
        prefs = DOMAIN_PREFERENCES[str(cell_type)]
        names = list(prefs)
        domains[i] = names[rng.choice(len(names), p=np.array([prefs[n] for n in names]))]
    return domains


def _domain_map(size: int) -> np.ndarray:
    """(y, x) map of domain codes: Voronoi cells of fixed seeds, with wavy borders."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    wobble = 12.0 * np.sin(yy / 23.0) * np.cos(xx / 31.0)
    d2 = [(xx + wobble - sx) ** 2 + (yy - wobble - sy) ** 2 for sx, sy in _DOMAIN_SEEDS * (size / 300.0)]
    return np.argmin(np.stack(d2), axis=0)


def _place_cells(domains: np.ndarray, domain_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel-centre positions (x, y) inside each cell's domain, at least MIN_CELL_DISTANCE apart."""
    size = domain_map.shape[0]
    margin = int(np.ceil(CELL_RADIUS)) + 1
    pixels = {
        code: np.argwhere(domain_map[margin : size - margin, margin : size - margin] == code) + margin
        for code in range(len(DOMAINS))
    }
    placed = np.empty((len(domains), 2))
    taken: list[np.ndarray] = []
    for i, domain in enumerate(domains):
        candidates = pixels[DOMAINS.index(domain)]
        for _ in range(1000):
            y, x = candidates[rng.integers(len(candidates))]
            xy = np.array([x + 0.5, y + 0.5])
            if not taken or np.min(np.sum((np.asarray(taken) - xy) ** 2, axis=1)) >= MIN_CELL_DISTANCE**2:
                break
        else:  # pragma: no cover - the domains have room for ~4x more cells
            raise RuntimeError("could not place the example cells")
        taken.append(xy)
        placed[i] = xy
    return placed


def _tissue_image(domain_map: np.ndarray, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(c, y, x) uint8 RGB 'tissue': per-domain hue and stripe texture, dark nuclei at cells."""
    size = domain_map.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    base = np.array(
        [[230, 190, 215], [245, 210, 225], [215, 160, 200], [235, 175, 185], [225, 205, 235]], float
    )
    angles = np.linspace(0.0, np.pi, len(DOMAINS), endpoint=False)
    periods = np.array([9.0, 14.0, 6.0, 11.0, 18.0])
    angle, period = angles[domain_map], periods[domain_map]
    texture = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    img = base[domain_map].transpose(2, 0, 1) * (0.8 + 0.2 * texture)[None]
    img += rng.normal(0.0, 6.0, size=img.shape)
    r = int(np.ceil(CELL_RADIUS))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (oy + 0.0) ** 2 + (ox + 0.0) ** 2 <= CELL_RADIUS**2
    py, px = (oy[disc][None] + xy[:, 1:2].astype(int)), (ox[disc][None] + xy[:, 0:1].astype(int))
    img[:, py.ravel(), px.ravel()] = np.array([90.0, 60.0, 140.0])[:, None]  # nuclei
    return np.clip(img, 0, 255).astype(np.uint8)


def _cell_labels(xy: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    labels = np.zeros((size, size), dtype=np.int32)
    r = int(np.floor(CELL_RADIUS))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = oy**2 + ox**2 <= CELL_RADIUS**2
    oy, ox = oy[disc], ox[disc]
    for (x, y), cell_id in zip(xy, ids, strict=True):
        labels[int(y) + oy, int(x) + ox] = cell_id
    return labels


def _transformations() -> dict[str, Any]:
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    to_global = Sequence(
        [
            Scale([GLOBAL_SCALE, GLOBAL_SCALE], axes=("x", "y")),
            Translation(list(GLOBAL_TRANSLATION), axes=("x", "y")),
        ]
    )
    return {"global": to_global, "pixels": Identity()}


def spatial_example(cells: Literal["circles", "labels"] = "circles", *, seed: int = 0) -> Any:
    """The pbmc query cells on a synthetic tissue with planted spatial domains.

    Parameters
    ----------
    cells
        Cells as circles (``shapes["cells"]``, radius 3 px) or as a labels image
        (``labels["cells"]``, discs of radius 3 px, label id = cell id).
    seed
        Random seed for domains, positions and image noise.

    Returns
    -------
    spatialdata.SpatialData
        ``images["tissue"]`` (RGB, 300 x 300 px, multiscale), ``shapes`` or ``labels["cells"]``,
        and ``tables["table"]`` annotating ``"cells"`` (region_key ``"region"``, instance_key
        ``"cell_id"``, ids 1..n) with the query's ``X``, ``obsm["X_pca"]``/``["X_joint"]``,
        ``obs["cell_type_true"]`` and the planted ``obs["domain_true"]`` (with colours).
        Coordinate systems: ``"global"`` (x' = 2x + 100, y' = 2y + 50) and ``"pixels"``
        (identity). Circle centres are pixel centres, so both variants give the same coordinates.
    """
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel

    if cells not in ("circles", "labels"):
        raise CellMapperInputError(f"cells must be 'circles' or 'labels', got {cells!r}.")
    _, query = pbmc_example()
    rng = np.random.default_rng(seed)
    domains = _assign_domains(query.obs["cell_type_true"].array, rng)
    domain_map = _domain_map(IMAGE_SIZE)
    xy = _place_cells(domains, domain_map, rng)
    image = _tissue_image(domain_map, xy, rng)
    ids = np.arange(1, query.n_obs + 1, dtype=np.int64)

    transformations = _transformations()
    elements: dict[str, dict[str, Any]] = {
        "images": {
            "tissue": Image2DModel.parse(
                image, dims=("c", "y", "x"), c_coords=["r", "g", "b"], scale_factors=[2],
                transformations=transformations,
            )
        }
    }  # fmt: skip
    if cells == "circles":
        gdf = gpd.GeoDataFrame(
            {"radius": np.full(len(ids), CELL_RADIUS)},
            geometry=[Point(x, y) for x, y in xy],
            index=pd.Index(ids, name="cell_id"),
        )
        elements["shapes"] = {"cells": ShapesModel.parse(gdf, transformations=_transformations())}
    else:
        labels = _cell_labels(xy, ids, IMAGE_SIZE)
        elements["labels"] = {
            "cells": Labels2DModel.parse(
                labels, dims=("y", "x"), scale_factors=[2], transformations=_transformations()
            )
        }

    obs = pd.DataFrame(
        {
            "region": pd.Categorical(["cells"] * len(ids)),
            "cell_id": ids,
            "cell_type_true": query.obs["cell_type_true"].to_numpy(),
            "domain_true": pd.Categorical(domains, categories=list(DOMAINS)),
        },
        index=query.obs_names.copy(),
    )
    obs["cell_type_true"] = query.obs["cell_type_true"].array
    table = AnnData(
        X=query.X.copy(),
        obs=obs,
        var=query.var.copy(),
        obsm={"X_pca": query.obsm["X_pca"].copy(), "X_joint": query.obsm["X_joint"].copy()},
        uns={
            "cell_type_true_colors": list(query.uns["cell_type_true_colors"]),
            "domain_true_colors": list(DOMAIN_COLORS),
        },
    )
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(**elements, tables={"table": table})


def write_spatial_example(
    path: str | os.PathLike[str],
    cells: Literal["circles", "labels"] = "circles",
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write :func:`spatial_example` to a SpatialData zarr store and return its path."""
    path = Path(path)
    spatial_example(cells, seed=seed).write(path, overwrite=overwrite)
    return path
