"""A numpy-backed stand-in for cupy, to run the GPU backend's code on the CPU (tests only).

``install_fake_cupy()`` puts it in ``sys.modules["cupy"]``; the CUDA kernels of
:mod:`napari_cellmapper.core.search.cupy_index` are emulated from their names.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np


class FakeDevice(contextlib.nullcontext):
    def __init__(self, device: int | None = None) -> None:
        super().__init__()
        self.id = device or 0


class FakeCupy(types.ModuleType):
    """A numpy-backed stand-in for cupy: enough to run CupyIndex on the CPU.

    The two elementwise kernels are emulated from their names, the compaction one with a random
    "atomic" order per call; ``argsort`` refuses ``kind=`` like cupy's.
    """

    def __init__(self, free_bytes: int, n_devices: int = 1) -> None:
        super().__init__("cupy")
        self.rng = np.random.default_rng(0)
        self.launches: dict[str, int] = {}
        self.compile_error: Exception | None = None
        self.cuda = types.SimpleNamespace(
            Device=FakeDevice,
            runtime=types.SimpleNamespace(
                memGetInfo=lambda: (free_bytes, 2 * free_bytes), getDeviceCount=lambda: n_devices
            ),
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
        """Emulates the raw kernels from their names, checking grid and argument layout."""
        fake = self
        (kmax,) = [int(o.split("=")[1]) for o in options if o.startswith("-DKMAX=")]
        assert all(f"cellmapper_knn_{name}(" in code for name in ("scan", "merge", "warp"))

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

        def warp(grid, block, args):
            ip, ref_sq, m, n, seg_len, r0, init_d, init_i, out_d, out_i = args
            assert kmax <= 32 and ip.shape == (m, n) and ip.flags.c_contiguous
            assert block[0] % 32 == 0 and grid[0] * block[0] >= 32 * m
            assert init_d.shape == init_i.shape == (m, kmax) and init_i.dtype == np.int64
            assert out_d.shape == out_i.shape == (m, grid[1] * kmax) and out_i.dtype == np.int64
            for s in range(grid[1]):
                j = np.arange(s * seg_len, min((s + 1) * seg_len, n))
                keys = np.concatenate([init_d, ref_sq[j][None, :] - np.float32(2) * ip[:, j]], 1)
                idx = np.concatenate([init_i, np.broadcast_to(r0 + j, (m, j.size))], 1)
                out_d[:, s * kmax : (s + 1) * kmax], out_i[:, s * kmax : (s + 1) * kmax] = top(keys, idx)
            fake.launches["warp"] = fake.launches.get("warp", 0) + 1

        def get_function(name):
            if fake.compile_error is not None:
                raise fake.compile_error
            return {"scan": scan, "merge": merge, "warp": warp}[name.removeprefix("cellmapper_knn_")]

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


#: the modules :func:`install_fake_cupy` puts in ``sys.modules`` (callers record and restore them)
FAKE_MODULES = ("cupy", "cupyx", "cupyx.scipy", "cupyx.scipy.sparse")


def _fake_cupyx() -> dict[str, types.ModuleType]:
    """``cupyx.scipy.sparse`` on the host: scipy's CSR matrices stand in for cuSPARSE's."""
    from scipy import sparse

    device_sparse = types.ModuleType("cupyx.scipy.sparse")
    device_sparse.csr_matrix = sparse.csr_matrix
    device_sparse.issparse = sparse.issparse
    scipy_ns = types.ModuleType("cupyx.scipy")
    scipy_ns.sparse = device_sparse
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy_ns
    return {"cupyx": cupyx, "cupyx.scipy": scipy_ns, "cupyx.scipy.sparse": device_sparse}


def install_fake_cupy(free_bytes: int = 1_000_000, n_devices: int = 1) -> FakeCupy:
    """Put a fresh :class:`FakeCupy` (and ``cupyx``) in ``sys.modules`` and clear kernel caches.

    Callers record and restore :data:`FAKE_MODULES` (e.g. ``monkeypatch.setitem(..., None)`` first).
    """
    from napari_cellmapper.core.search import cupy_index as neighbors_cupy

    fake = FakeCupy(free_bytes, n_devices)
    sys.modules["cupy"] = fake
    sys.modules.update(_fake_cupyx())
    neighbors_cupy._cupy_kernels.cache_clear()
    neighbors_cupy._fused_kernels.cache_clear()
    return fake
