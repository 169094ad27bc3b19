"""Shapes read in steps: the same elements as spatialdata's reader."""

from __future__ import annotations

import shutil
import warnings

import pytest

from napari_cellmapper.io import shapes as shapes_io
from napari_cellmapper.io.shapes import read_shapes, read_spatialdata

spatialdata = pytest.importorskip("spatialdata")


def _same(ours, theirs) -> None:
    from geopandas.testing import assert_geodataframe_equal
    from spatialdata.transformations import get_transformation

    assert_geodataframe_equal(ours, theirs)
    assert ours.attrs.keys() == theirs.attrs.keys()
    assert get_transformation(ours, get_all=True) == get_transformation(theirs, get_all=True)


@pytest.mark.parametrize("name", ["circles", "polygons"])
@pytest.mark.parametrize("step", [1, 2, 1000])
def test_read_shapes_equals_spatialdata(io_toy_path, io_toy_read, monkeypatch, name, step):
    monkeypatch.setattr(shapes_io, "STEP", step)  # one geometry per step, two, all at once
    ours = read_shapes(io_toy_path / "shapes" / name)
    _same(ours, io_toy_read.shapes[name])


def test_read_spatialdata_equals_read_zarr(io_toy_path, io_toy_read, monkeypatch):
    monkeypatch.setattr(shapes_io, "STEP", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = read_spatialdata(io_toy_path)
    assert sorted(sdata.shapes) == sorted(io_toy_read.shapes)
    for name in sdata.shapes:
        _same(sdata.shapes[name], io_toy_read.shapes[name])
    for group in ("images", "labels", "points", "tables"):
        assert sorted(getattr(sdata, group)) == sorted(getattr(io_toy_read, group))
    assert sdata.path == io_toy_read.path
    assert sdata.tables["t_circles"].obs.equals(io_toy_read.tables["t_circles"].obs)


def test_not_geoparquet_is_left_to_spatialdata(io_toy_path, tmp_path, monkeypatch):
    copy = tmp_path / "toy.zarr"
    shutil.copytree(io_toy_path, copy)
    (copy / "shapes" / "polygons" / "shapes.parquet").rename(copy / "shapes" / "polygons" / "elsewhere")
    assert read_shapes(copy / "shapes" / "polygons") is None
    assert read_shapes(copy / "shapes" / "circles") is not None
    calls = []
    real = spatialdata.read_zarr

    def counted(path, selection=None, **kwargs):
        calls.append(selection)
        return real(path, selection=("tables",))  # the whole store could not be read any more

    monkeypatch.setattr(spatialdata, "read_zarr", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_spatialdata(copy)
    assert calls == [None]  # the whole store read by spatialdata, as it would be without us


def test_selection_without_shapes_reads_no_shapes(io_toy_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = read_spatialdata(io_toy_path, selection=("tables",))
    assert not len(sdata.shapes) and "t_circles" in sdata.tables


def test_collector_paused_resumes_once_and_only_if_it_was_on():
    import gc
    import threading

    from napari_cellmapper.io.shapes import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: still paused after the inner one ends
            pass
        assert not gc.isenabled()
        inside = threading.Event()
        leave = threading.Event()

        def other() -> None:  # another thread's read ends first: the first one's keeps it paused
            with collector_paused():
                inside.set()
                leave.wait(5)

        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(5)
        leave.set()
        thread.join(5)
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():  # resumed after an error too
        raise RuntimeError("a broken store")
    assert gc.isenabled()
    gc.disable()  # paused by someone else before: left paused
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_read_spatialdata_pauses_the_collector(io_toy_path, monkeypatch):
    import gc

    seen = []
    real = shapes_io.read_shapes

    def spy(path):
        seen.append(gc.isenabled())
        return real(path)

    monkeypatch.setattr(shapes_io, "read_shapes", spy)
    read_spatialdata(io_toy_path)
    assert seen and not any(seen) and gc.isenabled()
