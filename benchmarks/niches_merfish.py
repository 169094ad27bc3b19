"""Niches on a semi-synthetic tissue: 73,655 real MERFISH cell positions and classes.

The tissue: the real positions (12 slices) and author cell classes of Moffitt et al. 2018
(``merfish_hypothalamus/giotto_spatial_datasets/cell_locations``), classes mapped onto the
scRNA-seq reference vocabulary (OD Mature * -> Mature oligodendrocyte, Pericytes -> Mural, ...).
``Ambiguous`` cells have no class and are left out. Expression of every cell is drawn from the
reference profile of its type: a random reference cell of that type (non-zero counts), its counts
Poisson-resampled at a per-cell capture efficiency (log-normal, median 0.5).

Then, per slice (slices are kept apart: no neighbour crosses a slice), niches from
  A. the true classes (one-hot)                         -> the reference partition,
  B. the cell types transferred by CellMapper (obsm["cell_type_proba"], expression only),
  C. the true classes with a fraction of labels randomised (``--label-noise``),
  D. the true classes again with another k-means seed (the clustering's own stability),
all clustered together across slices (one niche vocabulary), and the adjusted Rand index of B, C,
D against A, per slice and overall, plus A's niche x cell-type composition and what each niche is.

    PYTHONPATH=src .venv/bin/python benchmarks/niches_merfish.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from napari_cellmapper.core.metrics import accuracy, macro_f1  # noqa: E402
from napari_cellmapper.core.niches import compute_niches, describe_niches, one_hot  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
# MERFISH classes -> reference vocabulary (as in merfish_hypothalamus/derive_ground_truth.py)
COARSE = {
    "Astrocyte": "Astrocytes", "Inhibitory": "Inhibitory", "Excitatory": "Excitatory",
    "Ependymal": "Ependymal", "Microglia": "Microglia", "Pericytes": "Mural",
    "Endothelial 1": "Endothelial", "Endothelial 2": "Endothelial", "Endothelial 3": "Endothelial",
    "OD Mature 1": "Mature oligodendrocyte", "OD Mature 2": "Mature oligodendrocyte",
    "OD Mature 3": "Mature oligodendrocyte", "OD Mature 4": "Mature oligodendrocyte",
    "OD Immature 1": "Immature oligodendrocyte", "OD Immature 2": "Immature oligodendrocyte",
}  # fmt: skip
NOT_CELL_TYPES = ("Ambiguous", "Unstable")
SLICE_GAP = 1e7  # z offset that keeps slices apart in the spatial graph


def load_tissue(data: Path) -> pd.DataFrame:
    """Positions, slice and class of the MERFISH cells (Ambiguous dropped)."""
    folder = data / "merfish_hypothalamus" / "giotto_spatial_datasets" / "cell_locations"
    loc = pd.read_csv(folder / "merFISH_3D_data_cell_locations.txt", sep="\t")
    meta = pd.read_csv(folder / "merFISH_3D_metadata.txt", sep="\t")
    if len(loc) != len(meta):
        raise SystemExit(f"locations ({len(loc)}) and metadata ({len(meta)}) are not row-aligned")
    table = pd.concat([loc, meta], axis=1)
    table["cell_type"] = table["orig_cell_types"].map(COARSE)
    print(
        f"MERFISH cells: {len(table):,} in {table.z.nunique()} slices; "
        f"{table.cell_type.isna().sum():,} Ambiguous left out"
    )
    return table[table.cell_type.notna()].reset_index(drop=True)


def load_reference(data: Path):
    from anndata import AnnData
    from scipy import sparse

    root = data / "merfish_hypothalamus" / "spacexr" / "Reference" / "Merfish_Ref"
    counts = pd.read_csv(root / "counts.csv", index_col=0)
    types = pd.read_csv(root / "cell_types.csv", index_col=0)["x"].reindex(counts.columns).astype(str)
    keep = ~types.isin(NOT_CELL_TYPES).to_numpy()
    ref = AnnData(
        X=sparse.csr_matrix(counts.to_numpy(dtype=np.float32).T[keep]),
        obs=pd.DataFrame({"cell_type": pd.Categorical(types[keep].to_numpy())}, index=counts.columns[keep]),
        var=pd.DataFrame(index=counts.index.astype(str)),
    )
    return ref


def draw_expression(tissue: pd.DataFrame, ref, rng: np.random.Generator):
    """Counts per MERFISH cell: a random reference cell of its type, Poisson-resampled."""
    from anndata import AnnData
    from scipy import sparse

    x = ref.X.toarray()
    libsize = x.sum(axis=1)
    out = np.zeros((len(tissue), x.shape[1]), dtype=np.float32)
    for cell_type, rows in tissue.groupby("cell_type").indices.items():
        pool = np.flatnonzero((ref.obs["cell_type"].to_numpy() == cell_type) & (libsize > 0))
        if pool.size == 0:
            raise SystemExit(f"no reference cell of type {cell_type!r}")
        pick = rng.choice(pool, size=len(rows))
        efficiency = np.exp(rng.normal(np.log(0.5), 0.3, size=(len(rows), 1)))
        out[rows] = rng.poisson(x[pick] * efficiency)
    query = AnnData(
        X=sparse.csr_matrix(out),
        obs=pd.DataFrame(
            {"cell_type_true": tissue["cell_type"].to_numpy()}, index=[f"m{i}" for i in range(len(tissue))]
        ),
        var=pd.DataFrame(index=ref.var_names.copy()),
    )
    query.obsm["spatial"] = tissue[["x", "y"]].to_numpy()
    return query


def transfer(query, ref, k: int):
    """Cell-type probabilities from the CellMapper engine (joint PCA on counts, gauss kernel)."""
    from napari_cellmapper import CellMapper

    t0 = time.perf_counter()
    CellMapper(query, ref).fit(None, obs_keys="cell_type", n_neighbors=k, progress=False)
    proba = query.obsm["cell_type_proba"]
    proba = pd.DataFrame(
        np.asarray(proba), columns=[str(c) for c in getattr(proba, "columns", range(proba.shape[1]))]
    )
    return proba, query.obs["cell_type_pred"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default ../shared/data)"
    )
    parser.add_argument("--n-niches", type=int, default=8)
    parser.add_argument(
        "--n-neighbors", type=int, default=15, help="spatial neighbours per cell (self included)"
    )
    parser.add_argument("--n-hops", type=int, default=2)
    parser.add_argument("--k", type=int, default=30, help="reference neighbours for the mapping")
    parser.add_argument("--label-noise", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mapping", action="store_true", help="skip the CellMapper transfer (B)")
    args = parser.parse_args()
    data = args.data.resolve()
    if not (data / "merfish_hypothalamus").is_dir():
        raise SystemExit(f"{data}/merfish_hypothalamus not found; pass --data path/to/shared/data")
    rng = np.random.default_rng(args.seed)

    tissue = load_tissue(data)
    ref = load_reference(data)
    types = [str(c) for c in ref.obs["cell_type"].cat.categories]
    coords = np.column_stack([tissue.x, tissue.y, (tissue.z - tissue.z.min()) * SLICE_GAP])
    truth, _ = one_hot(tissue["cell_type"].to_numpy(), types)
    opts = dict(n_neighbors=args.n_neighbors, n_hops=args.n_hops, cell_types=types)

    t0 = time.perf_counter()
    niches_a = compute_niches(coords, truth, args.n_niches, seed=args.seed, **opts)
    t_niche = time.perf_counter() - t0
    a = niches_a.labels.codes
    runs: dict[str, np.ndarray] = {}

    if not args.no_mapping:
        try:
            from napari_cellmapper import CellMapper  # noqa: F401
        except ImportError as err:  # the engine is not importable: classes only
            print(f"CellMapper not importable ({err}); skipping the transfer (B)")
            args.no_mapping = True
    if not args.no_mapping:
        query = draw_expression(tissue, ref, rng)
        proba, pred, t_map = transfer(query, ref, args.k)
        proba = proba.reindex(columns=types, fill_value=0.0)
        true_labels = tissue["cell_type"].to_numpy()
        print(
            f"transfer (CellMapper, k={args.k}, {len(tissue):,} cells, {t_map:.1f} s): "
            f"accuracy {accuracy(true_labels, pred):.3f}, macro F1 {macro_f1(true_labels, pred):.3f}"
        )
        runs["B transferred proba"] = compute_niches(
            coords, proba.to_numpy(np.float32), args.n_niches, seed=args.seed, **opts
        ).labels.codes
        runs["B' transferred labels (one-hot)"] = compute_niches(
            coords,
            np.asarray(pred, dtype=object),
            args.n_niches,
            seed=args.seed,
            **{**opts, "cell_types": types},
        ).labels.codes
    noisy = tissue["cell_type"].to_numpy().copy()
    flip = rng.random(len(noisy)) < args.label_noise
    noisy[flip] = rng.choice(types, size=int(flip.sum()))
    runs[f"C classes, {args.label_noise:.0%} labels randomised"] = compute_niches(
        coords, noisy, args.n_niches, seed=args.seed, **opts
    ).labels.codes
    runs["D classes, other k-means seed"] = compute_niches(
        coords, truth, args.n_niches, seed=args.seed + 1, **opts
    ).labels.codes

    print(
        f"\nniches: n_niches={args.n_niches}, {args.n_neighbors} spatial neighbours, {args.n_hops} hops; "
        f"{len(tissue):,} cells in {t_niche:.1f} s"
    )
    print("\nAdjusted Rand index against A (niches from the true classes), per slice:")
    slices = np.sort(tissue.z.unique())
    rows = []
    for name, labels in runs.items():
        row = {"run": name, "all": adjusted_rand_score(a, labels)}
        for z in slices:
            m = (tissue.z == z).to_numpy()
            row[f"z={z:g}"] = adjusted_rand_score(a[m], labels[m])
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run")
    with pd.option_context(
        "display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format
    ):
        print(table.T.to_string())

    print("\nPer niche of A: Jaccard overlap with the best-matching niche of each run")
    match_rows = {}
    for name, labels in runs.items():
        col = {}
        for niche in range(args.n_niches):
            in_a = a == niche
            best = np.bincount(labels[in_a], minlength=args.n_niches).argmax()
            in_b = labels == best
            col[str(niche)] = (in_a & in_b).sum() / max((in_a | in_b).sum(), 1)
        match_rows[name.split(" ")[0]] = col
    with pd.option_context("display.float_format", "{:.2f}".format):
        print(pd.DataFrame(match_rows).rename_axis("niche of A").to_string())

    comp = niches_a.composition
    sizes = pd.Series(a).value_counts().sort_index()
    print("\nA: niche x cell-type composition (% of the niche's cells):")
    show = (100 * comp.loc[:, comp.sum(axis=0) > 0]).round(1)  # types absent from the tissue hidden
    show.insert(0, "cells", sizes.to_numpy())
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(show.to_string())
    print("\nWhat each niche is (top types; share of slices where it occurs):")
    desc = describe_niches(comp, top=3, min_fraction=0.05)
    overall = truth.mean(axis=0)
    for niche, text in desc.items():
        m = a == int(niche)
        enriched = (comp.loc[niche] / np.maximum(overall, 1e-9)).sort_values(ascending=False)
        top_enriched = ", ".join(f"{t} x{v:.1f}" for t, v in enriched.iloc[:2].items() if v > 1.2)
        per_slice = pd.Series(tissue.z.to_numpy()[m]).value_counts()
        print(
            f"  niche {niche}: {m.sum():6d} cells | {text} | enriched: {top_enriched or '-'} | "
            f"in {len(per_slice)}/{len(slices)} slices"
        )


if __name__ == "__main__":
    main()
