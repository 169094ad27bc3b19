"""When the numba kernels run: policies, the faiss/scipy paths, and the background compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from napari_cellmapper.core import jit
from napari_cellmapper.core import sparse_product as sp
from napari_cellmapper.core.progress import run_steps
from napari_cellmapper.core.search.faiss_index import IVFIndex

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty kernel cache folder; no process is really started."""
    monkeypatch.setattr(jit, "cache_folder", lambda: tmp_path)
    started = []
    monkeypatch.setattr(jit.subprocess, "Popen", lambda command, **kw: started.append(command))
    return tmp_path, started


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), ("", "auto"), ("Never", "never"), ("always", "always")]
)
def test_policy_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(jit.POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(jit.POLICY_ENV, value)
    assert jit.policy() == expected


def test_unknown_policy_names_the_variable(monkeypatch):
    monkeypatch.setenv(jit.POLICY_ENV, "sometimes")
    with pytest.raises(ValueError, match="NAPARI_CELLMAPPER_JIT='sometimes'.*auto, always, never"):
        jit.policy()


def test_auto_starts_one_background_compile_until_the_marker_exists(monkeypatch, folder):
    tmp_path, started = folder
    monkeypatch.setenv(jit.POLICY_ENV, "auto")
    assert not jit.use_kernels() and not jit.use_kernels()  # the second finds the lock
    assert len(started) == 1
    command = started[0]
    assert command[1:3] == ["-m", "napari_cellmapper.core.jit"]
    assert command[command.index("--after") + 1] == str(os.getpid())
    lock = Path(command[command.index("--lock") + 1])
    assert lock.parent == tmp_path and lock.exists()
    jit.marker().write_text("")
    assert jit.use_kernels() and len(started) == 1


def test_a_stale_lock_is_taken_over(monkeypatch, folder):
    _, started = folder
    monkeypatch.setenv(jit.POLICY_ENV, "auto")
    lock = jit._lock()
    lock.write_text("")
    old = time.time() - jit.STALE_LOCK_S - 10
    os.utime(lock, (old, old))
    assert not jit.use_kernels() and len(started) == 1


@pytest.mark.parametrize("mode", ["never", "always"])
def test_never_and_always_start_nothing(monkeypatch, folder, mode):
    _, started = folder
    monkeypatch.setenv(jit.POLICY_ENV, mode)
    assert jit.use_kernels() is (mode == "always") and started == []


def test_an_unwritable_cache_folder_falls_back_quietly(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(jit, "cache_folder", lambda: blocker / "numba")  # cannot be created
    monkeypatch.setenv(jit.POLICY_ENV, "auto")
    assert not jit.use_kernels()


def test_ivf_search_without_kernels_gives_the_same_neighbours(monkeypatch):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(3000, 16)).astype(np.float32)
    query = rng.normal(size=(400, 16)).astype(np.float32)
    index = IVFIndex(reference, nlist=40)
    monkeypatch.setenv(jit.POLICY_ENV, "always")
    d_kernel, i_kernel = index.search_with(query, 10, 3)
    monkeypatch.setenv(jit.POLICY_ENV, "never")
    d_faiss, i_faiss = index.search_with(query, 10, 3)
    np.testing.assert_array_equal(np.sort(i_faiss, axis=1), np.sort(i_kernel, axis=1))
    np.testing.assert_allclose(d_faiss, d_kernel, rtol=1e-4, atol=1e-4)
    # fewer rows in the probed lists than k: the same missing entries
    d_kernel, i_kernel = index.search_with(query[:5], 200, 1)
    monkeypatch.setenv(jit.POLICY_ENV, "never")
    d_faiss, i_faiss = index.search_with(query[:5], 200, 1)
    np.testing.assert_array_equal(i_faiss < 0, i_kernel < 0)
    assert np.isinf(d_faiss[i_faiss < 0]).all() and i_faiss.dtype == np.int64
    # the faiss fallback is rebuilt after pickling (dask), never shipped
    import pickle

    clone = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(clone.search_with(query, 10, 3)[1], index.search_with(query, 10, 3)[1])


def test_product_without_kernels_is_scipys(monkeypatch):
    monkeypatch.setattr(sp, "SMALL_PRODUCT", 0)
    rng = np.random.default_rng(1)
    matrix = sparse.random(50, 80, density=0.2, random_state=rng, format="csr", dtype=np.float32)
    x = sparse.random(80, 30, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    monkeypatch.setenv(jit.POLICY_ENV, "never")
    assert not sp.uses_kernels(matrix.nnz, x) and sp.warm_up() is None
    out = run_steps(sp.iter_product(matrix, x, 16, "product"))
    monkeypatch.setenv(jit.POLICY_ENV, "always")
    assert sp.uses_kernels(matrix.nnz, x)
    expected = run_steps(sp.iter_product(matrix, x, 16, "product"))
    np.testing.assert_allclose(out.toarray(), expected.toarray(), rtol=1e-5)


_CHILD = textwrap.dedent(
    """
    import json, numpy as np
    from scipy import sparse
    from napari_cellmapper.core import jit, sparse_product as sp
    from napari_cellmapper.core.search import ivf_scan
    from napari_cellmapper.core.search.faiss_index import IVFIndex
    from napari_cellmapper.core.progress import run_steps
    rng = np.random.default_rng(0)
    index = IVFIndex(rng.normal(size=(2000, 8)).astype(np.float32), nlist=20)
    index.search(rng.normal(size=(300, 8)).astype(np.float32), 5)
    sp.SMALL_PRODUCT = 0
    m = sparse.random(100, 60, density=0.2, random_state=1, format="csr", dtype=np.float32)
    x = sparse.random(60, 40, density=0.3, random_state=2, format="csr", dtype=np.float32)
    run_steps(sp.iter_product(m, x, 32, "product"))
    kernels = [ivf_scan._scan, ivf_scan._nearest, sp._count, sp._fill]
    print(json.dumps({"ready": jit.kernels_ready(),
        "hits": [len(k.stats.cache_hits) for k in kernels],
        "misses": [len(k.stats.cache_misses) for k in kernels]}))
    """
)


def test_background_compile_fills_the_cache_that_the_next_run_loads(tmp_path):
    """The real thing, in fresh processes: the compiling process leaves the marker and no lock,
    and a later mapping under ``auto`` loads every kernel from the cache, compiling none."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(SRC), jit.POLICY_ENV: "auto"}
    lock = tmp_path / "compiling.lock"
    lock.write_text("")
    subprocess.run(
        [sys.executable, "-m", "napari_cellmapper.core.jit", "--lock", str(lock)], env=env, check=True
    )
    assert not lock.exists() and len(list(tmp_path.glob("compiled-*"))) == 1
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True, capture_output=True, text=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["ready"] and stats["misses"] == [0, 0, 0, 0] and all(stats["hits"])
