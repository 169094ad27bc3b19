"""Where the reference and the query come from: files, or layers opened by the plugin.

Layers made by the plugin's reader and sample data carry their objects in ``layer.metadata``:
``"adata"`` (reference AnnData) or ``"sdata"`` (SpatialData), as napari-spatialdata does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellmapper.viewer.spatial_layers import ROLE, table_attrs


@dataclass(frozen=True, eq=False)
class ReferenceSource:
    """A reference AnnData and where it came from."""

    label: str
    adata: Any
    path: str | None = None


@dataclass(frozen=True, eq=False)
class QuerySource:
    """A SpatialData query and where it came from."""

    label: str
    sdata: Any
    path: str | None = None


def load_reference(path: str | Path) -> ReferenceSource:
    """Read a reference (.h5ad, AnnData zarr or SpatialData zarr) via ``io.reference``."""
    from napari_cellmapper.io.reference import read_reference

    adata = read_reference(path)
    return ReferenceSource(f"{Path(path).name} (file)", adata, str(path))


def load_query(path: str | Path) -> QuerySource:
    """Open a SpatialData .zarr query via ``io.spatial``, or an ``.h5ad`` with positions in
    ``obsm["spatial"]`` (squidpy's convention) via ``io.anndata_spatial`` (then held in memory:
    no path, so an export writes a new store)."""
    if Path(path).suffix.lower() == ".h5ad":
        from napari_cellmapper.io.anndata_spatial import read_spatial_h5ad

        return QuerySource(f"{Path(path).name} (file)", read_spatial_h5ad(path), None)
    from napari_cellmapper.io.spatial import open_spatial

    sdata = open_spatial(path)
    return QuerySource(f"{Path(path).name} (file)", sdata, str(path))


def sdata_path(sdata: Any) -> str | None:
    """The zarr path a SpatialData was read from (None when in memory only)."""
    path = getattr(sdata, "path", None)
    return None if path is None else str(path)


def references_in_layers(layers: Any) -> list[ReferenceSource]:
    """References carried by open layers (one per AnnData object)."""
    found: list[ReferenceSource] = []
    for layer in layers:
        adata = layer.metadata.get("adata")
        if adata is None or layer.metadata.get(ROLE) not in (None, "reference"):
            continue
        if any(src.adata is adata for src in found):
            continue
        found.append(ReferenceSource(f"{layer.name} (layer)", adata, layer.metadata.get("path")))
    return found


def queries_in_layers(layers: Any) -> list[QuerySource]:
    """SpatialData objects carried by open layers (one per object)."""
    found: list[QuerySource] = []
    for layer in layers:
        sdata = layer.metadata.get("sdata")
        if sdata is None or not hasattr(sdata, "tables"):
            continue
        if any(src.sdata is sdata for src in found):
            continue
        path = layer.metadata.get("path") or sdata_path(sdata)
        name = Path(path).name if path else layer.metadata.get("dataset", layer.name)
        found.append(QuerySource(f"{name} (layer)", sdata, path))
    return found


def table_names(sdata: Any) -> list[str]:
    """Tables that annotate at least one element."""
    names = []
    for name, table in sdata.tables.items():
        _, instance_key, regions = table_attrs(table)
        if instance_key is not None and any(r in sdata for r in regions):
            names.append(name)
    return names


def table_elements(sdata: Any, table_name: str) -> list[str]:
    """Elements a table annotates that exist in ``sdata``."""
    _, _, regions = table_attrs(sdata.tables[table_name])
    return [r for r in regions if r in sdata]


def element_coordinate_systems(sdata: Any, element: str) -> list[str]:
    """Coordinate systems of an element, ``global`` first."""
    from napari_cellmapper.viewer.transforms import coordinate_systems

    systems = coordinate_systems(sdata[element])
    return sorted(systems, key=lambda s: (s != "global", s))


def shared_genes(reference: Any, table: Any) -> int:
    """Number of genes (var names) the two share."""
    return int(len(reference.var_names.intersection(table.var_names)))


def shared_representations(reference: Any, table: Any) -> list[str]:
    """obsm keys present in both with the same number of columns (joint latent spaces)."""
    keys = []
    for key in reference.obsm.keys():
        if key in table.obsm:
            a, b = np.shape(reference.obsm[key]), np.shape(table.obsm[key])
            if len(a) == 2 and len(b) == 2 and a[1] == b[1]:
                keys.append(str(key))
    preferred = ["X_joint", "X_scVI", "X_scanvi", "X_pca"]
    return sorted(keys, key=lambda k: (preferred.index(k) if k in preferred else len(preferred), k))


def transferable_obs(reference: Any) -> list[str]:
    """Reference obs columns worth transferring (categorical or numeric), categorical first."""
    import pandas as pd

    cats, nums = [], []
    for column in reference.obs.columns:
        dtype = reference.obs[column].dtype
        if isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "OSU":
            cats.append(str(column))
        elif dtype.kind in "iuf":
            nums.append(str(column))
    return cats + nums


def transferable_obsm(reference: Any) -> list[str]:
    """Reference obsm keys holding 2-D numeric arrays (embeddings)."""
    keys = []
    for key, value in reference.obsm.items():
        shape = np.shape(value)
        if len(shape) == 2 and not hasattr(value, "columns"):
            keys.append(str(key))
    return keys
