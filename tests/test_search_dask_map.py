"""The dask backend: query chunks on a two-process LocalCluster against a reference shipped once."""

from __future__ import annotations

import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from napari_cellmapper.core.progress import run_steps  # noqa: E402
from napari_cellmapper.core.search import dask_map as neighbors_dask  # noqa: E402
from napari_cellmapper.core.search.dask_map import iter_dask_search  # noqa: E402
from napari_cellmapper.core.search.neighbors import iter_search, search  # noqa: E402
from napari_cellmapper.core.validation import CellMapperInputError  # noqa: E402

K = 10
CHUNK = 300


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, shared by the module, closed afterwards."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(3000, 16))  # float64 on purpose: the backend converts
    query = rng.normal(size=(2500, 16))
    return query, reference


def _new_tokens(client, before: dict) -> dict[str, dict[str, int]]:
    after = client.run(neighbors_dask.worker_build_counts)
    return {
        worker: {tok: n for tok, n in counts.items() if tok not in before.get(worker, {})}
        for worker, counts in after.items()
    }


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_identical_to_single_process(client, data, metric):
    query, reference = data
    got = search(query, reference, K, metric=metric, backend="dask", client=client, chunk_size=CHUNK)
    want = search(query, reference, K, metric=metric, backend="faiss-exact", chunk_size=CHUNK)
    assert got.backend == "dask"
    assert got.metric == metric
    assert got.n_reference == reference.shape[0]
    assert got.indices.dtype == np.int64 and got.distances.dtype == np.float32
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.distances, want.distances)


def test_default_chunks_match_to_rounding(client, data):
    """Other chunk shapes change BLAS rounding only: same neighbours up to float32 near-ties."""
    query, reference = data
    got = search(query, reference, K, backend="dask", client=client)
    want = search(query, reference, K, backend="faiss-exact")
    np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5, atol=1e-5)
    differ = got.indices != want.indices
    assert differ.mean() < 1e-3
    np.testing.assert_allclose(got.distances[differ], want.distances[differ], rtol=1e-5, atol=1e-5)


def test_ivf_identical_and_calibrated_once(client, data):
    query, reference = data
    got = search(
        query, reference, K, backend="dask", client=client, chunk_size=CHUNK, index_backend="faiss-ivf"
    )
    want = search(query, reference, K, backend="faiss-ivf", chunk_size=CHUNK)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.distances, want.distances)
    fixed = search(
        query,
        reference,
        K,
        backend="dask",
        client=client,
        chunk_size=CHUNK,
        index_backend="faiss-ivf",
        nprobe=3,
        seed=1,
    )
    want = search(query, reference, K, backend="faiss-ivf", chunk_size=CHUNK, nprobe=3, seed=1)
    np.testing.assert_array_equal(fixed.indices, want.indices)
    np.testing.assert_array_equal(fixed.distances, want.distances)


def test_chunk_order_and_progress(client, data):
    _, reference = data
    rng = np.random.default_rng(3)
    perm = rng.permutation(reference.shape[0])[:1234]
    query = reference[perm]  # each query row is its own nearest reference row
    events = []
    got = search(query, reference, K, backend="dask", client=client, chunk_size=97, progress=events.append)
    np.testing.assert_array_equal(got.indices[:, 0], perm)
    np.testing.assert_array_equal(got.distances[:, 0], 0)
    assert np.all(np.diff(got.distances, axis=1) >= 0)
    n_chunks = -(-query.shape[0] // 97)
    assert len(events) == n_chunks + 1
    assert events[0].done == 0
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1].done == events[-1].total == query.shape[0]
    assert {e.stage for e in events} == {"neighbour search"}


def test_index_built_once_per_worker(client):
    rng = np.random.default_rng(11)
    reference = rng.normal(size=(800, 8)).astype(np.float32)
    query = rng.normal(size=(2000, 8)).astype(np.float32)
    before = client.run(neighbors_dask.worker_build_counts)
    first = search(query, reference, 5, backend="dask", client=client, chunk_size=50)  # 40 tasks
    second = search(query, reference, 5, backend="dask", client=client, chunk_size=64)
    np.testing.assert_array_equal(first.indices, second.indices)
    new = _new_tokens(client, before)
    tokens = {tok for counts in new.values() for tok in counts}
    assert len(tokens) == 1  # one reference, one token
    assert all(n == 1 for counts in new.values() for n in counts.values())
    assert sum(len(counts) for counts in new.values()) == 2  # both workers took tasks and built once


def test_default_client_is_used(client, data):
    query, reference = data
    got = search(query[:500], reference, K, backend="dask", chunk_size=CHUNK)  # client=None
    want = search(query[:500], reference, K, backend="dask", client=client, chunk_size=CHUNK)
    np.testing.assert_array_equal(got.indices, want.indices)


def test_temporary_cluster_is_closed(monkeypatch, data):
    """Without any client a LocalCluster is started for the call and closed afterwards."""
    query, reference = data
    made = []
    real = distributed.LocalCluster

    def local_cluster(**kwargs):
        assert kwargs["processes"] is True and kwargs["n_workers"] == 2
        kwargs["processes"] = False  # threads keep the test fast; the logic is the same
        cluster = real(**kwargs)
        made.append(cluster)
        return cluster

    def no_client():
        raise ValueError("no client")

    monkeypatch.setattr(distributed, "get_client", no_client)
    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    got = search(query[:400], reference, K, backend="dask", chunk_size=CHUNK)
    want = search(query[:400], reference, K, backend="faiss-exact", chunk_size=CHUNK)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert len(made) == 1
    assert made[0].status.name == "closed"


def test_close_part_way_cancels(client, data):
    query, reference = data
    steps = iter_search(query, reference, K, backend="dask", client=client, chunk_size=100)
    assert next(steps).done == 0
    next(steps)
    steps.close()  # no error; remaining tasks are cancelled
    assert run_steps(iter_search(query[:200], reference, K, backend="dask", client=client)).n_query == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "manhattan"}, "metric"),
        ({"index_backend": "hnsw"}, "index_backend"),
        ({"k": 0}, "n_neighbors"),
        ({"k": 10_000}, "larger than the reference"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"nprobe": 4}, "takes no options"),
        ({"index_backend": "faiss-ivf", "nlists": 4}, "Unknown option"),
        ({"query": np.zeros((5, 3))}, "dimensions"),
        ({"query": np.full((5, 16), np.nan)}, "NaN"),
        ({"query": np.zeros(16)}, "2-D"),
    ],
)
def test_bad_input(data, kwargs, match):
    query, reference = data
    args = {"query": query[:50], "reference": reference, "k": K, **kwargs}
    with pytest.raises(CellMapperInputError, match=match):
        run_steps(iter_dask_search(args.pop("query"), args.pop("reference"), args.pop("k"), **args))


def test_missing_dask_says_how_to_install(monkeypatch, data):
    query, reference = data
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(CellMapperInputError, match=r"pip install 'napari-cellmapper\[dask\]'"):
        search(query[:10], reference, K, backend="dask")


def test_numpy_integer_k_is_accepted(client, data):
    query, reference = data
    got = search(query[:200], reference, np.int32(K), backend="dask", client=client, chunk_size=CHUNK)
    assert got.indices.shape == (200, K)
