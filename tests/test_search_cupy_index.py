"""GPU brute-force search: the shared tile/select/merge logic on the CPU, and cupy on a GPU."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
from _fake_cupy import FAKE_MODULES, FakeCupy, install_fake_cupy

from napari_cellmapper.core.search import cupy_index as neighbors_cupy
from napari_cellmapper.core.search.cupy_index import _tiled_topk_numpy
from napari_cellmapper.core.search.neighbors import gpu_available, prepare_rep, search
from napari_cellmapper.core.validation import CellMapperInputError

needs_gpu = pytest.mark.skipif(
    not gpu_available(),
    reason="needs an NVIDIA GPU with cupy (napari_cellmapper.core.search.neighbors.gpu_available() is False)",
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


@pytest.fixture
def fake_cupy(monkeypatch):
    def install(free_bytes: int = 1_000_000) -> FakeCupy:
        for name in FAKE_MODULES:  # records the real state, restored afterwards
            monkeypatch.setitem(sys.modules, name, None)
        return install_fake_cupy(free_bytes)

    yield install
    neighbors_cupy._cupy_kernels.cache_clear()
    neighbors_cupy._fused_kernels.cache_clear()


@pytest.mark.parametrize("select", ["threshold", "fused", "warp"])
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
    kernel = {"threshold": "cellmapper_knn_keys", "fused": "scan", "warp": "warp"}[select]
    launches = fake.launches.get(kernel)
    assert launches == n_pairs
    if tile_size is None:  # 1 MB "free": the 1024 x 1024 floor, so the reference is split
        assert tq == query.shape[0] and tr < reference.shape[0]


@pytest.mark.parametrize("select", ["threshold", "fused", "warp"])
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
    if select != "threshold":  # no atomics: fully deterministic, ties to the lower reference row
        np.testing.assert_array_equal(idx, want_i)
    exact = _exact64(query, reference)
    np.testing.assert_allclose(exact[np.arange(50)[:, None], idx], d2, atol=1e-5)
    # among exactly tied candidates at the k-th place, any may be kept; below it, index order
    assert np.all(np.diff(d2, axis=1) >= 0)


def test_warp_segments_merge_with_the_running_best(fake_cupy, data, monkeypatch):
    """Few query rows: each warp scans one segment from empty, and one merge joins the segments."""
    fake = fake_cupy()
    monkeypatch.setattr(neighbors_cupy, "_WARP_MIN_SEGMENT", 100)
    query, reference = data
    index = neighbors_cupy.CupyIndex(reference, tile_size=500, select="warp")
    d2, idx = index.search(query[:40], 20)
    assert neighbors_cupy._warp_segments(40, 500) == 5
    assert fake.launches["warp"] == 3 and fake.launches["merge"] == 3  # 3 reference tiles
    assert_matches_faiss(d2, idx, query[:40], reference, 20)


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
    with pytest.raises(CellMapperInputError, match="k <= 32"):
        neighbors_cupy.CupyIndex(reference, select="warp").search(query[:5], neighbors_cupy.WARP_MAX_K + 1)
    big = neighbors_cupy.CupyIndex(reference)  # auto: large k uses the threshold path
    fake.compile_error = None
    big.search(query[:5], neighbors_cupy.FUSED_MAX_K + 1)
    assert big.last_select == "threshold"


def test_build_index_and_search_through_neighbors(fake_cupy, data, monkeypatch):
    fake_cupy()
    from napari_cellmapper.core.search import neighbors

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
@pytest.mark.parametrize("select", ["warp", "fused", "threshold"])
@pytest.mark.parametrize("tile_size", [None, 97, 1000])
def test_cupy_matches_faiss(data, tile_size, select):
    query, reference = data
    index = neighbors_cupy.CupyIndex(reference, tile_size=tile_size, select=select)
    d2, idx = index.search(query, 15)
    assert isinstance(d2, np.ndarray) and isinstance(idx, np.ndarray)
    assert_matches_faiss(d2, idx, query, reference, 15)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("select", ["warp", "fused", "threshold"])
def test_cupy_same_as_numpy_path(data, select):
    """The GPU and the CPU run the same tiling/selection/merge: same neighbours."""
    query, reference = data
    d2, idx = neighbors_cupy.CupyIndex(reference, tile_size=128, select=select).search(query, 10)
    cd2, cidx = _tiled_topk_numpy(query, reference, 10, 128)
    np.testing.assert_allclose(d2, cd2, atol=1e-4)
    assert (idx == cidx).mean() > 0.999


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("select", ["warp", "fused", "threshold"])
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


# --------------------------------------------------------------------------- the GPU machine's environment

#: what the GPU machine lacks (issue 12): no GUI stack, no spatialdata, and no faiss or dask either
_ABSENT_ON_GPU_MACHINE = (
    "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui",
    "spatialdata", "faiss", "dask", "distributed",
)  # fmt: skip

_HEADLESS_SCRIPT = """
import json, sys

ABSENT = set({absent!r})
for name in ABSENT:  # as if not installed: import raises ModuleNotFoundError, find_spec gives None
    sys.modules[name] = None
sys.path.insert(0, {tests!r})
from _fake_cupy import install_fake_cupy
from _core_fixtures import make_pair

fake = install_fake_cupy(free_bytes=200_000)
from napari_cellmapper import CellMapper

query, reference = make_pair(n_query=300, n_ref=900, n_genes=40, dim=8, seed=3)
cmap = CellMapper(query, reference).fit(
    use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X", progress=False,
    tile_size=128,
)
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.partition(".")[0] in ABSENT)
print(json.dumps({{
    "loaded": loaded,
    "backend": query.uns["cellmapper"]["backend"],
    "requested": query.uns["cellmapper"]["backend_requested"],
    "kernel_launches": fake.launches,
    "pred": query.obs["celltype_pred"].astype(str).tolist(),
    "conf": query.obs["celltype_conf"].tolist(),
    "umap": query.obsm["X_umap_pred"].tolist(),
    "imputed_sum": float(cmap.query_imputed.X.sum()),
    "transfers_on_device": cmap._device_mapping is not None,
}}))
"""


def test_core_maps_through_cupy_path_without_gui_spatialdata_or_faiss():
    """The GPU machine has no napari, Qt, spatialdata, faiss or dask: the core still maps there.

    A subprocess makes those packages unimportable, puts a numpy-backed cupy in place (the real
    backend code runs: tiling, the fused kernels' launch layout, merge, transfers), and maps with
    ``backend="auto"``, which must pick the GPU. The result equals the exact CPU search's.
    """
    import json
    import os
    import subprocess
    from pathlib import Path

    from _core_fixtures import make_pair

    from napari_cellmapper import CellMapper

    tests = str(Path(__file__).resolve().parent)
    script = _HEADLESS_SCRIPT.format(absent=_ABSENT_ON_GPU_MACHINE, tests=tests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tests).parent / "src"), tests])}
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    assert got["backend"] == "cupy" and got["requested"] == "auto"
    assert got["transfers_on_device"]  # labels, UMAP and expression as device products
    # 300 x 900 in 128-row tiles (3 x 8), plus the reference's own graph for the labels' graph
    # vote (8 x 8), plus the confidence calibration's search of a sample of the reference (all 900
    # labelled cells here) among the other reference cells (8 x 8): one warp-kernel launch per
    # tile pair (k <= 32), each starting from the running best, no merge
    from napari_cellmapper.core import calibration

    sample_tiles = -(-min(calibration.SAMPLE, 900) // 128)
    assert got["kernel_launches"]["warp"] == 3 * 8 + 8 * 8 + sample_tiles * 8
    assert "merge" not in got["kernel_launches"]

    query, reference = make_pair(n_query=300, n_ref=900, n_genes=40, dim=8, seed=3)
    cmap = CellMapper(query, reference).fit(
        use_rep="X_joint", obs_keys="celltype", obsm_keys="X_umap", layer_key="X",
        backend="faiss-exact", progress=False,
    )  # fmt: skip
    assert got["pred"] == query.obs["celltype_pred"].astype(str).tolist()
    np.testing.assert_allclose(got["conf"], query.obs["celltype_conf"], atol=1e-5)
    np.testing.assert_allclose(got["umap"], query.obsm["X_umap_pred"], atol=1e-4)
    assert got["imputed_sum"] == pytest.approx(float(cmap.query_imputed.X.sum()), rel=1e-5)


@pytest.mark.parametrize("devices", [0, "driver error"])
def test_auto_uses_the_gpu_only_when_cupy_finds_a_device(monkeypatch, devices):
    """cupy installed but no usable device (none, or the driver fails): auto stays on the CPU."""
    from napari_cellmapper.core.search import neighbors

    for name in FAKE_MODULES:  # records the real state, restored afterwards
        monkeypatch.setitem(sys.modules, name, None)
    fake = install_fake_cupy(n_devices=0)
    if devices == "driver error":

        def no_driver():
            raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

        fake.cuda.runtime.getDeviceCount = no_driver
    neighbors.gpu_available.cache_clear()
    try:
        assert neighbors.resolve_backend("auto", 100, 100) == "faiss-exact"
        with pytest.raises(CellMapperInputError, match="needs an NVIDIA GPU"):
            neighbors.resolve_backend("cupy", 100, 100)
        fake.cuda.runtime.getDeviceCount = lambda: 1
        neighbors.gpu_available.cache_clear()
        assert neighbors.resolve_backend("auto", 100, 100) == "cupy"
        big = int(neighbors.AUTO_GPU_EXACT_MAX_PAIRS**0.5) + 1
        assert neighbors.resolve_backend("auto", big, big) == "cupy-ivf"  # the inverted file, measured
    finally:
        neighbors.gpu_available.cache_clear()
