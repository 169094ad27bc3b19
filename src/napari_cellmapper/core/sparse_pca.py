"""PCA and CCA of per-dataset centred, scaled matrices without forming them.

A dataset's block is ``Z = diag(mask) · (X - 1 mean^T) · diag(scale)`` with ``X`` sparse (or
dense) as given: products with ``Z`` and ``Z^T`` are sparse products plus a rank-one
correction, so whole-transcriptome inputs never become a dense cells x genes copy. The PCA is a
randomized SVD (Halko et al.) with power iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import LinearOperator, svds

OVERSAMPLE = 10
POWER_ITERATIONS = 3


@dataclass(frozen=True)
class CentredBlock:
    """``diag(mask) (x - mean) diag(scale)`` as an operator (nothing is densified)."""

    x: object  # CSR matrix or ndarray, cells x genes
    mean: np.ndarray  # (genes,)
    scale: np.ndarray  # (genes,)
    mask: np.ndarray  # (cells,) bool; False rows are zero

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    def matmat(self, w: np.ndarray) -> np.ndarray:
        """``Z @ w`` for ``w`` of shape (genes, m)."""
        sw = (self.scale[:, None] * w).astype(np.float32)
        out = np.asarray(self.x @ sw, dtype=np.float32) - (self.mean.astype(np.float32) @ sw)[None, :]
        out[~self.mask] = 0
        return out

    def rmatmat(self, y: np.ndarray) -> np.ndarray:
        """``Z^T @ y`` for ``y`` of shape (cells, m)."""
        y = np.where(self.mask[:, None], y, 0).astype(np.float32)
        xty = np.asarray(self.x.T @ y, dtype=np.float32)
        return self.scale[:, None] * (xty - np.outer(self.mean, y.sum(axis=0)))


def _stacked(blocks: list[CentredBlock], w: np.ndarray) -> np.ndarray:
    return np.vstack([b.matmat(w) for b in blocks])


def _stacked_t(blocks: list[CentredBlock], y: np.ndarray) -> np.ndarray:
    out, start = 0, 0
    for b in blocks:
        out = out + b.rmatmat(y[start : start + b.shape[0]])
        start += b.shape[0]
    return out


def orthonormalise(q: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``q``'s columns: Cholesky QR, twice (stable enough for the
    randomized range finder, and a small Gram matrix instead of a tall Householder QR)."""
    from scipy.linalg import solve_triangular

    q = np.asarray(q, np.float64)
    for _ in range(2):
        gram = q.T @ q
        gram[np.diag_indices_from(gram)] += 1e-10 * max(float(np.trace(gram)), 1e-30)
        lower = np.linalg.cholesky(gram)
        q = solve_triangular(lower, q.T, lower=True).T
    return q.astype(np.float32)


def fit_components(blocks: list[CentredBlock], n_comps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Randomized SVD of the stacked blocks: the top ``n_comps`` right singular vectors (genes x
    n_comps) and singular values. Coordinates are ``block.matmat(components)``."""
    n_genes = blocks[0].shape[1]
    n_rows = sum(b.shape[0] for b in blocks)
    rank = min(n_comps + OVERSAMPLE, n_genes, n_rows)
    rng = np.random.default_rng(seed)
    q = _stacked(blocks, rng.standard_normal((n_genes, rank)).astype(np.float32))
    for _ in range(POWER_ITERATIONS):
        q = orthonormalise(q)
        q = _stacked(blocks, orthonormalise(_stacked_t(blocks, q)))
    q = orthonormalise(q)
    b = _stacked_t(blocks, q).T  # (rank, genes) = Q^T Z
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    n = min(n_comps, rank)
    return vt[:n].T.astype(np.float32), s[:n]


def row_sample(block: CentredBlock, n: int, rng: np.random.Generator) -> CentredBlock:
    """The block restricted to ``n`` random rows (all when it has fewer)."""
    if n >= block.shape[0]:
        return block
    rows = np.sort(rng.choice(block.shape[0], n, replace=False))
    return CentredBlock(block.x[rows], block.mean, block.scale, block.mask[rows])


def implicit_cca(
    query: CentredBlock, reference: CentredBlock, n_comps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seurat-style CCA: SVD of ``Zq · Zr^T`` through the blocks' operators."""
    op = LinearOperator(
        (query.shape[0], reference.shape[0]),
        matvec=lambda v: query.matmat(reference.rmatmat(v.reshape(-1, 1))).ravel(),
        rmatvec=lambda v: reference.matmat(query.rmatmat(v.reshape(-1, 1))).ravel(),
        matmat=lambda m: query.matmat(reference.rmatmat(m)),
        rmatmat=lambda m: reference.matmat(query.rmatmat(m)),
        dtype=np.float32,
    )
    n_comps = min(n_comps, min(op.shape) - 1)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(min(op.shape)).astype(np.float32)
    u, s, vt = svds(op, k=n_comps, v0=v0, random_state=seed)
    order = np.argsort(s)[::-1]
    return (
        u[:, order].astype(np.float32),
        vt[order].T.astype(np.float32),
        {"singular_values": s[order].astype(float).tolist()},
    )
