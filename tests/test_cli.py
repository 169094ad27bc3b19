"""The command line: map h5ad and SpatialData queries, stream, bad input as one line."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from _core_fixtures import make_pair

from napari_cellmapper.cli import main


@pytest.fixture
def files(tmp_path):
    query, reference = make_pair(n_query=50, n_ref=80, seed=2)
    query.obsm["spatial"] = np.random.default_rng(0).uniform(0, 50, size=(query.n_obs, 2))
    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query.h5ad"
    reference.write_h5ad(ref_path)
    query.write_h5ad(query_path)
    return ref_path, query_path, tmp_path


def test_map_h5ad(files, capsys):
    ref, query, tmp = files
    out = tmp / "out.h5ad"
    code = main(["map", "--reference", str(ref), "--query", str(query), "--use-rep", "X_joint",
                 "--obs", "celltype", "--obsm", "X_umap", "-k", "10", "--niches", "2", "--presence",
                 "--reference-out", str(tmp / "r.h5ad"), "--layer", "X",
                 "--imputed-out", str(tmp / "imp.h5ad"), "--out", str(out), "-q"])  # fmt: skip
    assert code == 0
    result = ad.read_h5ad(out)
    for column in ("celltype_pred", "celltype_conf", "celltype_entropy", "mapping_quality", "niche"):
        assert column in result.obs
    assert "X_umap_pred" in result.obsm and "celltype_pred_colors" in result.uns
    assert "presence_score" in ad.read_h5ad(tmp / "r.h5ad").obs
    assert ad.read_h5ad(tmp / "imp.h5ad").n_vars == result.n_vars
    assert "mapped 50 query cells" in capsys.readouterr().err
    # never overwrites silently
    assert main(["map", "--reference", str(ref), "--query", str(query), "--use-rep", "X_joint",
                 "--obs", "celltype", "--out", str(out), "-q"]) == 2  # fmt: skip
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--use-rep", "X_missing", "--obs", "celltype"], "X_missing"),
        (["--use-rep", "X_joint", "--obs", "nope"], "nope"),
        (["--use-rep", "X_joint", "--backend", "cupy"], "GPU"),
        (["--use-rep", "X_joint", "-k", "500"], "larger than the reference"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, capsys, extra, message):
    ref, query, tmp = files
    code = main(
        ["map", "--reference", str(ref), "--query", str(query), *extra, "--out", str(tmp / "o.h5ad"), "-q"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp / "o.h5ad").exists()


def test_missing_file_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_cellmapper.cli", "map", "--reference", str(tmp_path / "no.h5ad"),
         "--query", str(tmp_path / "no2.h5ad"), "--out", str(tmp_path / "o.h5ad")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_map_spatialdata_zarr(tmp_path, capsys):
    from napari_cellmapper import datasets

    reference, _ = datasets.pbmc_example()
    ref = tmp_path / "ref.h5ad"
    reference.write_h5ad(ref)
    sample = datasets.write_spatial_example(tmp_path / "sample.zarr")
    out = tmp_path / "annotated.zarr"
    code = main(["map", "--reference", str(ref), "--query", str(sample), "--table", "table",
                 "--use-rep", "X_joint", "--obs", "cell_type", "--presence",
                 "--reference-out", str(tmp_path / "ref_presence.h5ad"),
                 "--niches", "4", "--layer", "X", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    import spatialdata

    written = spatialdata.read_zarr(out)
    table = written.tables["table"]
    imputed = written.tables["table_imputed"]  # the expression transferred from the reference
    assert list(imputed.var_names) == list(reference.var_names) and imputed.n_obs == table.n_obs
    for column in ("cell_type_pred", "cell_type_conf", "cell_type_entropy", "mapping_quality", "niche"):
        assert column in table.obs
    # the reference's categories in its order (those no cell got are left out of the export)
    ref_order = list(reference.obs["cell_type"].cat.categories)
    predicted = list(table.obs["cell_type_pred"].cat.categories)
    assert set(predicted) <= set(ref_order) and predicted == sorted(predicted, key=ref_order.index)
    assert "reference" in str(table.uns["cellmapper"])


def test_joint_and_label_options(files):
    ref, query, tmp = files
    out = tmp / "opts.h5ad"
    code = main(["map", "--reference", str(ref), "--query", str(query), "--obs", "celltype", "-k", "10",
                 "--n-comps", "6", "--normalize", "true", "--scaling", "gene", "--n-top-genes", "20",
                 "--head", "none", "--no-calibrate", "--min-confidence", "1",
                 "--out", str(out), "-q"])  # fmt: skip
    assert code == 0
    result = ad.read_h5ad(out)
    joint, labels = result.uns["cellmapper"]["joint"], result.uns["cellmapper"]["labels"]
    assert (
        joint["scaling"] == "gene"
        and joint["n_genes"] == 20
        and "normalize=True" in joint["normalize"]["query"]
    )
    assert labels["head"] == "none" and not labels["calibrate"] and labels["min_confidence"] == 1.0
    assert labels.get("self_training") is None  # no head, nothing to train
    for value, recorded in (("0.7", 0.7), ("0", None)):
        code = main(["map", "--reference", str(ref), "--query", str(query), "--obs", "celltype", "-k", "10",
                     "--self-training", value, "--out", str(out), "--overwrite", "-q"])  # fmt: skip
        assert code == 0 and ad.read_h5ad(out).uns["cellmapper"]["labels"].get("self_training") == recorded
    for value, recorded in (("0.5", 0.5), ("0", None)):
        code = main(["map", "--reference", str(ref), "--query", str(query), "--obs", "celltype", "-k", "10",
                     "--graph-vote", value, "--out", str(out), "--overwrite", "-q"])  # fmt: skip
        assert code == 0 and ad.read_h5ad(out).uns["cellmapper"]["labels"].get("graph_vote") == recorded
    assert (
        "unassigned" in set(result.obs["celltype_pred"].astype(str))
        or (result.obs["celltype_conf"] == 1).all()
    )


def test_stream_command(files):
    ref, query, tmp = files
    out = tmp / "streamed.zarr"
    assert main(["map", "--stream", "--chunk-size", "20", "--reference", str(ref), "--query", str(query),
                 "--use-rep", "X_joint", "--obs", "celltype", "--out", str(out), "-q"]) == 0  # fmt: skip
    assert ad.read_zarr(out).n_obs == 50


def test_example_command(capsys):
    assert main(["example", "-q"]) == 0
    line = capsys.readouterr().out
    assert "accuracy" in line and "niches" in line


def test_demo_without_display_says_so(monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["demo"]) == 2
    assert "No display" in capsys.readouterr().err


def test_precompile_compiles_the_kernels_and_says_where(monkeypatch, tmp_path, capsys):
    from napari_cellmapper.core import jit

    called = []
    monkeypatch.setattr(jit, "compile_kernels", lambda: called.append(1) or tmp_path / "compiled-x")
    assert main(["precompile"]) == 0
    assert called == [1] and f"cached in {tmp_path}" in capsys.readouterr().out
