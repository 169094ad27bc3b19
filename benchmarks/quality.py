"""Mapping quality panel: every labelled data set, our default against cellmapper and baselines.

Data sets (rows of the table, one block each):

- ``merfish``: MERFISH hypothalamus query, scRNA-seq reference, counts only (``use_rep=None``);
- ``seqfish``: seqFISH visual cortex query, Tasic scRNA-seq reference, quantile-normalised
  integers (not counts; ``use_rep=None``); the query labels are published SVM assignments;
- ``pbmc``: scanpy's bundled pbmc68k_reduced, ``--splits`` random stratified 60/40 splits,
  ``use_rep="X_pca"``; mean and standard deviation over the splits;
- ``xplat-slideseq`` / ``xplat-visium``: semi-synthetic cross-platform cases built from a real
  labelled reference (cerebellum snRNA-seq, hippocampus scRNA-seq): half of each type becomes the
  query, measured on a targeted panel (60% of the genes), with gene-specific detection efficiency
  (log-normal, sd 0.7) and binomial down-sampling to 25% of the counts; ``--seeds`` draws.

Methods: napari-cellmapper's default; the same before calibration (``calibrate=False``: the
"uncalibrated" confidence); its k-NN probabilities alone (``head="none", graph_vote=None``, as
before this panel) and with the reference graph's vote (``head="none"``); cellmapper 0.2.6 (only in
the benchmark environment; its joint PCA fallback on log-normalised counts, or on the values as they
are for seqFISH; gauss at k = 30, and hnoca at k = 10, the setting the issue measured); logistic
regression, a linear SVM and nearest centroid, all trained on the reference in the same space (the
joint embedding our default builds, or ``X_pca``), and again with the joint space's rows scaled to
unit length (where the linear ones do better: the best of both counts).

Columns: accuracy, macro F1, mean and minimum per-class recall (over the query's classes),
expected calibration error of the confidence (15 equal-width bins; "-" when a method has none).

    PYTHONPATH=src .venv-bench/bin/python benchmarks/quality.py [--splits 10] [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _shared_data import (  # noqa: E402
    DEFAULT_DATA,
    merfish_hypothalamus,
    seqfish_visual_cortex,
    spacexr_reference,
)

from napari_cellmapper import CellMapper  # noqa: E402
from napari_cellmapper.core.joint_embedding import build_joint_embedding  # noqa: E402

KEY = "cell_type"


@dataclass
class Case:
    """One query to label: ``query.obs['cell_type_true']`` is the truth (NaN: not evaluated)."""

    reference: AnnData
    query: AnnData
    use_rep: str | None


# ------------------------------------------------------------------------------ data sets
def pbmc_cases(n_splits: int) -> Iterator[Case]:
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    for seed in range(n_splits):
        rng = np.random.default_rng(seed)
        in_query = np.zeros(adata.n_obs, bool)
        for t in np.unique(labels):  # stratified 60/40
            rows = np.flatnonzero(labels == t)
            in_query[rng.choice(rows, int(round(0.4 * rows.size)), replace=False)] = True
        ref, query = adata[~in_query].copy(), adata[in_query].copy()
        ref.obs[KEY] = pd.Categorical(labels[~in_query])
        query.obs["cell_type_true"] = labels[in_query]
        yield Case(ref, query, "X_pca")


def cross_platform_case(reference: AnnData, seed: int, panel: float = 0.6, depth: float = 0.25) -> Case:
    """Half of each type becomes a query on a targeted panel with per-gene detection efficiency
    and binomial down-sampling of its counts; the other half stays the reference."""
    rng = np.random.default_rng(seed)
    labels = reference.obs[KEY].astype(str).to_numpy()
    in_query = np.zeros(reference.n_obs, bool)
    for t in np.unique(labels):
        rows = np.flatnonzero(labels == t)
        in_query[rng.choice(rows, rows.size // 2, replace=False)] = True
    genes = rng.choice(reference.n_vars, int(panel * reference.n_vars), replace=False)
    efficiency = np.clip(rng.lognormal(0.0, 0.7, genes.size), 0.02, 3.0) * depth
    x = sparse.csr_matrix(reference.X)[in_query][:, np.sort(genes)].toarray()
    eff = efficiency[np.argsort(np.argsort(genes))]  # efficiencies in sorted-gene order
    counts = rng.binomial(x.astype(np.int64), np.clip(eff, 0, 1)[None, :]).astype(np.float32)
    counts += rng.poisson(np.clip(eff - 1, 0, None)[None, :] * x).astype(np.float32)
    query = AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame(index=reference.obs_names[in_query]),
        var=pd.DataFrame(index=reference.var_names[np.sort(genes)]),
    )
    query.obs["cell_type_true"] = labels[in_query]
    ref = reference[~in_query].copy()
    ref.obs[KEY] = ref.obs[KEY].cat.remove_unused_categories()
    return Case(ref, query, None)


def panel(data: Path, n_splits: int, n_seeds: int) -> dict[str, list[Case]]:
    cases: dict[str, list[Case]] = {}
    if (data / "merfish_hypothalamus").exists():
        ref, query = merfish_hypothalamus(data)
        cases["merfish"] = [Case(ref, query, None)]
    if (data / "seqfish_visual_cortex").exists():
        ref, query = seqfish_visual_cortex(data)
        cases["seqfish"] = [Case(ref, query, None)]
    cases["pbmc"] = list(pbmc_cases(n_splits))
    for which in ("slideseq", "visium"):
        if (data / {"slideseq": "slideseq_cerebellum", "visium": "visium_mouse_hippocampus"}[which]).exists():
            ref = spacexr_reference(data, which)
            cases[f"xplat-{which}"] = [cross_platform_case(ref, seed) for seed in range(n_seeds)]
    return cases


# ------------------------------------------------------------------------------ methods
Prediction = tuple[np.ndarray, np.ndarray | None]


def ours(**kwargs) -> Callable[[Case], Prediction]:
    def run(case: Case) -> Prediction:
        q = case.query.copy()
        CellMapper(q, case.reference).fit(case.use_rep, obs_keys=KEY, progress=False, **kwargs)
        return q.obs[f"{KEY}_pred"].astype(str).to_numpy(), q.obs[f"{KEY}_conf"].to_numpy()

    return run


def _space(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference and query coordinates in the default's joint space, and the usable query cells."""
    if case.use_rep is not None:
        return (
            case.reference.obsm[case.use_rep],
            case.query.obsm[case.use_rep],
            np.ones(case.query.n_obs, bool),
        )
    emb = build_joint_embedding(case.query, case.reference)
    return emb.reference[emb.reference_usable], emb.query, emb.query_usable


def _ref_labels(case: Case) -> np.ndarray:
    labels = case.reference.obs[KEY].astype(str).to_numpy()
    if case.use_rep is None:
        emb = build_joint_embedding(case.query, case.reference)
        labels = labels[emb.reference_usable]
    return labels


def sklearn_baseline(name: str, unit: bool = False) -> Callable[[Case], Prediction]:
    """A scikit-learn classifier trained on the reference in the default's space; ``unit``: with
    the joint space's rows scaled to unit length (the default's space before 2026-12-05, where
    the linear baselines do better; a given ``use_rep`` is left as it is)."""

    def run(case: Case) -> Prediction:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import NearestCentroid
        from sklearn.svm import LinearSVC

        xr, xq, ok = _space(case)
        if unit and case.use_rep is None:
            from napari_cellmapper.core.joint_embedding import l2_normalise

            xr, xq = l2_normalise(np.asarray(xr)), l2_normalise(np.asarray(xq))
        y = _ref_labels(case)
        model = {
            "logreg": lambda: LogisticRegression(max_iter=2000),
            "svm": lambda: LinearSVC(),
            "centroid": lambda: NearestCentroid(),
        }[name]()
        model.fit(xr, y)
        pred = model.predict(xq).astype(object)
        pred[~ok] = "unmapped"
        conf = (
            model.predict_proba(xq).max(axis=1)
            if hasattr(model, "predict_proba") and name == "logreg"
            else None
        )
        return pred.astype(str), conf

    return run


def cellmapper_026(kernel: str, k: int) -> Callable[[Case], Prediction | None]:
    return lambda case: _cellmapper_026(case, kernel, k)


def _cellmapper_026(case: Case, kernel: str, k: int) -> Prediction | None:
    try:
        from cellmapper import CellMapper as ReferenceCellMapper
    except ImportError:
        return None
    import logging

    import scanpy as sc

    logging.disable(logging.WARNING)

    r, q = case.reference.copy(), case.query.copy()
    if case.use_rep is None:
        r = r[np.asarray(r.X.sum(1)).ravel() > 0].copy()
        shared = r.var_names.intersection(q.var_names)
        r, q = r[:, shared].copy(), q[:, shared].copy()
        values = r.X.data if sparse.issparse(r.X) else np.asarray(r.X)
        if np.allclose(values, np.round(values)) and (values == 0).mean() > 0.01:  # counts, not quantiles
            for a in (r, q):
                sc.pp.normalize_total(a)
                sc.pp.log1p(a)
    cm = ReferenceCellMapper(q, r)
    if case.use_rep is None:
        cm.compute_neighbors(n_neighbors=k, use_rep=None, fallback_representation="joint_pca")
    else:
        cm.compute_neighbors(n_neighbors=k, use_rep=case.use_rep, knn_method="sklearn")
    cm.compute_mapping_matrix(kernel_method=kernel)
    cm.map_obs(KEY)
    pred = q.obs[f"{KEY}_pred"].astype(str).reindex(case.query.obs_names).fillna("unmapped").to_numpy()
    conf_col = f"{KEY}_conf"
    conf = q.obs[conf_col].reindex(case.query.obs_names).fillna(0).to_numpy() if conf_col in q.obs else None
    return pred, conf


# ------------------------------------------------------------------------------ metrics
def ece(correct: np.ndarray, confidence: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: mean |accuracy - confidence| over equal-width bins, weighted."""
    bins = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - confidence[sel].mean())
    return total / correct.size


def scores(case: Case, pred: np.ndarray, conf: np.ndarray | None) -> dict[str, float]:
    truth = pd.Series(case.query.obs["cell_type_true"]).to_numpy()
    keep = pd.notna(truth)
    t, p = truth[keep].astype(str), np.asarray(pred)[keep].astype(str)
    correct = t == p
    classes = np.unique(t)
    recall = np.array([correct[t == c].mean() for c in classes])
    precision = np.array([correct[p == c].mean() if (p == c).any() else 0.0 for c in classes])
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(recall), where=precision + recall > 0
    )
    out = {"acc": correct.mean(), "f1": f1.mean(), "recall_mean": recall.mean(), "recall_min": recall.min()}
    out["ece"] = ece(correct, np.asarray(conf)[keep].astype(float)) if conf is not None else np.nan
    return out


def methods(variants: bool) -> dict[str, Callable[[Case], Prediction | None]]:
    out: dict[str, Callable] = {
        "napari-cellmapper default": ours(),
        "napari-cellmapper default before calibration": ours(calibrate=False),
        "napari-cellmapper kNN only (head='none', graph_vote=None, calibrate=False)": ours(
            head="none", graph_vote=None, calibrate=False
        ),
        "napari-cellmapper kNN + graph vote (head='none', calibrate=False)": ours(
            head="none", calibrate=False
        ),
        "cellmapper 0.2.6 (gauss, k=30)": cellmapper_026("gauss", 30),
        "cellmapper 0.2.6 (hnoca, k=10)": cellmapper_026("hnoca", 10),
        "logistic regression": sklearn_baseline("logreg"),
        "linear SVM": sklearn_baseline("svm"),
        "nearest centroid": sklearn_baseline("centroid"),
        "logistic regression, rows at unit length": sklearn_baseline("logreg", unit=True),
        "linear SVM, rows at unit length": sklearn_baseline("svm", unit=True),
        "nearest centroid, rows at unit length": sklearn_baseline("centroid", unit=True),
    }
    if variants:
        out.update(VARIANTS)
    return out


VARIANTS: dict[str, Callable] = {
    "variant: kNN only, calibrated": ours(head="none", graph_vote=None),
    "variant: no graph vote": ours(graph_vote=None),
    "variant: head weight 0.5": ours(head_weight=0.5),
    "variant: head weight 0.4": ours(head_weight=0.4),
    "variant: n_comps=30": ours(n_comps=30),
    "variant: k=15": ours(n_neighbors=15),
    "variant: hnoca": ours(kernel="hnoca"),
    "variant: scaling=gene": ours(scaling="gene"),
}


def _fmt(values: list[float]) -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=10, help="random pbmc splits (10)")
    parser.add_argument("--seeds", type=int, default=5, help="draws of each semi-synthetic case (5)")
    parser.add_argument("--only", nargs="*", default=None, help="data sets to run (default: all)")
    parser.add_argument(
        "--variants", action="store_true", help="also the variants the default was chosen from"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    cases = panel(args.data, args.splits, args.seeds)
    print("| data set | method | accuracy | macro F1 | recall, mean | recall, min | ECE |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in cases.items():
        if args.only and name not in args.only:
            continue
        for label, method in methods(args.variants).items():
            results = []
            for case in runs:
                res = method(case)
                if res is None:
                    break
                results.append(scores(case, *res))
            if not results:
                continue
            cols = [_fmt([r[c] for r in results]) for c in ("acc", "f1", "recall_mean", "recall_min", "ece")]
            n = f" ({len(results)})" if len(results) > 1 else ""
            print(f"| {name}{n} | {label} | " + " | ".join(cols) + " |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
