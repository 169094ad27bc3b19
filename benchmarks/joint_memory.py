"""Peak memory and time of ``use_rep=None`` on whole-transcriptome sparse data.

Synthetic counts: ``--reference`` + ``--query`` cells x ``--genes`` genes, ``--per-cell`` detected
genes per cell (CSR, float32 values, int32 indices), 10 cell types that each favour their own
part of the genome. Builds the joint embedding from the shared genes (highly variable selection
and the implicit sparse PCA) and maps the labels; prints the time, the input size and the
process's peak RSS (which includes the inputs).

    PYTHONPATH=src .venv/bin/python benchmarks/joint_memory.py --reference 150000 --query 50000 --genes 20000
    PYTHONPATH=src .venv/bin/python benchmarks/joint_memory.py --reference 50000 --query 300000 \
        --genes 5000 --per-cell 300
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cellmapper import CellMapper  # noqa: E402


def counts(n: int, n_genes: int, per_cell: int, seed: int, prefix: str) -> AnnData:
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 10, n)
    indptr = np.arange(0, (n + 1) * per_cell, per_cell, dtype=np.int64)
    indices = np.empty(n * per_cell, np.int32)
    data = np.empty(n * per_cell, np.float32)
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        first = types[start:stop] * (n_genes // 10) + rng.integers(0, n_genes // 50, stop - start)
        cols = (first[:, None] + np.arange(per_cell)[None, :]) % n_genes  # a block of the genome
        indices[start * per_cell : stop * per_cell] = np.sort(cols, axis=1).ravel()
        data[start * per_cell : stop * per_cell] = rng.poisson(1.5, (stop - start) * per_cell) + 1
    x = sparse.csr_matrix((data, indices, indptr), shape=(n, n_genes))
    adata = AnnData(X=x, obs=pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)]))
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.obs["cell_type"] = pd.Categorical(types.astype(str))
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=int, default=150_000)
    parser.add_argument("--query", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--per-cell", type=int, default=1000)
    parser.add_argument("--n-top-genes", type=int, default=2000, help="0: all shared genes")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    reference = counts(args.reference, args.genes, args.per_cell, 1, "r")
    query = counts(args.query, args.genes, args.per_cell, 2, "q")
    truth = query.obs.pop("cell_type").to_numpy()
    inputs = sum(a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes for a in (reference, query))
    started = time.perf_counter()
    cmap = CellMapper(query, reference).fit(
        None, obs_keys="cell_type", n_top_genes=args.n_top_genes or None, progress=False
    )
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    acc = float(np.mean(query.obs["cell_type_pred"].astype(str).to_numpy() == truth))
    joint = cmap.params["joint"]
    print(
        f"{args.reference:,} + {args.query:,} cells x {args.genes:,} genes, {args.per_cell} per cell: "
        f"inputs {inputs / 1e9:.2f} GB; fit {elapsed:.1f} s; peak RSS {peak:.2f} GB; accuracy {acc:.3f}; "
        f"{joint['gene_selection']}; {joint['solver']}"
    )


if __name__ == "__main__":
    main()
