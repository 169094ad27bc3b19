"""A joint representation from the shared genes when the user has none (``use_rep=None``).

Steps, each dataset on its own before they meet: shared genes; drop genes without counts in
either dataset; library-size normalisation and ``log1p`` (skipped for data that is not counts);
per-dataset centring of every gene and scaling of each dataset (one factor per dataset by default,
or every gene to unit variance), which removes the platforms' offsets; then PCA on both
together, or CCA between them. On the MERFISH benchmark, per-dataset centring with one scale per
dataset reached 0.85 accuracy against 0.82 for per-gene z-scores, which over-weight noisy genes.
PCA coordinates are used as they are. They used to be scaled to unit length (cosine geometry),
chosen on MERFISH with the k-NN vote alone; with the label head and its self-training the
unscaled coordinates are 2.5 points more accurate there and equal elsewhere on the quality panel
(``benchmarks/README.md``, issue 10's third round). CCA coordinates are still scaled to unit
length, as Seurat does with its canonical vectors.

Cells without any count cannot be placed: they get ``usable=False`` and stay unmapped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from anndata import AnnData
from scipy import sparse

from napari_cellmapper.core.gene_selection import highly_variable
from napari_cellmapper.core.normalization import (
    COUNTS,
    Decision,
    check_normalize,
    decide,
    row_chunks,
    transform,
)
from napari_cellmapper.core.sparse_pca import CentredBlock, fit_components, implicit_cca, row_sample
from napari_cellmapper.core.validation import (
    JOINT_METHODS,
    CellMapperInputError,
    check_choice,
    check_unique_var_names,
)

MIN_SHARED_GENES = 5
SCALE_CLIP = 10.0
SCALINGS = ("dataset", "gene")
DEFAULT_N_TOP_GENES = 2000
#: one default for the library, the command line and the widget (the quality panel chose 50 over 30)
DEFAULT_N_COMPS = 50
#: above this many values (cells x selected genes of both datasets) nothing is densified
DENSE_LIMIT = 20_000_000
#: the implicit PCA is fitted on at most this many cells, then every cell is projected
PCA_FIT_ROWS = 60_000


@dataclass(frozen=True)
class JointEmbedding:
    """Joint coordinates of query and reference cells in one space."""

    query: np.ndarray
    reference: np.ndarray
    query_usable: np.ndarray
    reference_usable: np.ndarray
    genes: list[str]
    method: str
    info: dict = field(default_factory=dict)


def shared_genes(query: AnnData, reference: AnnData) -> list[str]:
    """Genes measured in both objects, in the reference's order."""
    genes = reference.var_names[reference.var_names.isin(query.var_names)]
    return list(dict.fromkeys(genes))


def _raw(adata: AnnData, layer: str | None):
    """The expression matrix as stored (CSR or dense); never subset, so never copied whole."""
    x = adata.X if layer in (None, "X") else adata.layers[layer]
    if x is None:
        raise CellMapperInputError("No expression matrix found; pass layer= naming one.")
    if not (sparse.issparse(x) or isinstance(x, np.ndarray)) and hasattr(x, "shape"):
        # a backed AnnData's X is an on-disk dataset: read it (sparse stays sparse)
        x = x.to_memory() if hasattr(x, "to_memory") else x[()]
    if sparse.issparse(x):
        return x if x.format == "csr" else sparse.csr_matrix(x)
    return np.asarray(x)


def _check_finite_expression(x, cols: np.ndarray, role: str, layer: str | None) -> None:
    """Raise, naming the matrix and the count, if the shared genes hold NaN or inf (they would
    reach the PCA/CCA solver, whose error names neither)."""
    if sparse.issparse(x):
        bad = ~np.isfinite(x.data)
        if not bad.any():
            return
        in_cols = np.isin(x.indices[bad], cols)
        n_bad = int(in_cols.sum())
        n_cells = int(np.unique(_row_ids(x)[np.flatnonzero(bad)[in_cols]]).size)
    else:
        n_bad = n_cells = 0
        for start in range(0, x.shape[0], 8192):  # row blocks: no full copy of a dense matrix
            block = ~np.isfinite(x[start : start + 8192][:, cols])
            n_bad += int(block.sum())
            n_cells += int(block.any(axis=1).sum())
    if n_bad:
        name = "X" if layer in (None, "X") else f"layer {layer!r}"
        raise CellMapperInputError(
            f"The {role}'s {name} holds {n_bad} NaN or inf value(s) in the shared genes "
            f"({n_cells} cell(s)); no joint representation can be built from them. Replace them "
            "(e.g. with 0), choose another expression layer (joint_layer, --joint-layer) or pass a "
            "precomputed joint embedding (use_rep, --use-rep)."
        )


def _raw_stats(x, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row totals and rows with a non-zero value over the ``cols``, and each of those columns'
    number of non-zeros; full-width row chunks, so no column subset is ever copied."""
    mask = np.zeros(x.shape[1], np.float32)
    mask[cols] = 1
    totals = np.zeros(x.shape[0])
    signal = np.zeros(x.shape[0], bool)
    nnz = np.zeros(x.shape[1], np.int64)
    for start, stop, c in row_chunks(x):
        totals[start:stop] = c @ mask
        if sparse.issparse(c):
            nz = c.data != 0
            signal[start:stop] = (
                np.bincount(_row_ids(c)[nz], weights=mask[c.indices[nz]], minlength=stop - start) > 0
            )
            nnz += np.bincount(c.indices[nz], minlength=x.shape[1])
        else:
            nz = c != 0
            signal[start:stop] = (nz @ mask) > 0
            nnz += nz.sum(axis=0)
    return totals, signal, nnz[cols]


def _row_ids(c: sparse.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))


def _size_factors(totals: np.ndarray, target: float) -> np.ndarray:
    return np.divide(target, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)


def _transformed(x, cols, decision: Decision, factors: np.ndarray, usable: np.ndarray):
    """Chunks of the transformed values of the ``cols`` (unusable rows zeroed)."""
    for start, stop, c in row_chunks(x, cols):
        t = transform(c, decision, factors[start:stop])
        keep = usable[start:stop]
        if not keep.all():
            t = sparse.diags(keep.astype(np.float32)) @ t if sparse.issparse(t) else t * keep[:, None]
        yield start, stop, t


def _moments(x, cols, decision, factors, usable) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) variance of the transformed values over usable cells
    (full-width chunks; the ``cols`` are picked from the per-gene sums)."""
    s1, s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start, stop, c in row_chunks(x):
        t = transform(c, decision, factors[start:stop])
        keep = usable[start:stop]
        if sparse.issparse(t):
            w = t.data * keep[_row_ids(t)]
            s1 += np.bincount(t.indices, weights=w, minlength=x.shape[1])
            s2 += np.bincount(t.indices, weights=w * t.data, minlength=x.shape[1])
        else:
            s1 += (t * keep[:, None]).sum(axis=0)
            s2 += (t * t * keep[:, None]).sum(axis=0)
    n = max(int(usable.sum()), 1)
    mean = s1[cols] / n
    return mean, np.maximum(s2[cols] / n - mean**2, 0)


def _materialise(x, cols, decision, factors, usable, dense: bool):
    """The transformed matrix of the selected genes: dense (small problems) or CSR."""
    if dense:
        out = np.empty((x.shape[0], cols.size), np.float32)
        for start, stop, t in _transformed(x, cols, decision, factors, usable):
            out[start:stop] = t.toarray() if sparse.issparse(t) else t
        return out
    parts = [t for _, _, t in _transformed(x, cols, decision, factors, usable)]
    if not sparse.issparse(parts[0]):
        return np.vstack(parts)
    return sparse.vstack(parts, format="csr", dtype=np.float32)


def _scale(x: np.ndarray, usable: np.ndarray, scaling: str) -> np.ndarray:
    """Centre every gene within this dataset, then scale (computed on usable cells).

    ``"dataset"``: one factor for the whole dataset (unit overall standard deviation), which
    balances the two platforms while keeping the genes' relative variances; ``"gene"``: every gene
    to unit variance (z-score, clipped at 10).
    """
    centred = x - x[usable].mean(axis=0)
    if scaling == "gene":
        std = x[usable].std(axis=0)
        z = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
        np.clip(z, -SCALE_CLIP, SCALE_CLIP, out=z)
    else:
        total = float(centred[usable].std())
        z = centred / total if total > 0 else centred
    z[~usable] = 0
    return z.astype(np.float32)


def _pca(zq: np.ndarray, zr: np.ndarray, n_comps: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.decomposition import PCA

    joint = np.vstack([zr, zq])
    pca = PCA(n_components=n_comps, random_state=seed, svd_solver="auto")
    coords = pca.fit_transform(joint).astype(np.float32)
    n_ref = zr.shape[0]
    info = {"explained_variance_ratio": pca.explained_variance_ratio_.astype(float).tolist()}
    return coords[n_ref:], coords[:n_ref], info


def _cca(zq: np.ndarray, zr: np.ndarray, n_comps: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seurat-style CCA: SVD of Zq · Zr^T without forming it (see :func:`.sparse_pca.implicit_cca`)."""

    def block(z: np.ndarray) -> CentredBlock:
        return CentredBlock(z, np.zeros(z.shape[1]), np.ones(z.shape[1]), np.ones(z.shape[0], bool))

    return implicit_cca(block(zq), block(zr), n_comps, seed)


def check_n_top_genes(n_top_genes: object) -> None:
    """Raise unless ``n_top_genes`` is None or an integer >= ``MIN_SHARED_GENES``."""
    integer = isinstance(n_top_genes, (int, np.integer)) and not isinstance(n_top_genes, bool)
    if n_top_genes is not None and (not integer or n_top_genes < MIN_SHARED_GENES):
        raise CellMapperInputError(
            f"n_top_genes must be None (all shared genes) or an integer >= {MIN_SHARED_GENES}; "
            f"got {n_top_genes!r}."
        )


def l2_normalise(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def build_joint_embedding(
    query: AnnData,
    reference: AnnData,
    *,
    method: str = "pca",
    n_comps: int = DEFAULT_N_COMPS,
    layer: str | None = None,
    target_sum: float | None = None,
    scaling: str = "dataset",
    normalize: str | bool = "auto",
    n_top_genes: int | None = DEFAULT_N_TOP_GENES,
    seed: int = 0,
) -> JointEmbedding:
    """Joint coordinates for query and reference from their shared genes.

    Parameters
    ----------
    query, reference
        AnnData objects with expression (counts, or log-normalised values) in ``X`` or ``layer``.
    method
        ``"pca"`` on both datasets together, or ``"cca"`` between them.
    n_comps
        Number of components (capped by the number of genes and cells).
    layer
        Layer holding the expression; ``None`` uses ``X``.
    target_sum
        Library size after normalisation; default: the median total count of the usable cells.
    scaling
        Per-dataset scaling after centring every gene within its dataset: ``"dataset"`` (one
        factor per dataset; default) or ``"gene"`` (every gene to unit variance).
    normalize
        ``"auto"`` (decide per dataset from the values, see :mod:`.normalization`), ``True``
        (counts: library-size normalisation and ``log1p``) or ``False`` (values used as they are).
        The decision is recorded in ``info["normalize"]``.
    n_top_genes
        With more shared genes than this, keep the ``n_top_genes`` most variable (see
        :mod:`.gene_selection`); ``None`` keeps all.
    seed
        Random seed of the solvers.

    Problems larger than ``DENSE_LIMIT`` values (cells x selected genes) never form a dense copy:
    the centring and scaling stay implicit (:mod:`.sparse_pca`).
    """
    check_choice("joint method", method, JOINT_METHODS)
    check_choice("scaling", scaling, SCALINGS)
    check_normalize(normalize)
    check_n_top_genes(n_top_genes)
    check_unique_var_names(query, "query")
    check_unique_var_names(reference, "reference")
    genes = shared_genes(query, reference)
    if len(genes) < MIN_SHARED_GENES:
        raise CellMapperInputError(
            f"Query and reference share {len(genes)} gene name(s); at least {MIN_SHARED_GENES} are needed "
            "to build a joint representation. Check that both use the same gene identifiers "
            "(symbols vs Ensembl IDs), or pass use_rep naming a precomputed joint embedding."
        )
    xq, xr = _raw(query, layer), _raw(reference, layer)
    cq = query.var_names.get_indexer(genes)
    cr = reference.var_names.get_indexer(genes)
    _check_finite_expression(xq, cq, "query", layer)
    _check_finite_expression(xr, cr, "reference", layer)
    (tq, q_usable, nq), (tr, r_usable, nr) = _raw_stats(xq, cq), _raw_stats(xr, cr)
    for role, usable in (("query", q_usable), ("reference", r_usable)):
        if not usable.any():
            raise CellMapperInputError(
                f"Every {role} cell has zero counts over the shared genes; nothing can be mapped. "
                "Check the expression matrix (X or layer=)."
            )
    expressed = (nq > 0) & (nr > 0)
    if not expressed.all():
        warnings.warn(
            f"{int((~expressed).sum())} shared gene(s) have no counts in the query or the reference "
            "and are ignored.",
            stacklevel=3,
        )
        genes = [g for g, keep in zip(genes, expressed, strict=True) if keep]
        if len(genes) < MIN_SHARED_GENES:
            raise CellMapperInputError(
                f"Only {len(genes)} shared gene(s) have counts in both datasets; at least "
                f"{MIN_SHARED_GENES} are needed to build a joint representation. Pass use_rep naming "
                "a precomputed joint embedding instead."
            )
        cq, cr = cq[expressed], cr[expressed]
        (tq, q_usable, _), (tr, r_usable, _) = _raw_stats(xq, cq), _raw_stats(xr, cr)
    for role, usable in (("query", q_usable), ("reference", r_usable)):
        if not usable.all():
            warnings.warn(
                f"{int((~usable).sum())} {role} cell(s) have zero counts over the shared genes; "
                "they are left unmapped.",
                stacklevel=3,
            )
    if method == "cca" and min(q_usable.sum(), r_usable.sum()) < 2:
        raise CellMapperInputError(
            "joint='cca' needs at least 2 cells with counts in each dataset; use joint='pca'."
        )
    dq = decide(xq, cq, tq, q_usable, normalize, "query")
    dr = decide(xr, cr, tr, r_usable, normalize, "reference")
    counted = [t[u] for t, u, d in ((tq, q_usable, dq), (tr, r_usable, dr)) if d.mode == COUNTS]
    target = target_sum or (float(np.median(np.concatenate(counted))) if counted else 1.0)
    fq, fr = _size_factors(tq, target), _size_factors(tr, target)
    mq, vq = _moments(xq, cq, dq, fq, q_usable)
    mr, vr = _moments(xr, cr, dr, fr, r_usable)
    n_all = len(genes)
    if n_top_genes is not None and n_all > n_top_genes:
        sel = highly_variable([mq, mr], [vq, vr], n_top_genes)
        cq, cr, mq, vq, mr, vr = cq[sel], cr[sel], mq[sel], vq[sel], mr[sel], vr[sel]
        genes = [genes[i] for i in sel]
    n_comps = int(max(1, min(n_comps, len(genes) - 1, q_usable.sum() - 1, r_usable.sum() - 1)))
    dense = (xq.shape[0] + xr.shape[0]) * len(genes) <= DENSE_LIMIT
    lq = _materialise(xq, cq, dq, fq, q_usable, dense)
    lr = _materialise(xr, cr, dr, fr, r_usable, dense)
    if dense:
        zq, zr = _scale(lq, q_usable, scaling), _scale(lr, r_usable, scaling)
        del lq, lr
        if method == "pca":
            cq_, cr_, info = _pca(zq, zr, n_comps, seed)
        else:
            cq_, cr_, info = _cca(zq, zr, n_comps, seed)
    else:
        bq = CentredBlock(lq, mq, _scale_vector(vq, scaling), q_usable)
        br = CentredBlock(lr, mr, _scale_vector(vr, scaling), r_usable)
        if method == "pca":
            cq_, cr_, info = _implicit_pca(bq, br, (vq, vr), (q_usable.sum(), r_usable.sum()), n_comps, seed)
        else:
            cq_, cr_, info = implicit_cca(bq, br, n_comps, seed)
    info.update(
        {
            "n_genes": len(genes),
            "n_shared_genes": n_all,
            "gene_selection": (
                f"{len(genes)} highly variable of {n_all} shared genes"
                if len(genes) < n_all
                else "all shared genes"
            ),
            "n_comps": n_comps,
            "log_normalised": dq.mode == COUNTS and dr.mode == COUNTS,
            "normalize": {"setting": str(normalize), "query": dq.reason, "reference": dr.reason},
            "solver": "exact (dense)" if dense else "randomized (sparse, implicit centring)",
        }
    )
    cq_, cr_ = np.array(cq_, np.float32), np.array(cr_, np.float32)
    cq_[~q_usable], cr_[~r_usable] = 0, 0  # cells without counts: no coordinates (never searched)
    if method == "cca":
        cq_, cr_ = l2_normalise(cq_), l2_normalise(cr_)
    return JointEmbedding(cq_, cr_, q_usable, r_usable, genes, method, info)


def _scale_vector(var: np.ndarray, scaling: str) -> np.ndarray:
    """Per-gene factors of :func:`_scale` for the implicit path (no clipping at ``SCALE_CLIP``)."""
    if scaling == "gene":
        sd = np.sqrt(var)
        return np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 0)
    total = float(np.sqrt(var.mean())) if var.size else 0.0
    return np.full(var.shape, 1.0 / total if total > 0 else 1.0)


def _implicit_pca(
    bq, br, variances, n_usable, n_comps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """PCA through :mod:`.sparse_pca`, fitted on at most ``PCA_FIT_ROWS`` cells, then projected."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    n_q, n_r = bq.shape[0], br.shape[0]
    share = min(1.0, PCA_FIT_ROWS / (n_q + n_r))
    sample = [row_sample(br, int(np.ceil(share * n_r)), rng), row_sample(bq, int(np.ceil(share * n_q)), rng)]
    with threadpool_limits(1, user_api="blas"):  # tall-skinny products: threads only spin
        components, s = fit_components(sample, n_comps, seed)
    total_ss = sum(
        float(n) * float((v * b.scale**2).sum())
        for v, n, b in zip(variances, n_usable, (bq, br), strict=True)
    )
    ratio = (s**2) / (share * total_ss) if total_ss > 0 else np.zeros_like(s)
    info = {"explained_variance_ratio": ratio.astype(float).tolist()}
    return bq.matmat(components), br.matmat(components), info
