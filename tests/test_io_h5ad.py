"""h5ad output: staged and renamed, full/read-only disks and concurrent writers as clear errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import namedtuple

import anndata as ad
import numpy as np
import pytest
from anndata import AnnData

from napari_cellmapper.core.validation import CellMapperInputError
from napari_cellmapper.io import h5ad
from napari_cellmapper.io.atomic import STAGING_MARK


@pytest.fixture
def adata():
    return AnnData(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32))


def _debris(folder):
    return [p.name for p in folder.iterdir() if STAGING_MARK in p.name]


def test_write_and_overwrite(adata, tmp_path):
    out = tmp_path / "out.h5ad"
    h5ad.write_h5ad_atomic(adata, out)
    with pytest.raises(CellMapperInputError, match="exists; pass --overwrite"):
        h5ad.write_h5ad_atomic(adata, out)
    h5ad.write_h5ad_atomic(adata[:10].copy(), out, overwrite=True)
    assert ad.read_h5ad(out).n_obs == 10 and _debris(tmp_path) == []


def test_a_folder_is_never_replaced(adata, tmp_path):
    (tmp_path / "out.h5ad").mkdir()
    (tmp_path / "out.h5ad" / "thesis.txt").write_text("keep")
    with pytest.raises(CellMapperInputError, match="not a file"):
        h5ad.write_h5ad_atomic(adata, tmp_path / "out.h5ad", overwrite=True)
    assert (tmp_path / "out.h5ad" / "thesis.txt").read_text() == "keep"


def test_full_disk_is_refused_before_writing(adata, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(h5ad.shutil, "disk_usage", lambda _: usage(1000, 1000, 10))
    monkeypatch.setattr(AnnData, "write_h5ad", lambda *a, **k: pytest.fail("written"))
    with pytest.raises(CellMapperInputError, match="Not enough disk space"):
        h5ad.write_h5ad_atomic(adata, tmp_path / "out.h5ad")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_while_writing(adata, tmp_path, monkeypatch, code):
    out = tmp_path / "out.h5ad"
    h5ad.write_h5ad_atomic(adata, out)
    before = out.read_bytes()

    def fail(self, path, **kwargs):
        open(path, "wb").write(b"half")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(AnnData, "write_h5ad", fail)
    with pytest.raises(CellMapperInputError, match="nothing was written"):
        h5ad.write_h5ad_atomic(adata, out, overwrite=True)
    assert out.read_bytes() == before and _debris(tmp_path) == []


def test_a_file_that_appears_meanwhile_is_not_replaced(adata, tmp_path, monkeypatch):
    out = tmp_path / "out.h5ad"
    original = AnnData.write_h5ad

    def write_then_someone_else(self, path, **kwargs):
        original(self, path, **kwargs)
        out.write_text("another run")

    monkeypatch.setattr(AnnData, "write_h5ad", write_then_someone_else)
    with pytest.raises(CellMapperInputError, match="appeared"):
        h5ad.write_h5ad_atomic(adata, out)
    assert out.read_text() == "another run" and _debris(tmp_path) == []


def test_stale_staging_of_a_killed_run_is_removed(adata, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".out.h5ad{STAGING_MARK}{dead.stdout.strip()}-0123456789ab"
    stale.write_bytes(b"x" * 1000)
    stale.with_name(stale.name + ".lock").touch()
    h5ad.write_h5ad_atomic(adata, tmp_path / "out.h5ad")
    assert _debris(tmp_path) == []


@pytest.mark.parametrize("kind", [OSError, RuntimeError])
def test_hdf5_disk_errors_without_errno_are_one_clear_error(adata, tmp_path, monkeypatch, capsys, kind):
    """h5py/anndata re-raise a full disk without ``errno`` (it is only in HDF5's text) and print
    tracebacks of datasets they cannot close: one clear error, nothing else on stderr."""

    def fail(self, path, **kwargs):
        open(path, "wb").write(b"half")
        sys.stderr.write("Traceback (most recent call last):\n  File 'h5py/_objects.pyx'\nOSError: ...\n")
        raise kind(
            "Can't synchronously write data (file write failed: time = now, errno = 28, "
            "error message = 'No space left on device')\n\nAbove error raised while writing key 'X'"
        )

    monkeypatch.setattr(AnnData, "write_h5ad", fail)
    with pytest.raises(CellMapperInputError, match="No space left on device.*nothing was written"):
        h5ad.write_h5ad_atomic(adata, tmp_path / "out.h5ad")
    assert capsys.readouterr().err == "" and _debris(tmp_path) == []


def test_a_successful_write_keeps_its_messages(adata, tmp_path, monkeypatch, capsys):
    original = AnnData.write_h5ad

    def chatty(self, path, **kwargs):
        sys.stderr.write("a warning\n")
        return original(self, path, **kwargs)

    monkeypatch.setattr(AnnData, "write_h5ad", chatty)
    h5ad.write_h5ad_atomic(adata, tmp_path / "out.h5ad")
    assert capsys.readouterr().err == "a warning\n"
