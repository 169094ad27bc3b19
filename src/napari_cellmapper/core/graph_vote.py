"""The reference graph's vote: class probabilities through the reference's own k-NN graph.

For a query cell ``q`` with reference neighbours ``N(q)`` (its ``k`` nearest) and a reference cell
``r`` with neighbours ``N(r)`` in the reference's own k-NN graph (``r`` itself included), the shared
count ``s = |N(q) ∩ N(r)|`` is non-zero for every reference cell whose neighbourhood holds one of
``q``'s neighbours: two hops, through the reference graph. Each such cell votes for its label with
its Jaccard index squared, ``(s / (|N(q)| + |N(r)| - s))^2`` (HNOCA-tools' ``jaccard_square``, the
weight of the ``hnoca`` kernel, here over the two-hop candidates rather than ``q``'s own edges).

A reference cell counts when its neighbourhood overlaps ``q``'s, not merely when it is near ``q``,
so the vote follows the reference's manifold. On the quality panel (``benchmarks/quality.py``),
mixed into the k-NN class probabilities as ``(1 - share) · knn + share · graph`` with the head's
shrinkage raised for its reference-only fit, it lifted pbmc 0.800 -> 0.808 and xplat-visium
0.780 -> 0.787 (the last two data sets where the default trailed the best other method by more
than a point; cellmapper's bidirectional Jaccard needs three more searches for the same), and cost
seqFISH 1.2 points (its macro F1 0.450 -> 0.381). The mapping matrix ``M`` is untouched: the vote
only shapes the labels.

Cost: the reference graph (the one presence scores and mapping quality use, or one more search)
and two walks over the reverse lists of the query cell's neighbours, about ``k^2`` candidates:
0.11 s at 100k x 100k on 2 cores (numba kernel, see :mod:`.label_kernels`; scipy's sparse
product, 0.9 s, before the kernels are compiled). The 100k benchmark (``scale.py``, presence on):
+7% in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from napari_cellmapper.core import label_kernels
from napari_cellmapper.core.progress import chunk_bounds
from napari_cellmapper.core.search.neighbors import Neighbors

#: share of the graph vote in the k-NN class probabilities (chosen on the quality panel: 0.6-0.9
#: within half a point everywhere; see benchmarks/README.md)
GRAPH_VOTE = 0.75
#: neighbours on both sides of the shared count (the query's nearest and the reference graph's)
GRAPH_VOTE_K = 10
#: query rows per block of the scipy path
_ROWS = 16_384


def _first_columns(neighbors: Neighbors, k: int) -> Neighbors:
    """Each row's ``k`` nearest (the search sorts them)."""
    return Neighbors(
        neighbors.indices[:, :k], neighbors.distances[:, :k], neighbors.metric, neighbors.backend,
        neighbors.n_reference,
    )  # fmt: skip


def _first(neighbors: Neighbors, k: int) -> np.ndarray:
    """The first ``k`` columns of a k-NN table as int32 (fewer bytes per lookup), ``-1`` where an
    edge is unusable."""
    if neighbors.n_reference >= 2**31 - 1:
        raise ValueError("The graph vote takes fewer than 2^31 reference cells.")
    return np.where(neighbors.valid[:, :k], neighbors.indices[:, :k], -1).astype(np.int32)


@dataclass(frozen=True)
class Voters:
    """The labelled reference cells' neighbourhoods, built once per reference graph and labels.

    ``graph``: CSR, row ``r`` the first ``k`` neighbours of reference cell ``r`` (no row for an
    unlabelled cell: it does not vote); ``reverse``: the same as CSC, column ``r`` the labelled
    cells whose neighbourhood holds ``r``; ``sizes``: each cell's neighbour count."""

    graph: sparse.csr_matrix
    reverse: sparse.csc_matrix
    sizes: np.ndarray
    codes: np.ndarray
    n_classes: int
    k: int

    @classmethod
    def build(
        cls, reference_neighbors: Neighbors, codes: np.ndarray, n_classes: int, k: int = GRAPH_VOTE_K
    ) -> Voters:
        """From the reference's own k-NN graph (each cell's first neighbour itself) and the reference
        cells' class codes (``-1``: no label, no vote)."""
        k = max(1, min(k, reference_neighbors.k, 255))
        codes = np.asarray(codes)
        theirs = _first(reference_neighbors, k)
        sizes = (theirs >= 0).sum(axis=1)
        voters = np.where((codes >= 0)[:, None], theirs, np.int32(-1))
        indptr = np.zeros(voters.shape[0] + 1, np.int64)
        np.cumsum((voters >= 0).sum(axis=1), out=indptr[1:])
        kept = voters[voters >= 0]
        del voters
        graph = sparse.csr_matrix(
            (np.ones(kept.size, np.int8), kept, indptr), shape=(theirs.shape[0], theirs.shape[0])
        )
        return cls(graph, graph.tocsc(), sizes, codes, int(n_classes), k)

    def votes(
        self, neighbors: Neighbors, *, exclude: np.ndarray | None = None, row_order: np.ndarray | None = None
    ) -> np.ndarray:
        """``(n_query, n_classes)`` float32 class probabilities of the graph vote for the query cells
        of ``neighbors`` (query -> reference, sorted as every search returns them; its first
        ``k`` columns count). ``exclude``: per query row, a reference row that must not vote (a
        reference cell mapped against the others, for the calibration). ``row_order``: a
        permutation of the query rows in which the kernel takes them (e.g.
        :func:`.neighbors.locality_order`: neighbouring rows in turn keep the counts in cache; the
        result does not depend on it). Rows without any vote are 0."""
        if neighbors.n_reference != self.graph.shape[0]:
            raise ValueError(
                f"The reference graph has {self.graph.shape[0]} rows; "
                f"the reference has {neighbors.n_reference}."
            )
        k = min(self.k, neighbors.k)
        mine = _first(neighbors, k)
        n = mine.shape[0]
        out = np.zeros((n, self.n_classes), np.float32)
        if n == 0 or self.n_classes == 0:
            return out
        # the kernels once the graph is large (a sample of the reference cells is mapped against
        # the whole graph for the calibration), when they are compiled (see .jit)
        if label_kernels.use_kernels(max(n, self.graph.shape[0]), self.n_classes):
            label_kernels.graph_votes(
                mine,
                self.reverse.indptr,
                self.reverse.indices,
                self.codes,
                self.sizes,
                out,
                row_order,
                exclude,
            )
            return out
        labelled = self.codes >= 0
        onehot = sparse.csr_matrix(
            (np.ones(int(labelled.sum())), (np.flatnonzero(labelled), self.codes[labelled])),
            shape=(self.codes.size, self.n_classes),
        )
        nearest = _first_columns(neighbors, k)
        for start, stop in chunk_bounds(n, _ROWS):
            block = mine[start:stop]
            shared = (nearest.subset(slice(start, stop)).adjacency() @ self.graph.T).tocoo()
            if exclude is not None:
                keep = shared.col != exclude[start:stop][shared.row]
                shared = sparse.coo_matrix(
                    (shared.data[keep], (shared.row[keep], shared.col[keep])), shape=shared.shape
                )
            sizes = (block >= 0).sum(axis=1)
            union = sizes[shared.row] + self.sizes[shared.col] - shared.data
            weights = np.square(shared.data / np.maximum(union, 1))
            votes = np.asarray(
                (
                    sparse.csr_matrix((weights, (shared.row, shared.col)), shape=shared.shape) @ onehot
                ).todense()
            )
            total = votes.sum(axis=1, keepdims=True)
            out[start:stop] = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
        return out


def graph_vote(
    neighbors: Neighbors,
    reference_neighbors: Neighbors,
    codes: np.ndarray,
    n_classes: int,
    *,
    k: int = GRAPH_VOTE_K,
    exclude: np.ndarray | None = None,
    row_order: np.ndarray | None = None,
) -> np.ndarray:
    """``(n_query, n_classes)`` float32 class probabilities of the reference graph's vote:
    :meth:`Voters.votes` of ``Voters.build(reference_neighbors, codes, n_classes, k)`` (which
    refuses a graph of another reference)."""
    voters = Voters.build(reference_neighbors, codes, n_classes, k)
    return voters.votes(neighbors, exclude=exclude, row_order=row_order)


def blend(knn: np.ndarray, graph: np.ndarray, share: float) -> np.ndarray:
    """``(1 - share) · knn + share · graph`` (float32); rows without a graph vote keep ``knn``, and
    rows without a k-NN vote (unmapped cells) stay 0."""
    knn = np.asarray(knn, np.float32)
    out = knn * np.float32(1 - share)
    out += np.asarray(graph, np.float32) * np.float32(share)
    keep = ~(graph.any(axis=1) & knn.any(axis=1))
    if keep.any():
        out[keep] = knn[keep]
    return out
