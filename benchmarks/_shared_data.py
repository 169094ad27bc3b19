"""Loaders for the real data sets in ``../shared/data`` (never copied into the project)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NOT_CELL_TYPES = ("Ambiguous", "Unstable")


def _counts_csv(path: Path) -> tuple[sparse.csr_matrix, list[str], list[str]]:
    """A genes x cells CSV (first column: gene) as a cells x genes CSR matrix."""
    table = pd.read_csv(path, index_col=0)
    return sparse.csr_matrix(table.to_numpy(dtype=np.float32).T), list(table.columns), list(table.index)


def merfish_hypothalamus(data_dir: Path = DEFAULT_DATA) -> tuple[AnnData, AnnData]:
    """(reference, query) of the MERFISH hypothalamus set, raw counts, labels as in its README.

    The reference drops the ``Ambiguous``/``Unstable`` pseudo-types; the query carries the ground
    truth in ``obs["cell_type_true"]`` (NaN for ``Ambiguous`` cells, which are not evaluated).
    """
    root = Path(data_dir) / "merfish_hypothalamus"
    x, cells, genes = _counts_csv(root / "spacexr/Reference/Merfish_Ref/counts.csv")
    types = pd.read_csv(root / "spacexr/Reference/Merfish_Ref/cell_types.csv", index_col=0)["x"]
    reference = AnnData(
        X=x, obs=pd.DataFrame(index=pd.Index(cells, name=None)), var=pd.DataFrame(index=genes)
    )
    reference.obs["cell_type"] = pd.Categorical(types.reindex(reference.obs_names).astype(str))
    reference = reference[~reference.obs["cell_type"].isin(NOT_CELL_TYPES)].copy()
    reference.obs["cell_type"] = reference.obs["cell_type"].cat.remove_unused_categories()
    xq, qcells, qgenes = _counts_csv(root / "spacexr/SpatialRNA/MerfishVignette/counts.csv")
    query = AnnData(X=xq, obs=pd.DataFrame(index=pd.Index(qcells)), var=pd.DataFrame(index=qgenes))
    coords = pd.read_csv(root / "spacexr/SpatialRNA/MerfishVignette/coords.csv", index_col=0)
    query.obsm["spatial"] = coords.reindex(query.obs_names)[["x", "y"]].to_numpy()
    truth = pd.read_csv(root / "ground_truth_labels.csv", index_col="cell_id").reindex(query.obs_names)
    label = truth["cell_type_coarse_ref_vocab"].where(truth["cell_type_ground_truth"] != "Ambiguous")
    query.obs["cell_type_true"] = label.to_numpy()
    return reference, query


def seqfish_visual_cortex(data_dir: Path = DEFAULT_DATA) -> tuple[AnnData, AnnData]:
    """(reference, query) of the seqFISH visual cortex set: quantile-normalised integers, not counts.

    The query's ``obs["cell_type_true"]`` holds the published (SVM-derived) labels, which use the
    reference's names without the " Neuron"/" Cell" suffixes; they are mapped onto its vocabulary.
    """
    root = Path(data_dir) / "seqfish_visual_cortex" / "ssenet_extdata"

    def table(name: str) -> tuple[np.ndarray, list[str]]:
        t = pd.read_csv(root / name, sep="\t", header=None, index_col=0)
        return t.to_numpy(dtype=np.float32).T, list(t.index)

    xr, genes = table("tasic_training_b2.txt")
    xq, qgenes = table("seqfish_cortex_b2_testing.txt")
    ref_labels = pd.read_csv(root / "tasic_labels.tsv", sep="\t", header=None)
    q_labels = pd.read_csv(root / "seqfish_labels.tsv", sep="\t", header=None)
    reference = AnnData(
        X=xr, obs=pd.DataFrame(index=ref_labels[1].astype(str).to_numpy()), var=pd.DataFrame(index=genes)
    )
    reference.obs["cell_type"] = pd.Categorical(ref_labels[0].astype(str).to_numpy())
    query = AnnData(
        X=xq, obs=pd.DataFrame(index=[f"seqfish_{i}" for i in q_labels[0]]), var=pd.DataFrame(index=qgenes)
    )
    vocab = {name.split(" ")[0]: name for name in reference.obs["cell_type"].cat.categories}
    query.obs["cell_type_true"] = [vocab.get(v.split(" ")[0], v) for v in q_labels[2].astype(str)]
    return reference, query


def spacexr_reference(data_dir: Path = DEFAULT_DATA, which: str = "slideseq") -> AnnData:
    """A labelled spacexr reference as AnnData (counts, ``obs["cell_type"]``): ``"slideseq"``
    (cerebellum snRNA-seq, 475 cells x 384 genes) or ``"visium"`` (hippocampus, 510 x 307)."""
    if which == "slideseq":
        root = Path(data_dir) / "slideseq_cerebellum/spacexr/Reference/Vignette"
        x, cells, genes = _counts_csv(root / "dge.csv")
        meta = pd.read_csv(root / "meta_data.csv", index_col=0)
        names = pd.read_csv(root / "cell_type_dict.csv")
        lookup = dict(zip(names.iloc[:, 0], names.iloc[:, 1], strict=True))
        labels = meta.reindex(cells)["cluster"].map(lookup).astype(str).to_numpy()
    else:
        root = Path(data_dir) / "visium_mouse_hippocampus/spacexr/Reference/Visium_Ref"
        x, cells, genes = _counts_csv(root / "counts.csv")
        labels = pd.read_csv(root / "cell_types.csv", index_col=0)["x"].reindex(cells).astype(str).to_numpy()
    ref = AnnData(X=x, obs=pd.DataFrame(index=pd.Index(cells)), var=pd.DataFrame(index=genes))
    ref.obs["cell_type"] = pd.Categorical(labels)
    return ref
