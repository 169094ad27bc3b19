"""``Y_query = M · Y_reference`` on the GPU, for mappings whose search ran there.

The mapping matrix M is uploaded once (``cupyx.scipy.sparse``, cuSPARSE) and each transfer is one
product per chunk of query rows on the device: class probabilities ``M · onehot`` (then the same
:func:`~.transfer.summarise_probabilities` as on the CPU, so confidence and entropy are computed
identically), embeddings ``M · Y`` and sparse expression ``M · X`` (sparse in, sparse CSR float32
with sorted indices out). Only the chunk's result comes back to the host. Same results as
:mod:`.transfer` up to float32 summation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from napari_cellmapper.core.progress import Progress, Steps, chunk_bounds
from napari_cellmapper.core.transfer import LabelTransfer, summarise_probabilities

#: query rows per device product: few host round trips, bounded device memory for the output
GPU_TRANSFER_CHUNK = 1 << 20


def _to_host(xp: Any, value: Any) -> Any:
    """A device array or sparse matrix on the host (numpy / scipy)."""
    if hasattr(value, "get") and not isinstance(value, (np.ndarray, sparse.spmatrix, sparse.sparray)):
        return value.get()
    return value if sparse.issparse(value) else xp.asnumpy(value)


class DeviceMapping:
    """A mapping matrix held on one GPU, for the transfers of :meth:`CellMapper.transfer`.

    Parameters
    ----------
    matrix
        ``(n_query, n_reference)`` CSR mapping matrix (rows sum to 1, or 0 for unmapped cells).
    device
        CUDA device number.
    """

    def __init__(self, matrix: sparse.csr_matrix, device: int = 0) -> None:
        import cupy
        import cupyx.scipy.sparse as device_sparse

        self._xp, self._sparse, self.device = cupy, device_sparse, int(device)
        self.shape = matrix.shape
        with cupy.cuda.Device(self.device):
            self._m = device_sparse.csr_matrix(sparse.csr_matrix(matrix, dtype=np.float32))

    def iter_labels(
        self,
        codes: np.ndarray,
        categories: pd.Index,
        *,
        chunk_size: int = GPU_TRANSFER_CHUNK,
        stage: str = "transfer labels",
    ) -> Steps[LabelTransfer]:
        """Class probabilities ``M · onehot(labels)``; reference cells without a label (-1) ignored."""
        xp, n_query, n_cat = self._xp, self.shape[0], len(categories)
        proba = np.zeros((n_query, n_cat), dtype=np.float32)
        codes = np.asarray(codes, dtype=np.int64)
        with xp.cuda.Device(self.device):
            labelled = np.flatnonzero(codes >= 0)
            onehot = xp.zeros((self.shape[1], max(n_cat, 1)), dtype=xp.float32)
            onehot[xp.asarray(labelled), xp.asarray(codes[labelled])] = 1
            for start, stop in chunk_bounds(n_query, chunk_size):
                part = self._m[start:stop] @ onehot
                total = part.sum(axis=1, keepdims=True)
                part = xp.where(total > 0, part / xp.where(total > 0, total, 1), 0).astype(xp.float32)
                proba[start:stop] = _to_host(xp, part)[:, :n_cat]
                yield Progress(stage, stop, n_query)
        return summarise_probabilities(proba, categories)

    def iter_dense(
        self, values: np.ndarray, *, chunk_size: int = GPU_TRANSFER_CHUNK, stage: str = "transfer embedding"
    ) -> Steps[np.ndarray]:
        """``M · Y`` for a dense reference matrix (an embedding), float32."""
        xp, n_query = self._xp, self.shape[0]
        out = np.empty((n_query, np.shape(values)[1]), dtype=np.float32)
        yield Progress(stage, 0, n_query)
        with xp.cuda.Device(self.device):
            y = xp.asarray(np.asarray(values, dtype=np.float32))
            for start, stop in chunk_bounds(n_query, chunk_size):
                out[start:stop] = _to_host(xp, self._m[start:stop] @ y)
                yield Progress(stage, stop, n_query)
        return out

    def iter_expression(
        self,
        expression: np.ndarray | sparse.spmatrix | sparse.sparray,
        *,
        chunk_size: int = GPU_TRANSFER_CHUNK,
        stage: str = "transfer expression",
    ) -> Steps[np.ndarray | sparse.csr_matrix]:
        """``M · X``: sparse in, CSR float32 with sorted indices out (dense in, dense out)."""
        if not sparse.issparse(expression):
            return (yield from self.iter_dense(np.asarray(expression), chunk_size=chunk_size, stage=stage))
        xp, n_query = self._xp, self.shape[0]
        parts = []
        yield Progress(stage, 0, n_query)
        with xp.cuda.Device(self.device):
            x = self._sparse.csr_matrix(sparse.csr_matrix(expression, dtype=np.float32))
            for start, stop in chunk_bounds(n_query, chunk_size):
                part = self._m[start:stop] @ x
                part.sort_indices()
                parts.append(sparse.csr_matrix(_to_host(xp, part), dtype=np.float32))
                yield Progress(stage, stop, n_query)
        if not parts:
            return sparse.csr_matrix(self.shape[:1] + expression.shape[1:], dtype=np.float32)
        return sparse.vstack(parts, format="csr", dtype=np.float32)
