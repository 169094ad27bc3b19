"""napari_cellmapper.io.export: atomic export of the annotated query (new path or in place)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import export, spatial

TABLE = "table"
PRED_ORDER = ["zeta", "alpha", "mid"]  # deliberately not sorted
SRC_DIR = Path(__file__).resolve().parents[1] / "src"


def _read(path):
    import spatialdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spatialdata.read_zarr(path)


@pytest.fixture(scope="module")
def io_pristine(tmp_path_factory) -> Path:
    """A small source store (image, circles, table) written once per module."""
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    n = 60
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 64, size=(n, 2))
    ids = np.arange(1, n + 1)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame({"radius": np.ones(n)}, geometry=[Point(*p) for p in xy], index=ids),
        transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))},
    )
    image = Image2DModel.parse(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), dims=("c", "y", "x"))
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(["cells"] * n),
            "cell_id": ids,
            "batch": pd.Categorical(["x", "y"] * (n // 2)),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    table = AnnData(X=rng.normal(size=(n, 40)).astype(np.float32), obs=obs)
    table.uns["batch_colors"] = ["#111111", "#222222"]
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    path = tmp_path_factory.mktemp("export") / "pristine.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SpatialData(images={"img": image}, shapes={"cells": shapes}, tables={TABLE: table}).write(path)
    return path


@pytest.fixture
def io_source(io_pristine, tmp_path) -> Path:
    """A fresh copy of the pristine source store, in its own folder."""
    path = tmp_path / "work" / "source.zarr"
    shutil.copytree(io_pristine, path)
    return path


def _annotated(source: Path) -> AnnData:
    """The source table with mapping results, as CellMapper would leave it.

    Every source is a copy of the same pristine store, so the result is built once and copied.
    """
    if "table" not in _ANNOTATED:
        _ANNOTATED["table"] = _build_annotated(spatial.query_table(source, TABLE))
    return _ANNOTATED["table"].copy()


_ANNOTATED: dict[str, AnnData] = {}


def _build_annotated(q: AnnData) -> AnnData:
    n = q.n_obs
    rng = np.random.default_rng(1)
    q.obs["cell_type_pred"] = pd.Categorical(rng.choice(PRED_ORDER, n), categories=PRED_ORDER)
    q.obs["cell_type_conf"] = rng.uniform(size=n).astype(np.float32)
    q.obs["cell_type_entropy"] = rng.uniform(size=n)
    q.obs["mapping_quality"] = rng.uniform(size=n)
    q.obs["niche"] = pd.Categorical(
        [f"niche_{i % 3}" for i in range(n)], categories=["niche_2", "niche_0", "niche_1"]
    )
    q.obs["cellmapper_unmapped"] = np.zeros(n, dtype=bool)
    q.obsm["cell_type_proba"] = pd.DataFrame(rng.uniform(size=(n, 3)), index=q.obs_names, columns=PRED_ORDER)
    q.obsm["X_umap_pred"] = rng.normal(size=(n, 2))
    q.uns["cell_type_pred_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    q.uns["niche_colors"] = ["#aaaaaa", "#bbbbbb", "#cccccc"]
    q.uns["cellmapper"] = {
        "parameters": {"n_neighbors": np.int64(30), "kernel": "gauss", "weights": np.arange(3.0),
                       "nested": {"scale": np.float32(0.5), "flag": True}},
        "reference": "pbmc_reference.h5ad",
        "backend": "faiss-exact",
    }  # fmt: skip
    return q


def _staging_left(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if export.STAGING_MARK in p.name or p.name.endswith("-backup")]


def _check_round_trip(path: Path, annotated: AnnData) -> None:
    table = _read(path).tables[TABLE]
    assert table.obs_names.tolist() == annotated.obs_names.tolist()
    for col in annotated.obs.columns:
        got, want = table.obs[col], annotated.obs[col]
        if isinstance(want.dtype, pd.CategoricalDtype):
            assert list(got.cat.categories) == list(want.cat.categories), col
            assert got.astype(str).tolist() == want.astype(str).tolist(), col
        else:
            np.testing.assert_array_equal(got.to_numpy(), want.to_numpy(), err_msg=col)
            assert got.dtype == want.dtype, col
    assert list(table.obs["cell_type_pred"].cat.categories) == PRED_ORDER
    for key in ("cell_type_pred_colors", "niche_colors", "batch_colors"):
        assert list(table.uns[key]) == list(annotated.uns[key]), key
    proba = table.obsm["cell_type_proba"]
    assert list(proba.columns) == PRED_ORDER
    np.testing.assert_allclose(proba.to_numpy(), annotated.obsm["cell_type_proba"].to_numpy())
    np.testing.assert_allclose(table.obsm["X_umap_pred"], annotated.obsm["X_umap_pred"])
    cm = table.uns["cellmapper"]
    assert cm["reference"] == "pbmc_reference.h5ad" and cm["backend"] == "faiss-exact"
    params = cm["parameters"]
    assert int(params["n_neighbors"]) == 30 and params["kernel"] == "gauss"
    np.testing.assert_array_equal(params["weights"], np.arange(3.0))
    assert float(params["nested"]["scale"]) == 0.5 and bool(params["nested"]["flag"]) is True
    assert cm["export"]["table"] == TABLE and "spatialdata" in cm["versions"]
    assert table.uns["spatialdata_attrs"]["instance_key"] == "cell_id"
    np.testing.assert_array_equal(table.X, annotated.X)


# ---------------------------------------------------------------------------------- round trips


def test_new_path_round_trip_and_source_untouched(io_source, io_digest):
    before = io_digest(io_source)
    annotated = _annotated(io_source)
    out = export.export_annotated(io_source, TABLE, annotated, io_source.parent / "out.zarr")
    assert out == (io_source.parent / "out.zarr").resolve()
    assert io_digest(io_source) == before
    _check_round_trip(out, annotated)
    sdata = _read(out)
    np.testing.assert_array_equal(
        sdata.images["img"].data.compute(), _read(io_source).images["img"].data.compute()
    )
    assert _staging_left(io_source.parent) == []
    np.testing.assert_allclose(spatial.cell_coordinates(sdata, TABLE, "global"),
                               spatial.cell_coordinates(io_source, TABLE, "global"))  # fmt: skip


def test_in_place_replaces_only_the_table(io_source, io_digest):
    before = io_digest(io_source)
    annotated = _annotated(io_source)
    root_attrs = json.loads((io_source / "zarr.json").read_text())["attributes"]
    inode = (io_source / "images" / "img" / "zarr.json").stat().st_ino
    out = export.export_annotated(io_source, TABLE, annotated, in_place=True, provenance={"run": "test"})
    assert out == io_source.resolve()
    after = io_digest(io_source)
    others = {k: v for k, v in before.items() if not k.startswith(f"tables/{TABLE}/") and k != "zarr.json"}
    assert {k: after.get(k) for k in others} == others  # every other file: same bytes
    assert (io_source / "images" / "img" / "zarr.json").stat().st_ino == inode  # hard-linked, not copied
    assert json.loads((io_source / "zarr.json").read_text())["attributes"] == root_attrs
    assert any(k.startswith(f"tables/{TABLE}/obs/cell_type_pred") for k in after)
    _check_round_trip(io_source, annotated)
    assert _read(io_source).tables[TABLE].uns["cellmapper"]["run"] == "test"
    assert _staging_left(io_source.parent) == []


def test_consolidated_metadata_is_rebuilt(io_source):
    import zarr

    export.export_annotated(io_source, TABLE, _annotated(io_source), in_place=True)
    group = zarr.open_group(io_source, mode="r")
    consolidated = group.metadata.consolidated_metadata
    assert consolidated is not None
    assert f"tables/{TABLE}/obs/cell_type_pred" in consolidated.flattened_metadata


def test_annotated_rows_in_another_order_are_aligned(io_source):
    annotated = _annotated(io_source)
    shuffled = annotated[annotated.obs_names[::-1]].copy()
    out = export.export_annotated(io_source, TABLE, shuffled, io_source.parent / "out.zarr")
    table = _read(out).tables[TABLE]
    assert table.obs_names.tolist() == annotated.obs_names.tolist()
    np.testing.assert_array_equal(table.obs["cell_type_conf"], annotated.obs["cell_type_conf"])


def test_source_columns_are_kept(io_source):
    annotated = _annotated(io_source)
    del annotated.obs["batch"]
    out = export.export_annotated(io_source, TABLE, annotated, io_source.parent / "out.zarr")
    assert "batch" in _read(out).tables[TABLE].obs


def test_overwrite_existing_output(io_source, io_digest):
    out = io_source.parent / "out.zarr"
    export.export_annotated(io_source, TABLE, _annotated(io_source), out)
    with pytest.raises(CellMapperInputError, match="already exists.*overwrite=True"):
        export.export_annotated(io_source, TABLE, _annotated(io_source), out)
    annotated = _annotated(io_source)
    annotated.obs["extra"] = 7
    export.export_annotated(io_source, TABLE, annotated, out, overwrite=True)
    assert (_read(out).tables[TABLE].obs["extra"] == 7).all()
    assert _staging_left(io_source.parent) == []


# ---------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_change_nothing(io_source, io_digest, tmp_path):
    annotated = _annotated(io_source)
    before = io_digest(io_source)
    listing = sorted(os.listdir(io_source.parent))
    not_sd = tmp_path / "plain"
    not_sd.mkdir()
    (not_sd / "file.txt").write_text("keep me")
    cases = [
        (dict(source_path=tmp_path / "missing.zarr", out_path=tmp_path / "o.zarr"), "does not exist"),
        (dict(source_path=not_sd, out_path=tmp_path / "o.zarr"), "not a SpatialData"),
        (dict(table_name="nope", out_path=tmp_path / "o.zarr"), "Unknown table 'nope'"),
        (dict(annotated_table=annotated[:5].copy(), out_path=tmp_path / "o.zarr"), "has 5 cells"),
        (dict(), "No output given"),
        (dict(out_path=tmp_path / "o.zarr", in_place=True), "not both"),
        (dict(out_path=io_source), "Use `in_place=True`"),
        (dict(out_path=io_source / "inner.zarr"), "inside the source"),
        (dict(out_path=not_sd, overwrite=True), "not a SpatialData zarr store; refusing"),
        (dict(out_path=tmp_path / "no" / "dir.zarr"), "does not exist. Create it"),
    ]
    for kwargs, message in cases:
        args = {"source_path": io_source, "table_name": TABLE, "annotated_table": annotated, **kwargs}
        with pytest.raises(CellMapperInputError, match=message):
            export.export_annotated(**args)
    assert io_digest(io_source) == before
    assert sorted(os.listdir(io_source.parent)) == listing
    assert (not_sd / "file.txt").read_text() == "keep me"
    assert not (tmp_path / "o.zarr").exists()


def test_read_only_target(io_source, io_digest, monkeypatch, tmp_path):
    annotated = _annotated(io_source)
    before = io_digest(io_source)
    real_access = os.access
    read_only = {str(tmp_path / "ro"), str(io_source.resolve())}
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(
        export.os, "access", lambda p, mode: False if str(p) in read_only else real_access(p, mode)
    )
    with pytest.raises(CellMapperInputError, match="read-only"):
        export.export_annotated(io_source, TABLE, annotated, tmp_path / "ro" / "out.zarr")
    with pytest.raises(CellMapperInputError, match="read-only"):
        export.export_annotated(io_source, TABLE, annotated, in_place=True)
    assert os.listdir(tmp_path / "ro") == []
    assert io_digest(io_source) == before


# ------------------------------------------------------------------------- failures mid-write

STAGES = ["staging-created", "table-written", "cloned", "table-placed", "consolidated", "before-commit"]


@pytest.mark.parametrize("in_place", [False, True], ids=["new_path", "in_place"])
@pytest.mark.parametrize("stage", STAGES)
def test_exception_mid_write_leaves_source_unchanged(io_source, io_digest, monkeypatch, stage, in_place):
    annotated = _annotated(io_source)
    before = io_digest(io_source)
    out = None if in_place else io_source.parent / "out.zarr"

    def boom(name):
        if name == stage:
            raise RuntimeError(f"boom at {name}")

    monkeypatch.setattr(export, "_hook", boom)
    with pytest.raises(RuntimeError, match="boom"):
        export.export_annotated(io_source, TABLE, annotated, out, in_place=in_place)
    assert io_digest(io_source) == before
    assert _staging_left(io_source.parent) == []
    assert out is None or not out.exists()
    assert "cell_type_pred" not in _read(io_source).tables[TABLE].obs


def test_exception_inside_zarr_write(io_source, io_digest, monkeypatch):
    import zarr.storage

    annotated = _annotated(io_source)
    before = io_digest(io_source)
    original, calls = zarr.storage.LocalStore.set, []

    async def failing_set(self, key, value):
        calls.append(key)
        if len(calls) == 15:
            raise OSError("disk full (simulated)")
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", failing_set)
    with pytest.raises(OSError, match="disk full"):
        export.export_annotated(io_source, TABLE, annotated, in_place=True)
    assert io_digest(io_source) == before
    assert _staging_left(io_source.parent) == []


def test_swap_without_rename_exchange(io_source, io_digest, monkeypatch):
    """Fallback swap (two renames): a failure between them puts the old store back."""
    annotated = _annotated(io_source)
    before = io_digest(io_source)
    monkeypatch.setattr(export, "_exchange", lambda a, b: False)

    def boom(name):
        if name == "moved-to-backup":
            raise RuntimeError("boom between renames")

    monkeypatch.setattr(export, "_hook", boom)
    with pytest.raises(RuntimeError, match="between renames"):
        export.export_annotated(io_source, TABLE, annotated, in_place=True)
    assert io_digest(io_source) == before
    assert _staging_left(io_source.parent) == []
    monkeypatch.setattr(export, "_hook", None)
    export.export_annotated(io_source, TABLE, annotated, in_place=True)
    _check_round_trip(io_source, annotated)
    assert _staging_left(io_source.parent) == []


# ------------------------------------------------------------------------- killed mid-write

KILL_SCRIPT = r"""
import os, signal, sys
import anndata
import zarr.storage
from napari_cellmapper.io import export

source, table_file, out, kind, arg = sys.argv[1:6]
annotated = anndata.read_h5ad(table_file)

def die():
    print("KILLING", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "stage":
    export._hook = lambda stage: die() if stage == arg else None
elif kind == "zarr-set":
    original, calls = zarr.storage.LocalStore.set, []
    async def set_(self, key, value):
        calls.append(key)
        if len(calls) == int(arg):
            die()
        return await original(self, key, value)
    zarr.storage.LocalStore.set = set_
elif kind == "link":
    original_link, links = os.link, []
    def link(src, dst, *args, **kwargs):
        links.append(src)
        if len(links) == int(arg):
            die()
        return original_link(src, dst, *args, **kwargs)
    os.link = link
in_place = out == "-"
export.export_annotated(source, "table", annotated, None if in_place else out, in_place=in_place)
print("FINISHED", flush=True)
"""


def _run_killed(tmp_path: Path, source: Path, out: str, kind: str, arg: str) -> subprocess.CompletedProcess:
    table_file = tmp_path / "annotated.h5ad"
    _annotated(source).write_h5ad(table_file)
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(source), str(table_file), out, kind, arg],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "kind", "arg"),
    [
        ("in_place", "zarr-set", "25"),  # inside the table write
        ("in_place", "link", "5"),  # while hard-linking the other elements
        ("in_place", "stage", "before-commit"),  # everything staged, not swapped
        ("new_path", "zarr-set", "25"),
    ],
)
def test_killed_writer_leaves_source_unchanged(io_source, io_digest, tmp_path, mode, kind, arg):
    before = io_digest(io_source)
    out = "-" if mode == "in_place" else str(io_source.parent / "out.zarr")
    proc = _run_killed(tmp_path, io_source, out, kind, arg)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "KILLING" in proc.stdout and "FINISHED" not in proc.stdout
    assert io_digest(io_source) == before
    assert "cell_type_pred" not in _read(io_source).tables[TABLE].obs
    assert not (io_source.parent / "out.zarr").exists()
    # the only debris is the hidden staging directory, which a later export does not mind
    if mode == "in_place":
        export.export_annotated(io_source, TABLE, _annotated(io_source), in_place=True)
        assert "cell_type_pred" in _read(io_source).tables[TABLE].obs
    else:
        _check_round_trip(
            export.export_annotated(io_source, TABLE, _annotated(io_source), out), _annotated(io_source)
        )
    assert _staging_left(io_source.parent) == []  # the killed run's staging was removed


@pytest.mark.slow
def test_killed_right_after_the_swap_leaves_the_new_store(io_source, tmp_path):
    proc = _run_killed(tmp_path, io_source, "-", "stage", "exchanged")
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    _check_round_trip(io_source, _annotated(io_source))
    assert _staging_left(io_source.parent) != []  # the old tree, at the killed run's staging name
    export.export_annotated(io_source, TABLE, _annotated(io_source), in_place=True)
    assert _staging_left(io_source.parent) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_what_appears_at_the_target_before_the_commit_is_not_replaced(io_source, monkeypatch, overwrite):
    out = io_source.parent / "out.zarr"
    if overwrite:
        export.export_annotated(io_source, TABLE, _annotated(io_source), out)

    def someone_else(stage):
        if stage == "before-commit":
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            (out / "mine.txt").write_text("keep")

    monkeypatch.setattr(export, "_hook", someone_else)
    with pytest.raises(CellMapperInputError, match="Nothing was replaced"):
        export.export_annotated(io_source, TABLE, _annotated(io_source), out, overwrite=overwrite)
    assert (out / "mine.txt").read_text() == "keep"
    assert _staging_left(io_source.parent) == []


def test_unwritable_annotation_is_an_input_error(io_source, io_digest):
    annotated = _annotated(io_source)
    annotated.uns["cellmapper"]["callback"] = object()
    before = io_digest(io_source)
    with pytest.raises(CellMapperInputError, match="cannot be written"):
        export.export_annotated(io_source, TABLE, annotated, in_place=True)
    assert io_digest(io_source) == before
    assert _staging_left(io_source.parent) == []


@pytest.mark.filterwarnings("ignore:SpatialData is not stored in the most current format")
def test_older_format_source(io_pristine, io_digest, tmp_path):
    """A zarr v2 (older format) source: in place is refused, a new path is written in the current format."""
    from spatialdata._io.format import SpatialDataContainerFormatV01

    old = tmp_path / "old.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _read(io_pristine).write(old, sdata_formats=SpatialDataContainerFormatV01())
    before = io_digest(old)
    annotated = _annotated(io_pristine)
    with pytest.raises(CellMapperInputError, match="older SpatialData format.*new path"):
        export.export_annotated(old, TABLE, annotated, in_place=True)
    imputed = _imputed(io_pristine)
    out = export.export_annotated(old, TABLE, annotated, tmp_path / "new.zarr", imputed=imputed)
    assert (out / "zarr.json").is_file()
    _check_round_trip(out, annotated)
    np.testing.assert_array_equal(_read(out).tables[f"{TABLE}_imputed"].X.toarray(), imputed.X.toarray())
    assert io_digest(old) == before
    assert _staging_left(tmp_path) == []


def _imputed(source: Path, rows: slice = slice(None)) -> AnnData:
    """Imputed expression (reference genes) of some cells of the source table, sparse."""
    from scipy import sparse

    obs_names = _read(source).tables[TABLE].obs_names[rows]
    x = sparse.random(len(obs_names), 7, density=0.4, random_state=6, format="csr", dtype=np.float32)
    genes = pd.DataFrame(index=[f"gene{i}" for i in range(7)])
    return AnnData(X=x, obs=pd.DataFrame(index=obs_names), var=genes)


@pytest.mark.parametrize("in_place", [False, True])
def test_imputed_expression_is_a_second_table(io_source, io_digest, in_place):
    imputed = _imputed(io_source, slice(10, 40))  # a region-restricted run imputes some cells
    before = io_digest(io_source)
    target = None if in_place else io_source.parent / "out.zarr"
    out = export.export_annotated(
        io_source, TABLE, _annotated(io_source), target, in_place=in_place, imputed=imputed
    )
    sdata = _read(out)
    table, imp = sdata.tables[TABLE], sdata.tables[f"{TABLE}_imputed"]
    assert list(imp.obs_names) == list(imputed.obs_names) and list(imp.var_names) == list(imputed.var_names)
    np.testing.assert_array_equal(imp.X.toarray(), imputed.X.toarray())
    attrs = imp.uns["spatialdata_attrs"]
    assert attrs["region"] == "cells" and attrs["instance_key"] == "cell_id"
    np.testing.assert_array_equal(imp.obs["cell_id"], table.obs.loc[imputed.obs_names, "cell_id"])
    assert imp.uns["cellmapper"]["imputed_from_table"] == TABLE
    _check_round_trip(out, _annotated(io_source))
    if not in_place:
        assert io_digest(io_source) == before
    else:  # exporting again replaces the imputed table, nothing else appears
        again = _imputed(io_source, slice(0, 5))
        export.export_annotated(io_source, TABLE, _annotated(io_source), in_place=True, imputed=again)
        assert _read(io_source).tables[f"{TABLE}_imputed"].n_obs == 5
        assert sorted(_read(io_source).tables) == sorted([TABLE, f"{TABLE}_imputed"])
    assert _staging_left(io_source.parent) == []


def test_bad_imputed_expression_changes_nothing(io_source, io_digest):
    before = io_digest(io_source)
    wrong = _imputed(io_source)
    wrong.obs_names = [f"other{i}" for i in range(wrong.n_obs)]
    with pytest.raises(CellMapperInputError, match="all cells of table"):
        export.export_annotated(io_source, TABLE, _annotated(io_source), in_place=True, imputed=wrong)
    with pytest.raises(CellMapperInputError, match="must differ"):
        export.export_annotated(
            io_source, TABLE, _annotated(io_source), in_place=True,
            imputed=_imputed(io_source), imputed_name=TABLE,
        )  # fmt: skip
    assert io_digest(io_source) == before
    assert _staging_left(io_source.parent) == []


# ------------------------------------------------------------------- categories and their colours

REF_TYPES = ["A", "Ghost", "B"]  # "Ghost" is absent from the query, between the two that are present
REF_COLORS = ["#aa0000", "#00aa00", "#0000aa"]


def _mapped(source: Path) -> AnnData:
    """The source table mapped by CellMapper onto a reference with a type that no query cell gets."""
    from napari_cellmapper.core.mapper import CellMapper

    rng = np.random.default_rng(3)
    centres = {"A": (6.0, 0.0), "Ghost": (0.0, 60.0), "B": (-6.0, 0.0)}
    query = spatial.query_table(source, TABLE)
    types = np.where(np.arange(query.n_obs) % 2 == 0, "A", "B")
    query.obsm["X_joint"] = np.array([centres[t] for t in types]) + rng.normal(size=(query.n_obs, 2))
    ref_types = np.array(REF_TYPES * 30)
    reference = AnnData(X=np.zeros((ref_types.size, 3), dtype=np.float32))
    reference.obs["cell_type"] = pd.Categorical(ref_types, categories=REF_TYPES)
    reference.uns["cell_type_colors"] = np.array(REF_COLORS, dtype=object)
    reference.obsm["X_joint"] = np.array([centres[t] for t in ref_types]) + rng.normal(size=(90, 2))
    CellMapper(query, reference).fit(use_rep="X_joint", obs_keys="cell_type", progress=False)
    pred = query.obs["cell_type_pred"]
    assert list(pred.cat.categories) == REF_TYPES and pred.astype(str).tolist() == types.tolist()
    assert list(query.uns["cell_type_pred_colors"]) == REF_COLORS  # in memory: one colour per category
    return query


def _assert_colours_pair_up(table: AnnData) -> None:
    for col in table.obs.columns:
        values = table.obs[col]
        if isinstance(values.dtype, pd.CategoricalDtype) and f"{col}_colors" in table.uns:
            assert len(table.uns[f"{col}_colors"]) == len(values.cat.categories), col


def test_unused_categories_are_dropped_with_their_colours(io_source):
    """Only the categories some cell has are written, each with its colour; categories and colours
    still pair up in the table spatialdata joins to the cells (what napari-spatialdata colours)
    and in a subset of the cells."""
    from spatialdata import join_spatialelement_table

    annotated = _mapped(io_source)
    annotated.obs["niche"] = pd.Categorical(["n1", "n3"] * 30, categories=["n0", "n1", "n2", "n3"])
    annotated.uns["niche_colors"] = ["#000000", "#111111", "#222222", "#333333"]
    annotated.obs["curated"] = pd.Categorical(["x"] * 60, categories=["x", "y"])
    annotated.uns["curated_colors"] = ["#444444"] * 3  # not one per category: left as it is
    before = annotated.copy()
    out = export.export_annotated(io_source, TABLE, annotated, io_source.parent / "out.zarr")

    sdata = _read(out)
    table = sdata.tables[TABLE]
    assert list(table.obs["cell_type_pred"].cat.categories) == ["A", "B"]
    assert list(table.uns["cell_type_pred_colors"]) == ["#aa0000", "#0000aa"]  # each type its own colour
    assert (table.obs["cell_type_pred"].to_numpy() == annotated.obs["cell_type_pred"].to_numpy()).all()
    assert list(table.obs["niche"].cat.categories) == ["n1", "n3"]
    assert list(table.uns["niche_colors"]) == ["#111111", "#333333"]
    assert list(table.obs["curated"].cat.categories) == ["x"] and len(table.uns["curated_colors"]) == 3
    assert list(table.obs["batch"].cat.categories) == ["x", "y"] and len(table.uns["batch_colors"]) == 2
    assert list(table.obsm["cell_type_proba"].columns) == REF_TYPES  # probabilities keep every type
    for col in ("cell_type_pred", "niche", "curated"):  # the caller's table is not changed
        assert list(annotated.obs[col].cat.categories) == list(before.obs[col].cat.categories)
        assert list(annotated.uns[f"{col}_colors"]) == list(before.uns[f"{col}_colors"])

    table.uns.pop("curated_colors")  # mismatched as given
    _, joined = join_spatialelement_table(
        sdata=sdata, spatial_element_names="cells", table_name=TABLE, how="left", match_rows="left"
    )
    _assert_colours_pair_up(joined)
    assert list(joined.uns["cell_type_pred_colors"]) == ["#aa0000", "#0000aa"]
    _assert_colours_pair_up(table[table.obs["cell_type_pred"] == "B"])
    assert list(table[:1].uns["cell_type_pred_colors"]) == ["#aa0000"]


@pytest.mark.gui
def test_export_is_coloured_in_napari_spatialdata(io_source, make_napari_viewer):
    """napari-spatialdata colours the cells of the exported store by the predicted type, with the
    reference's colours (a reference type that no cell has broke its colouring)."""
    pytest.importorskip("napari_spatialdata")
    from matplotlib.colors import to_rgba_array
    from napari.utils.events import EventedList
    from napari_spatialdata._sdata_widgets import SdataWidget
    from napari_spatialdata._view import QtAdataViewWidget

    out = export.export_annotated(io_source, TABLE, _mapped(io_source), io_source.parent / "out.zarr")
    sdata = _read(out)
    viewer = make_napari_viewer()
    sdata_widget = SdataWidget(viewer, EventedList([sdata]))
    viewer.window.add_dock_widget(sdata_widget, name="SpatialData")
    sdata_widget.viewer_model.add_sdata_circles(sdata, "cells", "global", False)
    view = QtAdataViewWidget(viewer)
    view.obs_widget._onAction(["cell_type_pred"])

    layer = viewer.layers["cells"]
    obs = sdata.tables[TABLE].obs.set_index("cell_id")
    colour = dict(zip(["A", "B"], ["#aa0000", "#0000aa"], strict=True))
    want = [colour[obs.loc[i, "cell_type_pred"]] for i in layer.metadata["indices"]]
    np.testing.assert_allclose(layer.face_color, to_rgba_array(want))
