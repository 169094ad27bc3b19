"""Streaming: chunked query in, one AnnData zarr out, equal to the in-memory mapping."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _core_fixtures import make_pair

from napari_cellmapper import CellMapper, CellMapperInputError
from napari_cellmapper.core.progress import Progress
from napari_cellmapper.io.streaming import iter_map_stream, iter_rep_chunks, map_stream


def _chunks(query, size):
    for start in range(0, query.n_obs, size):
        sub = query[start : start + size]
        yield sub.obs_names, np.asarray(sub.obsm["X_joint"])


@pytest.fixture
def pair():
    return make_pair(n_query=95, n_ref=120, seed=3)


def test_stream_equals_in_memory(pair, tmp_path):
    query, reference = pair
    whole = query.copy()
    cmap = CellMapper(whole, reference).fit(
        "X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X", n_neighbors=10,
        backend="faiss-exact", progress=False,
    )  # fmt: skip
    out = map_stream(
        reference, _chunks(query, 40), tmp_path / "out.zarr", use_rep="X_joint", obs_keys="celltype",
        obsm_keys="X_umap", layer_key="X", n_neighbors=10, backend="faiss-exact",
        sigma=cmap.params["sigma"], progress=False,
    )  # fmt: skip
    result = ad.read_zarr(out)
    assert list(result.obs_names) == list(query.obs_names)
    assert list(result.obs["celltype_pred"].cat.categories) == [
        *reference.obs["celltype"].cat.categories,
        "unmapped",
    ]
    np.testing.assert_array_equal(
        result.obs["celltype_pred"].astype(str).to_numpy(), whole.obs["celltype_pred"].astype(str).to_numpy()
    )
    np.testing.assert_allclose(result.obs["celltype_conf"], whole.obs["celltype_conf"], atol=1e-5)
    np.testing.assert_allclose(
        result.obsm["celltype_proba"], whole.obsm["celltype_proba"].to_numpy(), atol=1e-5
    )
    np.testing.assert_allclose(result.obsm["X_umap_pred"], whole.obsm["X_umap_pred"], atol=1e-4)
    np.testing.assert_allclose(result.X.toarray(), cmap.query_imputed.X.toarray(), atol=1e-4)
    assert list(result.uns["celltype_pred_colors"])[:4] == list(reference.uns["celltype_colors"])
    assert result.uns["cellmapper"]["streamed"]


def test_stream_reads_chunks_from_disk(pair, tmp_path):
    query, reference = pair
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    chunks = list(iter_rep_chunks(path, "X_joint", chunk_size=30))
    assert [len(names) for names, _ in chunks] == [30, 30, 30, 5]
    np.testing.assert_array_equal(np.vstack([rep for _, rep in chunks]), query.obsm["X_joint"])
    assert list(pd.Index(np.concatenate([n for n, _ in chunks]))) == list(query.obs_names)
    out = map_stream(reference, iter(chunks), tmp_path / "o.zarr", use_rep="X_joint", obs_keys="celltype",
                     n_neighbors=5, progress=False)  # fmt: skip
    assert ad.read_zarr(out).n_obs == query.n_obs


def test_stream_progress_and_partial_output_removed_on_cancel(pair, tmp_path):
    query, reference = pair
    target = tmp_path / "out.zarr"
    steps = iter_map_stream(reference, _chunks(query, 20), target, use_rep="X_joint", obs_keys="celltype",
                            n_neighbors=5, n_query=query.n_obs)  # fmt: skip
    events = []
    for event in steps:
        events.append(event)
        if event.stage == "map query chunks":
            break
    steps.close()  # cancel after the first chunk
    assert isinstance(events[-1], Progress) and events[-1].done == 20
    assert not target.exists()
    assert not any(p.name.startswith(".out.zarr") for p in tmp_path.iterdir())


def test_stream_bad_input(pair, tmp_path):
    query, reference = pair
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(CellMapperInputError, match="exists"):
        map_stream(reference, _chunks(query, 50), tmp_path / "exists.zarr", use_rep="X_joint", progress=False)
    with pytest.raises(CellMapperInputError, match="hnoca"):
        map_stream(
            reference,
            _chunks(query, 50),
            tmp_path / "a.zarr",
            use_rep="X_joint",
            kernel="hnoca",
            progress=False,
        )
    with pytest.raises(CellMapperInputError, match="dimensions"):
        map_stream(
            reference,
            [(query.obs_names, np.zeros((query.n_obs, 3)))],
            tmp_path / "b.zarr",
            use_rep="X_joint",
            progress=False,
        )
    with pytest.raises(CellMapperInputError, match="empty"):
        map_stream(reference, [], tmp_path / "c.zarr", use_rep="X_joint", progress=False)
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "c.zarr").exists()


def _stream(pair, out, **kwargs):
    query, reference = pair
    return map_stream(
        reference, _chunks(query, 40), out, use_rep="X_joint", obs_keys="celltype", n_neighbors=5,
        backend="faiss-exact", progress=False, **kwargs,
    )  # fmt: skip


def test_overwrite_refuses_a_folder_that_is_not_a_zarr_store(pair, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(CellMapperInputError, match="not a zarr store"):
        _stream(pair, folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "years of work"


def test_overwrite_refuses_an_input(pair, tmp_path):
    query, _ = pair
    query_path = tmp_path / "query.zarr"
    query.write_zarr(query_path)
    before = sorted(p.name for p in query_path.rglob("*"))
    link = tmp_path / "alias.zarr"
    link.symlink_to(query_path)
    for out in (query_path, link, tmp_path / "." / "query.zarr"):
        with pytest.raises(CellMapperInputError, match="input of this run"):
            _stream(pair, out, overwrite=True, protect=[query_path])
    assert sorted(p.name for p in query_path.rglob("*")) == before
    assert "X_joint" in ad.read_zarr(query_path).obsm


def test_overwrite_replaces_an_old_output_and_leaves_no_staging(pair, tmp_path):
    out = tmp_path / "out.zarr"
    _stream(pair, out)
    _stream(pair, out, overwrite=True)
    assert ad.read_zarr(out).n_obs == pair[0].n_obs
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["out.zarr"]


def test_a_store_that_appears_during_the_run_is_not_replaced(pair, tmp_path):
    out = tmp_path / "out.zarr"
    query, reference = pair

    def chunks():
        yield from _chunks(query, 40)
        out.mkdir()  # another process creates the target while this run writes
        (out / "mine.txt").write_text("keep")

    with pytest.raises(CellMapperInputError, match="appeared"):
        map_stream(
            reference, chunks(), out, use_rep="X_joint", n_neighbors=5, backend="faiss-exact", progress=False
        )
    assert (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["out.zarr"]


def test_each_run_stages_in_its_own_folder_and_stale_staging_is_removed(pair, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out.zarr"
    query, reference = pair
    # a run killed mid-write: its staging and lock file stay behind, its lock is released
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    stale = tmp_path / f".out.zarr.cellmapper-tmp-{dead}-0123456789ab"
    (stale / "X").mkdir(parents=True)
    stale.with_name(stale.name + ".lock").touch()
    seen = []

    def chunks():
        for i, chunk in enumerate(_chunks(query, 40)):
            if i == 1:
                seen.append(sorted(p.name for p in tmp_path.iterdir() if p.is_dir()))
            yield chunk

    map_stream(
        reference, chunks(), out, use_rep="X_joint", n_neighbors=5, backend="faiss-exact", progress=False
    )
    assert not stale.exists()
    (staging,) = [name for name in seen[0] if name != "out.zarr"]
    assert staging.startswith(f".out.zarr.cellmapper-tmp-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["out.zarr"]


TWO_WRITERS = r"""
import sys, time
import anndata as ad, numpy as np
from napari_cellmapper.io.streaming import map_stream
ref, out = ad.read_h5ad(sys.argv[1]), sys.argv[2]
def chunks():
    for start in range(0, 90, 30):
        time.sleep(0.3)  # both runs are writing at the same time
        yield [f"q{i}" for i in range(start, start + 30)], np.asarray(ref.obsm["X_joint"][:30])
map_stream(ref, chunks(), out, use_rep="X_joint", n_neighbors=5, backend="faiss-exact", progress=False)
"""


def test_two_processes_to_the_same_new_out(pair, tmp_path):
    """Exactly one of two concurrent streams to one new --out wins; its store is complete."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, reference = pair
    reference.write_h5ad(tmp_path / "ref.h5ad")
    script = tmp_path / "writer.py"
    script.write_text(TWO_WRITERS)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out.zarr"
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "ignore", str(script), str(tmp_path / "ref.h5ad"), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    assert any("appeared" in err or "exists" in err for _, err in results), results
    result = ad.read_zarr(out)
    assert result.n_obs == 90 and list(result.obs_names) == [f"q{i}" for i in range(90)]
    assert (
        sorted(p.name for p in tmp_path.iterdir() if ".cellmapper" in p.name and not p.name.endswith(".lock"))
        == []
    )


def test_nan_in_the_reference_expression_is_refused_before_writing(pair, tmp_path):
    query, reference = pair
    reference.X.data[reference.X.indptr[3]] = np.nan  # one stored value of cell 3 (CSR)
    with pytest.raises(CellMapperInputError, match="NaN or inf"):
        _stream(pair, tmp_path / "out.zarr", layer_key="X")
    assert list(tmp_path.iterdir()) == []


def test_stream_accepts_numpy_integer_k(pair, tmp_path):
    query, reference = pair
    out = map_stream(
        reference, _chunks(query, 40), tmp_path / "out.zarr", use_rep="X_joint", obs_keys="celltype",
        n_neighbors=np.int64(5), backend="faiss-exact", progress=False,
    )  # fmt: skip
    assert ad.read_zarr(out).n_obs == query.n_obs


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_chunk_size_is_checked_when_called(pair, tmp_path, size):
    query, _ = pair
    query.write_h5ad(tmp_path / "q.h5ad")
    with pytest.raises(CellMapperInputError, match="chunk_size must be a positive integer"):
        iter_rep_chunks(tmp_path / "q.h5ad", "X_joint", size)
