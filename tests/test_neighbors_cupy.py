"""GPU brute-force search: the shared tile/select/merge logic on the CPU, and cupy on a GPU."""

from __future__ import annotations

import contextlib
import sys
import types

import faiss
import numpy as np
import pytest

from napari_cellmapper.core import neighbors_cupy
from napari_cellmapper.core.neighbors import gpu_available, prepare_rep, search
from napari_cellmapper.core.neighbors_cupy import _tiled_topk_numpy
from napari_cellmapper.core.validation import CellMapperInputError

needs_gpu = pytest.mark.skipif(
    not gpu_available(),
    reason="needs an NVIDIA GPU with cupy (napari_cellmapper.core.neighbors.gpu_available() is False)",
)


def _exact64(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """All squared distances in float64 (ground truth for near-ties)."""
    q = query.astype(np.float64)
    r = reference.astype(np.float64)
    return (q * q).sum(1)[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :]


def assert_matches_faiss(d2, idx, query, reference, k, *, tol=1e-4):
    """Same neighbours as faiss flat search, allowing float32 near-ties to swap.

    Distances close to faiss'; every returned index really is at the returned distance; the
    returned set is a valid k-NN set (no reference row strictly closer than the k-th by > tol
    was missed); and indices equal faiss' wherever the distance is not tied within ``tol``.
    """
    query = np.ascontiguousarray(query, np.float32)
    reference = np.ascontiguousarray(reference, np.float32)
    want_d, want_i = faiss.knn(query, reference, k)
    assert d2.shape == idx.shape == (query.shape[0], k)
    assert d2.dtype == np.float32 and idx.dtype == np.int64
    scale = tol * max(1.0, float(np.abs(want_d).max()))
    np.testing.assert_allclose(d2, want_d, rtol=0, atol=scale)
    assert np.all(np.diff(d2, axis=1) >= 0)
    exact = _exact64(query, reference)
    rows = np.arange(query.shape[0])[:, None]
    np.testing.assert_allclose(exact[rows, idx], d2, rtol=0, atol=scale)
    kth = np.sort(exact, axis=1)[:, k - 1]
    assert np.all(exact[rows, idx] <= kth[:, None] + scale)
    assert all(len(set(row)) == k for row in idx)
    edge = np.full((d2.shape[0], 1), np.inf)
    gaps = np.diff(np.concatenate([-edge, d2, edge], axis=1), axis=1)
    isolated = (gaps[:, :-1] > scale) & (gaps[:, 1:] > scale)
    np.testing.assert_array_equal(idx[isolated], want_i[isolated])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1500, 12)).astype(np.float32)
    query = rng.normal(size=(700, 12)).astype(np.float32)
    return query, reference


@pytest.mark.parametrize(
    ("k", "tile"),
    [(15, 97), (15, (64, 1500)), (15, (700, 256)), (30, 16), (1, 128), (7, 10_000)],
)
def test_tiled_numpy_matches_faiss(data, k, tile):
    query, reference = data
    d2, idx = _tiled_topk_numpy(query, reference, k, tile)
    assert_matches_faiss(d2, idx, query, reference, k)


def test_tiled_numpy_cosine(data):
    query, reference = data
    q, r = prepare_rep(query, "cosine"), prepare_rep(reference, "cosine")
    d2, idx = _tiled_topk_numpy(q, r, 20, 113)
    assert_matches_faiss(d2, idx, q, r, 20)
    assert d2.min() >= 0 and d2.max() <= 4 + 1e-5


def test_ties_resolve_to_lower_reference_rows():
    """Exact ties (integer grid, duplicated rows) across and within tiles: (distance, index) order."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, size=(60, 4)).astype(np.float32)
    reference = np.concatenate([base, base, base])  # every row three times, in different tiles
    query = rng.integers(0, 3, size=(50, 4)).astype(np.float32)
    for tile in (7, 64, 500):
        d2, idx = _tiled_topk_numpy(query, reference, 12, tile)
        exact = _exact64(query, reference)
        columns = np.broadcast_to(np.arange(reference.shape[0]), exact.shape)
        order = np.lexsort((columns, exact), axis=1)[:, :12]
        np.testing.assert_array_equal(idx, order)
        np.testing.assert_array_equal(d2, exact[np.arange(50)[:, None], order].astype(np.float32))


def test_self_search_and_clamp(data):
    _, reference = data
    d2, idx = _tiled_topk_numpy(reference, reference, 5, 200)
    np.testing.assert_array_equal(idx[:, 0], np.arange(reference.shape[0]))
    assert d2.min() >= 0  # cancellation can make |q|^2 - 2 q.r + |r|^2 slightly negative: clamped
    assert np.all(d2[:, 0] < 1e-4)


def test_k_larger_than_reference_is_padded_like_faiss(data):
    query, reference = data
    d2, idx = _tiled_topk_numpy(query[:20], reference[:6], 9, 4)
    want_d, want_i = faiss.knn(query[:20], reference[:6], 9)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(idx[:, 6:], -1)
    assert np.all(d2[:, 6:] >= 1e37) and np.all(want_d[:, 6:] >= 1e37)
    np.testing.assert_allclose(d2[:, :6], want_d[:, :6], atol=1e-4)


def test_select_uses_threshold_and_compaction(data):
    """k equal to the tile width, and k one less: both branches of the selection."""
    query, reference = data
    for k in (50, 49):
        d2, idx = _tiled_topk_numpy(query[:40], reference[:200], k, (40, 50))
        assert_matches_faiss(d2, idx, query[:40], reference[:200], k)


def test_module_imports_without_cupy_and_says_how_to_install(monkeypatch, data):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(CellMapperInputError, match="gpu"):
        neighbors_cupy.CupyIndex(data[1])


@pytest.mark.parametrize(
    "bad", [{"dtype": "float16"}, {"tile_size": 0}, {"tile_size": 2.5}, {"select": "bitonic"}]
)
def test_bad_options(data, bad):
    with pytest.raises(CellMapperInputError):
        neighbors_cupy.CupyIndex(data[1], **bad)


# --------------------------------------------------------------------------- CupyIndex glue on the CPU


class _FakeDevice(contextlib.nullcontext):
    def __init__(self, device: int | None = None) -> None:
        super().__init__()
        self.id = device or 0


class _FakeCupy(types.ModuleType):
    """A numpy-backed stand-in for cupy: enough to run CupyIndex on the CPU.

    The two elementwise kernels are emulated from their names, the compaction one with a random
    "atomic" order per call; ``argsort`` refuses ``kind=`` like cupy's.
    """

    def __init__(self, free_bytes: int) -> None:
        super().__init__("cupy")
        self.rng = np.random.default_rng(0)
        self.launches: dict[str, int] = {}
        self.compile_error: Exception | None = None
        self.cuda = types.SimpleNamespace(
            Device=_FakeDevice,
            runtime=types.SimpleNamespace(memGetInfo=lambda: (free_bytes, 2 * free_bytes)),
        )

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.asarray(a)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")

    @staticmethod
    def get_default_memory_pool():
        return types.SimpleNamespace(free_bytes=lambda: 0)

    def RawModule(self, code, options=()):  # noqa: N802
        """Emulates the two fused kernels from their names, checking grid and argument layout."""
        fake = self
        (kmax,) = [int(o.split("=")[1]) for o in options if o.startswith("-DKMAX=")]
        assert "cellmapper_knn_scan" in code and "cellmapper_knn_merge" in code

        def top(keys, idx):  # k smallest by (key, position), like the insertion in the kernels
            keys = np.where(idx < 0, np.inf, keys)
            order = np.argsort(keys, axis=1, kind="stable")[:, :kmax]
            d, i = np.take_along_axis(keys, order, 1), np.take_along_axis(idx, order, 1)
            i[~np.isfinite(d)] = -1
            pad = kmax - d.shape[1]
            widths = ((0, 0), (0, pad))
            return np.pad(d, widths, constant_values=np.inf), np.pad(i, widths, constant_values=-1)

        def scan(grid, block, args):
            ip, ref_sq, m, n, seg_len, r0, out_d, out_i = args
            assert ip.shape == (n, m) and ip.flags.c_contiguous and grid[0] * block[0] >= m
            assert out_d.shape == out_i.shape == (m, grid[1] * kmax) and out_i.dtype == np.int64
            for s in range(grid[1]):
                j = np.arange(s * seg_len, min((s + 1) * seg_len, n))
                keys = ref_sq[j][None, :] - np.float32(2) * ip[j].T
                d, i = top(keys, np.broadcast_to(r0 + j, keys.shape))
                out_d[:, s * kmax : (s + 1) * kmax], out_i[:, s * kmax : (s + 1) * kmax] = d, i
            fake.launches["scan"] = fake.launches.get("scan", 0) + 1

        def merge(grid, block, args):
            best_d, best_i, cand_d, cand_i, m, n_best, n_cand, out_d, out_i = args
            assert best_d.shape == (m, n_best) and cand_d.shape == (m, n_cand) and grid[0] * block[0] >= m
            keys, idx = np.concatenate([best_d, cand_d], 1), np.concatenate([best_i, cand_i], 1)
            out_d[...], out_i[...] = top(keys, idx)
            fake.launches["merge"] = fake.launches.get("merge", 0) + 1

        def get_function(name):
            if fake.compile_error is not None:
                raise fake.compile_error
            return {"cellmapper_knn_scan": scan, "cellmapper_knn_merge": merge}[name]

        return types.SimpleNamespace(get_function=get_function)

    def ElementwiseKernel(self, in_params, out_params, operation, name):  # noqa: N802
        fake = self

        def kernel(*args):
            fake.launches[name] = fake.launches.get(name, 0) + 1
            if name == "cellmapper_knn_keys":
                ref_sq, n_cols, x = args
                assert x.flags.c_contiguous and x.shape[1] == n_cols
                x[...] = ref_sq[None, :] - np.float32(2) * x
                return
            assert name == "cellmapper_knn_compact"
            key, tau, n_cols, k, lt_idx, lt_cnt, eq_idx, eq_cnt = args
            lists = ((key < tau[:, None], lt_idx, lt_cnt), (key == tau[:, None], eq_idx, eq_cnt))
            for mask, idx, cnt in lists:
                order = np.argsort(np.where(mask, fake.rng.random(key.shape), np.inf), axis=1)[:, :k]
                n = mask.sum(axis=1)
                slot = np.arange(order.shape[1])[None, :] < np.minimum(n, k)[:, None]
                idx[:, : order.shape[1]][slot] = order[slot]
                cnt += n.astype(np.int32)

        return kernel


@pytest.fixture
def fake_cupy(monkeypatch):
    def install(free_bytes: int = 1_000_000) -> _FakeCupy:
        fake = _FakeCupy(free_bytes)
        monkeypatch.setitem(sys.modules, "cupy", fake)
        neighbors_cupy._cupy_kernels.cache_clear()
        neighbors_cupy._fused_kernels.cache_clear()
        return fake

    yield install
    neighbors_cupy._cupy_kernels.cache_clear()
    neighbors_cupy._fused_kernels.cache_clear()


@pytest.mark.parametrize("select", ["threshold", "fused"])
@pytest.mark.parametrize("tile_size", [None, 64, 5000])
def test_cupy_index_glue_on_fake_cupy(fake_cupy, data, tile_size, select):
    fake = fake_cupy()
    query, reference = data
    index = neighbors_cupy.CupyIndex(reference, tile_size=tile_size, select=select)
    assert index.backend == "cupy"
    d2, idx = index.search(query, 15)
    assert index.last_select == select
    assert type(d2) is np.ndarray and type(idx) is np.ndarray
    assert_matches_faiss(d2, idx, query, reference, 15)
    tq, tr = index.last_tiles
    n_pairs = -(-query.shape[0] // tq) * -(-reference.shape[0] // tr)
    launches = fake.launches.get("cellmapper_knn_keys" if select == "threshold" else "scan")
    assert launches == n_pairs
    if tile_size is None:  # 1 MB "free": the 1024 x 1024 floor, so the reference is split
        assert tq == query.shape[0] and tr < reference.shape[0]


@pytest.mark.parametrize("select", ["threshold", "fused"])
def test_cupy_index_ties_on_fake_cupy(fake_cupy, select):
    """Random atomic order in the compaction still gives (distance, index) order on exact ties."""
    fake_cupy()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, size=(60, 4)).astype(np.float32)
    reference = np.concatenate([base, base, base])
    query = rng.integers(0, 3, size=(50, 4)).astype(np.float32)
    d2, idx = neighbors_cupy.CupyIndex(reference, tile_size=64, select=select).search(query, 12)
    want_d, want_i = _tiled_topk_numpy(query, reference, 12, 64)
    np.testing.assert_array_equal(d2, want_d)
    if select == "fused":  # no atomics: fully deterministic, ties to the lower reference row
        np.testing.assert_array_equal(idx, want_i)
    exact = _exact64(query, reference)
    np.testing.assert_allclose(exact[np.arange(50)[:, None], idx], d2, atol=1e-5)
    # among exactly tied candidates at the k-th place, any may be kept; below it, index order
    assert np.all(np.diff(d2, axis=1) >= 0)


def test_fused_compile_failure_falls_back(fake_cupy, data):
    fake = fake_cupy()
    fake.compile_error = RuntimeError("nvrtc: boom")
    query, reference = data
    index = neighbors_cupy.CupyIndex(reference)
    with pytest.warns(RuntimeWarning, match="threshold selection"):
        d2, idx = index.search(query[:50], 5)
    assert index.last_select == "threshold"
    assert_matches_faiss(d2, idx, query[:50], reference, 5)
    with pytest.raises(RuntimeError, match="boom"):
        neighbors_cupy.CupyIndex(reference, select="fused").search(query[:50], 5)
    with pytest.raises(CellMapperInputError, match="k <="):
        neighbors_cupy.CupyIndex(reference, select="fused").search(query[:5], neighbors_cupy.FUSED_MAX_K + 1)
    big = neighbors_cupy.CupyIndex(reference)  # auto: large k uses the threshold path
    fake.compile_error = None
    big.search(query[:5], neighbors_cupy.FUSED_MAX_K + 1)
    assert big.last_select == "threshold"


def test_build_index_and_search_through_neighbors(fake_cupy, data, monkeypatch):
    fake_cupy()
    from napari_cellmapper.core import neighbors

    monkeypatch.setattr(neighbors, "gpu_available", lambda: True)
    query, reference = data
    got = neighbors.search(query, reference, 10, backend="cupy", chunk_size=250, tile_size=200)
    want = neighbors.search(query, reference, 10, backend="faiss-exact")
    assert got.backend == "cupy"
    np.testing.assert_allclose(got.distances, want.distances, atol=1e-3)
    assert (got.indices == want.indices).mean() > 0.999


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("select", ["fused", "threshold"])
@pytest.mark.parametrize("tile_size", [None, 97, 1000])
def test_cupy_matches_faiss(data, tile_size, select):
    query, reference = data
    index = neighbors_cupy.CupyIndex(reference, tile_size=tile_size, select=select)
    d2, idx = index.search(query, 15)
    assert isinstance(d2, np.ndarray) and isinstance(idx, np.ndarray)
    assert_matches_faiss(d2, idx, query, reference, 15)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("select", ["fused", "threshold"])
def test_cupy_same_as_numpy_path(data, select):
    """The GPU and the CPU run the same tiling/selection/merge: same neighbours."""
    query, reference = data
    d2, idx = neighbors_cupy.CupyIndex(reference, tile_size=128, select=select).search(query, 10)
    cd2, cidx = _tiled_topk_numpy(query, reference, 10, 128)
    np.testing.assert_allclose(d2, cd2, atol=1e-4)
    assert (idx == cidx).mean() > 0.999


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("select", ["fused", "threshold"])
def test_cupy_larger_and_cosine(select):
    rng = np.random.default_rng(5)
    reference = prepare_rep(rng.normal(size=(60_000, 50)), "cosine")
    query = prepare_rep(rng.normal(size=(5_000, 50)), "cosine")
    index = neighbors_cupy.CupyIndex(reference, select=select)
    d2, idx = index.search(query, 30)
    assert index.last_select == select
    want_d, want_i = faiss.knn(query, reference, 30)
    np.testing.assert_allclose(d2, want_d, atol=1e-4)
    assert (idx == want_i).mean() > 0.999


@pytest.mark.gpu
@needs_gpu
def test_search_backend_cupy(data):
    query, reference = data
    got = search(query, reference, 10, backend="cupy", chunk_size=300)
    want = search(query, reference, 10, backend="faiss-exact")
    assert got.backend == "cupy"
    np.testing.assert_allclose(got.distances, want.distances, atol=1e-3)
    assert (got.indices == want.indices).mean() > 0.999
