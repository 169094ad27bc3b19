"""A spatial AnnData (squidpy's and scanpy's convention) as a SpatialData query.

squidpy, scanpy and many readers keep a spatial sample in one AnnData: cell or spot positions in
``obsm["spatial"]`` (x, y, in full-resolution pixels for Visium) and, optionally, the tissue
images with their scale factors in ``uns["spatial"][library_id]``. The widget and the export work
on SpatialData, so such an AnnData becomes one: the positions as circles (``"cells"``), each
library's highest-resolution image placed by its scale factor, and the AnnData as the table
annotating the circles. The user's AnnData is left unchanged (the table shares its matrices).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError

#: names of the elements and columns the conversion writes
SHAPES, TABLE, REGION_KEY, INSTANCE_KEY = "cells", "table", "region", "cell_id"
#: image resolutions in ``uns["spatial"][library]["images"]``, best first, with their scale factor
_IMAGE_SCALES = (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef"))


def has_spatial_coordinates(adata: AnnData, key: str = "spatial") -> bool:
    """Whether ``adata.obsm[key]`` holds at least two coordinate columns."""
    value = adata.obsm.get(key) if key in adata.obsm else None
    return value is not None and np.ndim(value) == 2 and np.shape(value)[1] >= 2


def read_spatial_h5ad(path: str | os.PathLike[str], key: str = "spatial") -> Any:
    """Read an ``.h5ad`` whose ``obsm[key]`` holds positions, as a SpatialData query."""
    from napari_cellmapper.io.reference import read_h5ad_file

    adata = read_h5ad_file(path, "Query")
    return spatialdata_from_anndata(adata, key=key, source=Path(path).name)


def spatialdata_from_anndata(adata: AnnData, *, key: str = "spatial", source: str = "the AnnData") -> Any:
    """``adata`` (positions in ``obsm[key]``, x then y) as a SpatialData with circles, images
    and a table; refused with the fix named when the positions are missing or not finite."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    xy = _positions(adata, key, source)
    ids = np.arange(adata.n_obs)
    radius = np.full(adata.n_obs, _radius(adata, xy))
    circles = ShapesModel.parse(xy, geometry=0, radius=radius, index=pd.Index(ids, name=INSTANCE_KEY))
    table = AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        obsm=dict(adata.obsm),
        layers=dict(adata.layers),
        uns={k: v for k, v in adata.uns.items() if k != "spatial"},
    )
    table.obs[REGION_KEY] = pd.Categorical([SHAPES] * adata.n_obs)
    table.obs[INSTANCE_KEY] = ids
    table = TableModel.parse(table, region=SHAPES, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(shapes={SHAPES: circles}, images=_images(adata), tables={TABLE: table})


def _positions(adata: AnnData, key: str, source: str) -> np.ndarray:
    if not has_spatial_coordinates(adata, key):
        found = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise CellMapperInputError(
            f"{source} has no cell positions: obsm[{key!r}] with x and y columns is missing "
            f"(obsm keys: {found}). Add them (squidpy's convention) or pass a SpatialData .zarr."
        )
    xy = np.asarray(adata.obsm[key])[:, :2].astype(np.float64)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise CellMapperInputError(
            f"{source}: {int(bad.sum()):,} cells have no finite position in obsm[{key!r}] "
            f"(first: {adata.obs_names[np.flatnonzero(bad)[0]]!r}). Remove them or fill in their positions."
        )
    return xy


def _libraries(adata: AnnData) -> dict[str, Any]:
    spatial = adata.uns.get("spatial")
    return {str(k): v for k, v in spatial.items() if isinstance(v, dict)} if isinstance(spatial, dict) else {}


def _radius(adata: AnnData, xy: np.ndarray) -> float:
    """Visium's spot radius from its scale factors, else half the median nearest-neighbour distance."""
    for library in _libraries(adata).values():
        diameter = library.get("scalefactors", {}).get("spot_diameter_fullres")
        if diameter:
            return float(diameter) / 2
    if len(xy) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    sample = xy[np.random.default_rng(0).choice(len(xy), min(len(xy), 20_000), replace=False)]
    distances, _ = cKDTree(xy).query(sample, k=2)
    nearest = distances[:, 1][distances[:, 1] > 0]
    return float(np.median(nearest)) / 2 if len(nearest) else 1.0


def _images(adata: AnnData) -> dict[str, Any]:
    """Each library's best image, scaled to the full-resolution pixels of ``obsm["spatial"]``."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    images = {}
    for name, library in _libraries(adata).items():
        stored, factors = library.get("images", {}), library.get("scalefactors", {})
        for resolution, factor_key in _IMAGE_SCALES:
            image, factor = stored.get(resolution), factors.get(factor_key)
            if image is None or not factor:
                continue
            pixels = np.asarray(image)
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if pixels.dtype.kind == "f" and pixels.max(initial=0) <= 1.0:
                pixels = (pixels * 255).round().astype(np.uint8)
            scale = Scale([1 / float(factor), 1 / float(factor)], axes=("y", "x"))
            images[re.sub(r"[^\w.-]", "_", f"{name}_{resolution}_image")] = Image2DModel.parse(
                np.moveaxis(pixels, -1, 0), dims=("c", "y", "x"), transformations={"global": scale}
            )
            break
    return images
