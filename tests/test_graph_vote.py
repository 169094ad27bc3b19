"""The reference graph's vote: 2-hop Jaccard² class probabilities, kernel and scipy paths alike."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellmapper.core import graph_vote as G
from napari_cellmapper.core import label_kernels
from napari_cellmapper.core.search.neighbors import Neighbors


def _neighbors(indices, n_reference: int) -> Neighbors:
    indices = np.asarray(indices, np.int64)
    distances = np.where(indices >= 0, np.arange(indices.shape[1], dtype=np.float32), np.inf)
    return Neighbors(indices, distances.astype(np.float32), "euclidean", "test", n_reference)


def _by_hand(mine, theirs, codes, n_classes, exclude=None):
    """The definition, cell by cell: |N(q) ∩ N(r)| / |N(q) ∪ N(r)|, squared, summed per class."""
    out = np.zeros((len(mine), n_classes))
    for q, row in enumerate(mine):
        a = {int(x) for x in row if x >= 0}
        for r, their in enumerate(theirs):
            b = {int(x) for x in their if x >= 0}
            s = len(a & b)
            if s and codes[r] >= 0 and (exclude is None or exclude[q] != r):
                out[q, codes[r]] += (s / len(a | b)) ** 2
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def _random_case(n_query=300, n_ref=200, k=6, k_ref=8, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    mine = np.array([rng.choice(n_ref, k, replace=False) for _ in range(n_query)])
    mine[3, 2:] = -1  # a query cell with fewer neighbours
    mine[4] = -1  # and one without any: no vote
    others = [rng.choice(np.delete(np.arange(n_ref), r), k_ref - 1, replace=False) for r in range(n_ref)]
    theirs = np.column_stack([np.arange(n_ref), np.array(others)])  # each cell its own first neighbour
    codes = rng.integers(-1, n_classes, n_ref)  # -1: unlabelled reference cells do not vote
    return mine, theirs, codes, n_classes


def test_votes_follow_the_definition_on_a_small_graph():
    # query cell 0's neighbours are reference cells 0 and 1; reference cell 2's own neighbourhood
    # is {2, 1}, so it votes (shared 1, union 3) though it is not among query cell 0's neighbours
    mine = np.array([[0, 1], [3, -1]])
    theirs = np.array([[0, 1], [1, 0], [2, 1], [3, 2]])
    codes = np.array([0, 0, 1, 1])
    got = G.graph_vote(_neighbors(mine, 4), _neighbors(theirs, 4), codes, 2)
    w0 = 1.0 + 1.0  # cells 0 and 1 share both neighbours: Jaccard 1
    w2 = (1 / 3) ** 2
    np.testing.assert_allclose(got[0], [w0 / (w0 + w2), w2 / (w0 + w2)], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0, 1], atol=1e-7)  # only cell 3 holds 3: its class
    np.testing.assert_allclose(got, _by_hand(mine, theirs, codes, 2), rtol=1e-6)


@pytest.mark.parametrize("kernels", [True, False])
def test_both_paths_equal_the_definition(monkeypatch, kernels):
    mine, theirs, codes, n_classes = _random_case()
    monkeypatch.setattr(label_kernels, "use_kernels", lambda *_: kernels)
    got = G.graph_vote(_neighbors(mine, 200), _neighbors(theirs, 200), codes, n_classes, k=8)
    np.testing.assert_allclose(got, _by_hand(mine, theirs, codes, n_classes), rtol=1e-5, atol=1e-7)
    assert np.all(got[4] == 0)  # no neighbours, no vote
    assert got.dtype == np.float32


@pytest.mark.parametrize("kernels", [True, False])
def test_an_excluded_cell_does_not_vote_and_row_order_changes_nothing(monkeypatch, kernels):
    mine, theirs, codes, n_classes = _random_case(seed=3)
    codes = np.abs(codes)  # everyone labelled
    exclude = mine[:, 0].copy()  # e.g. a reference cell mapped against the others: not itself
    monkeypatch.setattr(label_kernels, "use_kernels", lambda *_: kernels)
    voters = G.Voters.build(_neighbors(theirs, 200), codes, n_classes, k=8)
    order = np.random.default_rng(0).permutation(len(mine))
    got = voters.votes(_neighbors(mine, 200), exclude=exclude, row_order=order if kernels else None)
    np.testing.assert_allclose(got, _by_hand(mine, theirs, codes, n_classes, exclude), rtol=1e-5, atol=1e-7)
    unexcluded = voters.votes(_neighbors(mine, 200))
    assert not np.allclose(got, unexcluded)


def test_k_keeps_the_first_columns_only():
    mine, theirs, codes, n_classes = _random_case(k=6, k_ref=8)
    got = G.graph_vote(_neighbors(mine, 200), _neighbors(theirs, 200), codes, n_classes, k=4)
    want = _by_hand(np.where(mine[:, :4] >= 0, mine[:, :4], -1), theirs[:, :4], codes, n_classes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_graph_of_another_reference_is_refused():
    mine, theirs, codes, n_classes = _random_case()
    with pytest.raises(ValueError, match="200 rows; the reference has 300"):
        G.graph_vote(_neighbors(mine, 300), _neighbors(theirs, 200), codes, n_classes)


def test_blend_keeps_rows_without_a_vote_and_unmapped_rows():
    knn = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]], np.float32)
    graph = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    got = G.blend(knn, graph, 0.75)
    np.testing.assert_allclose(got, [[0.875, 0.125], [1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(knn, [[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])  # input untouched
