"""npe2 entry points: reader, writer, sample data and widget factory (see ``napari.yaml``).

Reading and writing is done by ``io/``; these functions only turn objects into napari layer
data (via ``viewer/``) and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_cellmapper.viewer.scene import CELLS, reference_layer_data
from napari_cellmapper.viewer.spatial_layers import (
    ROLE,
    cell_geometry,
    cells_layer_data,
    image_layer_data,
    image_names,
)

LayerData = tuple[Any, dict[str, Any], str]


# ------------------------------------------------------------------------------------ reader
def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader: SpatialData ``.zarr`` (query) or ``.h5ad`` (reference); None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path).rstrip("/"))
    if p.suffix.lower() == ".h5ad" and p.is_file():
        return read_reference_layers
    if p.suffix.lower() == ".zarr" and p.is_dir():
        from napari_cellmapper.io.spatial import is_spatialdata_zarr

        return read_spatial_layers if is_spatialdata_zarr(p) else None
    return None


def read_reference_layers(path: str | list[str]) -> list[LayerData]:
    """The reference as points on its UMAP, obs as features, the AnnData in ``metadata["adata"]``."""
    from napari_cellmapper.io.reference import read_reference

    path = path[0] if isinstance(path, list) else path
    adata = read_reference(path)
    data = reference_layer_data(adata, name=f"{Path(path).stem} reference")
    if data is None:
        raise ValueError(f"{path!r} has no 2-D embedding (obsm, e.g. X_umap) to draw the reference on.")
    data[1]["metadata"]["path"] = str(path)
    return [data]


def spatial_layers(
    sdata: Any,
    *,
    path: str | None = None,
    table: str | None = None,
    element: str | None = None,
    coordinate_system: str | None = None,
    name: str = CELLS,
) -> list[LayerData]:
    """Tissue images and cells of a SpatialData as layer data (the first annotating table by default)."""
    from napari_cellmapper.widgets.sources import element_coordinate_systems, table_elements, table_names

    tables = table_names(sdata)
    layers: list[LayerData] = []
    if not tables:
        systems = sorted({cs for img in sdata.images.values() for cs in _systems(img)}) or ["global"]
        cs = coordinate_system or ("global" if "global" in systems else systems[0])
        return [image_layer_data(sdata, n, cs) for n in image_names(sdata, cs)]
    table = table or tables[0]
    element = element or table_elements(sdata, table)[0]
    cs = coordinate_system or element_coordinate_systems(sdata, element)[0]
    for image in image_names(sdata, cs):
        data, meta, kind = image_layer_data(sdata, image, cs)
        for m in meta["metadata"] if isinstance(meta["metadata"], list) else [meta["metadata"]]:
            m["path"] = path
        layers.append((data, meta, kind))
    geometry = cell_geometry(sdata, table, element, cs)
    features = geometry.display_obs(sdata.tables[table].obs)
    data, meta, kind = cells_layer_data(sdata, geometry, features, name)
    meta["metadata"] = {
        ROLE: "cells",
        "sdata": sdata,
        "table": table,
        "element": element,
        "coordinate_system": cs,
        "path": path,
    }
    layers.append((data, meta, kind))
    return layers


def _systems(element: Any) -> list[str]:
    from napari_cellmapper.viewer.transforms import coordinate_systems

    return coordinate_systems(element)


def read_spatial_layers(path: str | list[str]) -> list[LayerData]:
    """A SpatialData ``.zarr``: tissue images and cells, the SpatialData in ``metadata["sdata"]``."""
    from napari_cellmapper.io.spatial import open_spatial

    path = path[0] if isinstance(path, list) else path
    sdata = open_spatial(path)
    return spatial_layers(sdata, path=str(path))


# ------------------------------------------------------------------------------------ writer
def export_query(
    sdata: Any,
    table_name: str,
    path: str | Path,
    *,
    source_path: str | None = None,
    overwrite: bool = False,
    imputed: Any = None,
    table: Any = None,
) -> Path:
    """Write the (annotated) query: via ``io.export`` from its source store, else a full write.

    ``imputed`` (AnnData of imputed expression) becomes the table ``imputed_table_name(table_name)``;
    ``table`` (a snapshot of ``sdata.tables[table_name]``, for a write in the background) is
    written in its place."""
    path = Path(path)
    table = sdata.tables[table_name] if table is None else table
    if source_path is not None and Path(source_path).exists():
        from napari_cellmapper.io.export import export_annotated

        if path.resolve() == Path(source_path).resolve():
            return Path(export_annotated(source_path, table_name, table, in_place=True, imputed=imputed))
        return Path(
            export_annotated(source_path, table_name, table, path, overwrite=overwrite, imputed=imputed)
        )
    if path.exists() and not overwrite:
        from napari_cellmapper.core.validation import CellMapperInputError

        raise CellMapperInputError(f"{str(path)!r} exists; pass overwrite=True or choose another path.")
    from spatialdata import SpatialData

    from napari_cellmapper.io.export import imputed_table, imputed_table_name, without_unused_categories

    tables = {**dict(sdata.tables), table_name: without_unused_categories(table)}
    if imputed is not None:
        tables[imputed_table_name(table_name)] = imputed_table(table, imputed, table_name)
    shallow = SpatialData(
        images=dict(sdata.images),
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=dict(sdata.shapes),
        tables=tables,
    )
    shallow.write(path, overwrite=overwrite)
    return path


def write_annotated(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """npe2 writer (File > Save): the annotated SpatialData of the selected cells layer to ``.zarr``."""
    for _, attributes, _ in layer_data:
        meta = attributes.get("metadata") or {}
        if meta.get(ROLE) == "cells" and meta.get("sdata") is not None:
            target = Path(path)
            if target.suffix != ".zarr":
                target = target.with_name(target.name + ".zarr")
            written = export_query(
                meta["sdata"],
                meta["table"],
                target,
                source_path=meta.get("path"),
                imputed=meta.get("imputed"),  # set by the widget after a run with expression
            )
            return [str(written)]
    return []


# ------------------------------------------------------------------------------- sample data
def sample_reference() -> list[LayerData]:
    """Built-in PBMC reference on its UMAP."""
    from napari_cellmapper.datasets import pbmc_example

    reference, _ = pbmc_example()
    data = reference_layer_data(reference, name="example reference")
    assert data is not None
    return [data]


def sample_spatial() -> list[LayerData]:
    """Built-in spatial query: synthetic tissue image and the cells as circles."""
    from napari_cellmapper.datasets import spatial_example

    sdata = spatial_example()
    layers = spatial_layers(sdata)
    for _, meta, _ in layers:
        for m in meta["metadata"] if isinstance(meta["metadata"], list) else [meta["metadata"]]:
            m["dataset"] = "spatial example"
    return layers


def sample_both() -> list[LayerData]:
    """Built-in reference and spatial query together (what the demo opens)."""
    return sample_spatial() + sample_reference()


# ------------------------------------------------------------------------------------ widget
def mapper_widget(napari_viewer: Any) -> Any:
    """The CellMapper dock widget."""
    from napari_cellmapper.widgets.mapper.panel import CellMapperWidget

    return CellMapperWidget(napari_viewer)
