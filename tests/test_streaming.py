"""Streaming: chunked query in, one AnnData zarr out, equal to the in-memory mapping."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _core_fixtures import make_pair

from napari_cellmapper import CellMapper, CellMapperInputError
from napari_cellmapper.core.progress import Progress
from napari_cellmapper.core.streaming import iter_map_stream, iter_rep_chunks, map_stream


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
