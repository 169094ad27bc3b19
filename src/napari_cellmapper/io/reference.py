"""Reading the dissociated single-cell reference.

The reference is an AnnData read into memory, either from an ``.h5ad`` file, from an AnnData
``.zarr`` store, or from one table of a SpatialData zarr store (e.g. a reference kept next to
the spatial data). Bad paths and table names raise :class:`CellMapperInputError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io.spatial import is_spatialdata_zarr, open_spatial


def _is_anndata_zarr(path: Path) -> bool:
    for meta_file, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = path / meta_file
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                return False
            attrs = meta.get(key, {}) if key else meta
            return attrs.get("encoding-type") == "anndata"
    return False


def _pick_table(tables: list[str], table: str | None, path: Path) -> str:
    if not tables:
        raise CellMapperInputError(
            f"The SpatialData store {str(path)!r} has no tables, so it holds no reference cells. "
            "Pass an .h5ad file or a store with a table of cells x genes."
        )
    if table is None:
        if len(tables) == 1:
            return tables[0]
        raise CellMapperInputError(
            f"The SpatialData store {str(path)!r} has several tables ({', '.join(map(repr, tables))}). "
            "Pass the one holding the reference as `table=`."
        )
    if table not in tables:
        raise CellMapperInputError(
            f"Unknown table {table!r} in {str(path)!r}. Available tables: {', '.join(map(repr, tables))}."
        )
    return table


def read_h5ad_file(path: str | os.PathLike[str], role: str = "Query") -> AnnData:
    """Read an ``.h5ad`` file into memory; any reader failure (truncated file, not HDF5, no
    permission) becomes one :class:`CellMapperInputError` naming ``role`` and the file."""
    p = Path(path).expanduser()
    try:
        return anndata.read_h5ad(p)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable file
        detail = " ".join(str(err).split()) or type(err).__name__
        raise CellMapperInputError(
            f"{role} {str(p)!r} could not be read as .h5ad ({type(err).__name__}: {detail}). "
            "Check that the file is complete and written by anndata."
        ) from err


def read_reference(path: str | os.PathLike[str], table: str | None = None) -> AnnData:
    """Read a reference AnnData into memory.

    Parameters
    ----------
    path
        An ``.h5ad`` file, an AnnData ``.zarr`` store, or a SpatialData ``.zarr`` store.
    table
        For a SpatialData store: the table holding the reference (optional when there is
        only one). Not allowed for ``.h5ad``/AnnData stores.

    Returns
    -------
    AnnData
        In memory (not backed), so it can be modified freely.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CellMapperInputError(
            f"Reference {str(p)!r} does not exist. Pass an .h5ad file or a SpatialData .zarr directory."
        )
    if p.is_file():
        if p.suffix.lower() != ".h5ad":
            raise CellMapperInputError(
                f"Reference {str(p)!r} is not an .h5ad file. "
                "Pass an .h5ad file or a SpatialData .zarr directory."
            )
        if table is not None:
            raise CellMapperInputError(
                f"`table={table!r}` only applies to SpatialData stores; {str(p)!r} is an .h5ad file. "
                "Drop `table=`."
            )
        return read_h5ad_file(p, "Reference")
    if is_spatialdata_zarr(p):
        sdata = open_spatial(p, selection=("tables",))
        name = _pick_table(list(sdata.tables), table, p)
        return sdata.tables[name].copy()
    if _is_anndata_zarr(p):
        if table is not None:
            raise CellMapperInputError(
                f"`table={table!r}` only applies to SpatialData stores; {str(p)!r} is an AnnData zarr store. "
                "Drop `table=`."
            )
        return anndata.read_zarr(p)
    raise CellMapperInputError(
        f"Reference {str(p)!r} is neither an .h5ad file nor an AnnData/SpatialData zarr store. "
        "Pass an .h5ad file or a SpatialData .zarr directory."
    )
