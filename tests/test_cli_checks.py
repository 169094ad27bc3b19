"""The command line refuses every refusable input before any mapping runs, in command-line words."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _core_fixtures import make_pair

from napari_cellmapper import cli
from napari_cellmapper.cli import main


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A SpatialData query (the built-in example) and a reference with awkward names."""
    from napari_cellmapper import datasets

    root = tmp_path_factory.mktemp("spatial")
    reference, _ = datasets.pbmc_example()
    reference.obs["cell type"] = reference.obs["cell_type"]
    labels = reference.obs["cell_type"].astype(str).to_numpy().copy()
    labels[labels == labels[0]] = "."
    labels[labels == labels[1]] = ""
    reference.obs["dotty"] = pd.Categorical(labels)
    reference.write_h5ad(root / "ref.h5ad")
    return root / "ref.h5ad", datasets.write_spatial_example(root / "sample.zarr")


@pytest.fixture
def files(tmp_path):
    query, reference = make_pair(n_query=50, n_ref=80, seed=2)
    query.obsm["spatial"] = np.random.default_rng(0).uniform(0, 50, size=(query.n_obs, 2))
    reference.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "query.h5ad")
    no_xy = query.copy()
    del no_xy.obsm["spatial"]
    no_xy.write_h5ad(tmp_path / "no_xy.h5ad")
    nan_xy = query.copy()
    nan_xy.obsm["spatial"][3] = np.nan
    nan_xy.write_h5ad(tmp_path / "nan_xy.h5ad")
    (tmp_path / "exists.h5ad").write_bytes(b"keep")
    return tmp_path


@pytest.fixture
def no_mapping(monkeypatch):
    """Fail the test if a mapping (or a stream) starts."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the mapping ran before the input was refused")

    monkeypatch.setattr("napari_cellmapper.core.pipeline.annotate", refuse)
    monkeypatch.setattr("napari_cellmapper.io.streaming.map_stream", refuse)


def _listing(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


H5AD = [
    "--reference",
    "{t}/ref.h5ad",
    "--query",
    "{t}/query.h5ad",
    "--use-rep",
    "X_joint",
    "--obs",
    "celltype",
]
CASES = {
    "reference-out exists": (H5AD + ["--presence", "--reference-out", "{t}/exists.h5ad",
                                     "--out", "{t}/o.h5ad"], "--reference-out"),
    "imputed-out exists": (H5AD + ["--layer", "X", "--imputed-out", "{t}/exists.h5ad", "--out", "{t}/o.h5ad"],
                           "--imputed-out"),
    "zarr out, h5ad query": (H5AD + ["--out", "{t}/o.zarr"], "--out"),
    "in-place, h5ad query": (H5AD + ["--in-place"], "--in-place"),
    "in-place with out": (H5AD + ["--in-place", "--out", "{t}/o.h5ad"], "--in-place"),
    "missing folder": (H5AD + ["--out", "{t}/nowhere/o.h5ad"], "--out"),
    "out is the query": (H5AD + ["--out", "{t}/query.h5ad", "--overwrite"], "--out is the --query"),
    "out is the reference": (H5AD + ["--out", "{t}/ref.h5ad", "--overwrite"], "--out is the --reference"),
    "imputed-out without layer": (H5AD + ["--imputed-out", "{t}/imp.h5ad", "--out", "{t}/o.h5ad"], "--layer"),
    "presence without reference-out": (H5AD + ["--presence", "--out", "{t}/o.h5ad"], "--reference-out"),
    "same output twice": (H5AD + ["--layer", "X", "--imputed-out", "{t}/o.h5ad", "--out", "{t}/o.h5ad"],
                          "same path"),
    "niches without coordinates": (["--reference", "{t}/ref.h5ad", "--query", "{t}/no_xy.h5ad", "--use-rep",
                                    "X_joint", "--obs", "celltype", "--niches", "2", "--out", "{t}/o.h5ad"],
                                   "--niches"),
    "niches with NaN coordinates": (["--reference", "{t}/ref.h5ad", "--query", "{t}/nan_xy.h5ad", "--use-rep",
                                     "X_joint", "--obs", "celltype", "--niches", "2", "--out", "{t}/o.h5ad"],
                                    "--niches: 1 query cells"),
    "stream to h5ad": (H5AD + ["--stream", "--out", "{t}/o.h5ad"], "--stream"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_refused_before_mapping_naming_the_flag(files, no_mapping, capsys, case):
    argv, flag = CASES[case]
    before = _listing(files)
    code = main(["map", *(a.format(t=files) for a in argv), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and flag in err, err
    assert "=" not in err.replace("==", ""), f"Python API words in {err!r}"
    assert _listing(files) == before  # nothing written, nothing touched


def test_read_only_folder_refused(files, no_mapping, monkeypatch, capsys):
    locked = files / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's lock is simulated where the check asks for it
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked.resolve() and real_access(p, mode))
    argv = [a.format(t=files) for a in H5AD]
    assert main(["map", *argv, "--out", str(locked / "o.h5ad"), "-q"]) == 2
    assert "--out" in capsys.readouterr().err and not any(locked.iterdir())


@pytest.mark.parametrize(
    ("key", "message"), [("cell type", "'cell type_pred'"), ("dotty", "the reference's category")]
)
def test_unstorable_names_refused_before_mapping(sample, tmp_path, no_mapping, capsys, key, message):
    ref, query = sample
    out = tmp_path / "o.zarr"
    code = main(["map", "--reference", str(ref), "--query", str(query), "--use-rep", "X_joint", "--obs", key,
                 "--out", str(out), "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"--obs {key!r}" in err and message in err, err
    assert not out.exists()


def test_out_equal_to_zarr_query_suggests_in_place(sample, no_mapping, capsys):
    ref, query = sample
    assert main(["map", "--reference", str(ref), "--query", str(query), "--use-rep", "X_joint", "--obs",
                 "cell_type", "--out", str(query), "--overwrite", "-q"]) == 2  # fmt: skip
    assert "--in-place" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--chunk-size", "-k", "--reference-k"])
def test_counts_must_be_positive(files, no_mapping, capsys, flag):
    with pytest.raises(SystemExit) as exit_:
        main(["map", *(a.format(t=files) for a in H5AD), flag, "0", "--out", str(files / "o.h5ad")])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--kernel", "--backend", "--metric", "--joint"])
def test_choices_are_listed_and_checked(files, capsys, option):
    with pytest.raises(SystemExit):
        main(["map", *(a.format(t=files) for a in H5AD), option, "magic", "--out", str(files / "o.h5ad")])
    assert f"argument {option}: invalid choice" in capsys.readouterr().err


def test_choices_match_the_engine():
    from napari_cellmapper.core import validation

    assert cli.KERNELS == validation.KERNELS and cli.BACKENDS == validation.BACKENDS
    assert cli.METRICS == validation.METRICS and cli.JOINT_METHODS == validation.JOINT_METHODS


def test_map_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["map", "--help"])
    text = capsys.readouterr().out
    assert (
        "examples:" in text
        and "napari-cellmapper map --reference" in text
        and "{gauss,gauss_adaptive" in text
    )


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_before_or_after_the_command(files, position):
    argv = ["map", "--reference", str(files / "missing.h5ad"), "--query", str(files / "query.h5ad"),
            "--out", str(files / "o.h5ad")]  # fmt: skip
    argv = ["--debug", *argv] if position == "before" else [*argv, "--debug"]
    with pytest.raises(ValueError, match="does not exist"):  # --debug: the exception itself, not one line
        main(argv)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_h5ad_outputs_honour_the_umask(files, umask):
    old = os.umask(umask)
    try:
        argv = [a.format(t=files) for a in H5AD]
        assert main(["map", *argv, "-k", "5", "--layer", "X", "--imputed-out", str(files / "imp.h5ad"),
                     "--out", str(files / "o.h5ad"), "-q"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    for name in ("o.h5ad", "imp.h5ad"):
        assert stat.S_IMODE((files / name).stat().st_mode) == 0o666 & ~umask
    assert ad.read_h5ad(files / "imp.h5ad").n_obs == 50
    assert not list(files.glob(".*.tmp"))


def test_warnings_are_one_clean_line(monkeypatch, capsys):
    def noisy(_args):
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        warnings.warn("a dependency's deprecation", DeprecationWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_cmd_example", noisy)
    assert main(["example", "-q"]) == 0
    err = capsys.readouterr().err
    assert err == "napari-cellmapper: warning: first line second line\n"


def test_example_out_existing_refused_first_and_no_temp_left(tmp_path, monkeypatch, capsys):
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    existing = tmp_path / "done.zarr"
    existing.mkdir()
    calls = []
    monkeypatch.setattr("napari_cellmapper.core.pipeline.annotate", lambda *a, **k: calls.append(a))
    assert main(["example", "-q", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err and err.count("'") % 2 == 0 and not calls
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["example", "-q", "--out", str(tmp_path / "new.zarr")]) == 0
    assert (tmp_path / "new.zarr").is_dir()
    assert list(temp.iterdir()) == []  # the example's staging copy is gone


def test_demo_without_napari_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "napari" else real(name, *a)
    )
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'napari-cellmapper[all]'" in err


def test_messages_keep_their_quotes():
    assert cli._message(KeyError("'cell type' is not in obs")) == "'cell type' is not in obs"
    assert cli._message(ValueError("'X_umap' has 1 column")) == "'X_umap' has 1 column"


@pytest.mark.parametrize("role", ["query", "reference"])
def test_unreadable_h5ad_is_one_clear_line(files, no_mapping, capsys, role):
    (files / "broken.h5ad").write_bytes(b"not an hdf5 file")
    argv = [a.format(t=files) for a in H5AD]
    argv[argv.index(f"--{role}") + 1] = str(files / "broken.h5ad")
    assert main(["map", *argv, "--out", str(files / "o.h5ad"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not be read as .h5ad" in err and "broken.h5ad" in err, err
    assert role.capitalize() in err and "--debug" not in err


def test_non_finite_counts_without_use_rep_is_one_clear_line(files, capsys, monkeypatch):
    query = ad.read_h5ad(files / "query.h5ad")
    x = query.X.toarray()
    x[2, 3], x[4, 5] = np.nan, np.inf
    query.X = x
    query.write_h5ad(files / "nan_counts.h5ad")
    searched = []
    monkeypatch.setattr("napari_cellmapper.core.mapper.build_index", lambda *a, **k: searched.append(a))
    argv = ["map", "--reference", str(files / "ref.h5ad"), "--query", str(files / "nan_counts.h5ad"),
            "--obs", "celltype", "--out", str(files / "o.h5ad"), "-q"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-cellmapper: error: The query's X holds 2 NaN or inf"), err
    assert len(err.splitlines()) == 1 and "--use-rep" in err and not searched
    assert not (files / "o.h5ad").exists()


def test_one_cell_reference_with_k_1(files, capsys):
    ad.read_h5ad(files / "ref.h5ad")[:1].copy().write_h5ad(files / "one.h5ad")
    argv = ["map", "--reference", str(files / "one.h5ad"), "--query", str(files / "query.h5ad"),
            "--use-rep", "X_joint", "--obs", "celltype", "-k", "1", "--out", str(files / "o.h5ad"),
            "-q"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "mapping quality needs at least 2" in capsys.readouterr().err
    assert ad.read_h5ad(files / "o.h5ad").obs["celltype_pred"].nunique() == 1


def test_in_place_with_layer_can_be_run_again(sample, tmp_path, capsys):
    from napari_cellmapper import datasets
    from napari_cellmapper.io import spatial as sio

    ref, _ = sample
    store = datasets.write_spatial_example(tmp_path / "again.zarr")
    argv = ["map", "--reference", str(ref), "--query", str(store), "--use-rep", "X_joint", "--obs",
            "cell_type", "--layer", "X", "--in-place", "-q"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    tables = list(sio.open_spatial(store, selection=("tables",)).tables)
    assert len(tables) == 2 and any(t.endswith("_imputed") for t in tables)
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(sio.open_spatial(store, selection=("tables",)).tables) == sorted(tables)


def test_table_pointing_at_a_missing_element_names_both(tmp_path, capsys):
    import spatialdata
    from spatialdata.models import TableModel

    from napari_cellmapper import datasets

    example = datasets.spatial_example()
    name = next(iter(example.tables))
    table = example.tables[name].copy()
    region_key, instance_key = (table.uns["spatialdata_attrs"][k] for k in ("region_key", "instance_key"))
    table.obs[region_key] = pd.Categorical(["ghost"] * table.n_obs)
    del table.uns["spatialdata_attrs"]
    table = TableModel.parse(table, region="ghost", region_key=region_key, instance_key=instance_key)
    store = tmp_path / "ghost.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # spatialdata's own note on the missing 'ghost'
        spatialdata.SpatialData(images=dict(example.images), tables={"cells": table}).write(store)
    ref = tmp_path / "ref.h5ad"
    datasets.pbmc_example()[0].write_h5ad(ref)
    argv = ["map", "--reference", str(ref), "--query", str(store), "--use-rep", "X_joint", "--obs",
            "cell_type", "--out", str(tmp_path / "o.zarr"), "-q"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "'cells'" in err and "'ghost'" in err and "not an element" in err, err


def test_full_disk_while_writing_is_one_line_naming_the_flag(files, monkeypatch, capsys):
    def fail(self, path, **kwargs):
        raise OSError("Can't write data (file write failed: errno = 28, error message = 'No space left')")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    argv = [a.format(t=files) for a in H5AD]
    assert main(["map", *argv, "-k", "5", "--out", str(files / "o.h5ad"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: --out: Cannot write" in err, err
    assert "No space left on device" in err and "--debug" not in err
