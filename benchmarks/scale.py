"""Scale benchmark: napari-cellmapper side by side with cellmapper on one synthetic workload.

n_ref = n_query in {10k, 100k, 1M}; 30 dimensions; k = 30; 20 cell types; a 500-gene sparse
expression matrix. The full pipeline is: neighbour search, mapping matrix, labels with
confidence, UMAP, 500-gene expression, presence scores. Every (tool, size, repeat) runs in a fresh
subprocess so peak resident memory is its own. Prints, for each: wall time per stage, total,
peak RSS, recall@k against exact search (on a query sample) and label accuracy (with the accuracy
that exact search gives on the same sample).

cellmapper runs twice per size: with its defaults (``only_yx=False``, which searches four graphs:
what the issue measured, 80.6 s at 100k there) and with ``only_yx=True``, the cheapest call that
still gives every output here (its presence score needs only the query->reference graph). The
speed-up column is given against both.

Run it in the benchmark environment, which has cellmapper (never a project dependency)::

    make bench-env
    .venv-bench/bin/python benchmarks/scale.py --sizes 10000 100000 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

K = 30
SAMPLE = 2000


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


STRUCTURE = os.environ.get("CELLMAPPER_BENCH_STRUCTURE", "structured")


def _data_paths(root: Path, n: int) -> tuple[Path, Path]:
    return root / f"ref_{STRUCTURE}_{n}.h5ad", root / f"query_{STRUCTURE}_{n}.h5ad"


def prepare(root: Path, n: int) -> None:
    """Write the synthetic pair for size n (once)."""
    from synthetic import make_pair

    ref_path, query_path = _data_paths(root, n)
    if ref_path.exists() and query_path.exists():
        return
    reference, query = make_pair(n, n, structure=STRUCTURE)
    reference.write_h5ad(ref_path)
    query.write_h5ad(query_path)


def _sample_rows(n: int) -> np.ndarray:  # noqa: F821
    import numpy as np

    return np.sort(np.random.default_rng(7).choice(n, min(SAMPLE, n), replace=False))


def _exact_reference(query_rep, ref_rep, rows):
    import faiss
    import numpy as np

    d2, idx = faiss.knn(
        np.ascontiguousarray(query_rep[rows], dtype=np.float32),
        np.ascontiguousarray(ref_rep, dtype=np.float32),
        K,
    )
    return np.sqrt(np.maximum(d2, 0)).astype(np.float32), idx


def _exact_accuracy(query, reference, rows, kernel: str = "gauss") -> float:
    """Accuracy on the sample when the neighbours are exact (same kernel and transfer)."""
    import numpy as np

    from napari_cellmapper.core.kernels import mapping_matrix
    from napari_cellmapper.core.progress import run_steps
    from napari_cellmapper.core.search.neighbors import Neighbors
    from napari_cellmapper.core.transfer import category_codes, iter_transfer_labels

    dist, idx = _exact_reference(query.obsm["X_joint"], reference.obsm["X_joint"], rows)
    nb = Neighbors(idx.astype(np.int64), dist, "euclidean", "faiss-exact", reference.n_obs)
    codes, cats = category_codes(reference.obs["cell_type"])
    res = run_steps(iter_transfer_labels(mapping_matrix(nb, kernel), codes, cats))
    pred = np.asarray(cats)[res.codes]
    return float((pred == query.obs["cell_type_true"].astype(str).to_numpy()[rows]).mean())


def run_ours(root: Path, n: int, backend: str, presence: bool = True) -> dict:
    import anndata as ad

    from napari_cellmapper.core.pipeline import MappingParams, annotate
    from napari_cellmapper.core.search.faiss_index import recall_at_k

    ref_path, query_path = _data_paths(root, n)
    reference, query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
    rss_data = _peak_rss_gb()
    stages: dict[str, float] = {}
    state = {"stage": None, "t": time.perf_counter()}

    def on_progress(event) -> None:
        now = time.perf_counter()
        if event.stage != state["stage"]:
            if state["stage"] is not None:
                stages[state["stage"]] = stages.get(state["stage"], 0.0) + now - state["t"]
            state.update(stage=event.stage, t=now)

    params = MappingParams(
        use_rep="X_joint", obs_keys=("cell_type",), obsm_keys=("X_umap",), layer_key="X",
        n_neighbors=K, backend=backend, presence=presence, quality=False,
    )  # fmt: skip
    start = time.perf_counter()
    cmap = annotate(query, reference, params, progress=on_progress)
    total = time.perf_counter() - start
    stages[state["stage"]] = stages.get(state["stage"], 0.0) + time.perf_counter() - state["t"]
    rows = _sample_rows(query.n_obs)
    _, exact_idx = _exact_reference(query.obsm["X_joint"], reference.obsm["X_joint"], rows)
    truth = query.obs["cell_type_true"].astype(str).to_numpy()
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    return {
        "tool": "napari-cellmapper",
        "backend": cmap.params["backend"],
        "n": n,
        "total_s": total,
        "stages": stages,
        "peak_rss_gb": _peak_rss_gb(),
        "data_rss_gb": rss_data,
        "recall": recall_at_k(cmap.neighbors.indices[rows], exact_idx),
        "accuracy": float((pred == truth).mean()),
        "accuracy_sample": float((pred[rows] == truth[rows]).mean()),
        "accuracy_exact_sample": _exact_accuracy(query, reference, rows),
        "nprobe": cmap.params.get("nprobe"),
        "nlist": cmap.params.get("nlist"),
    }


CELLMAPPER_VARIANTS = {
    # what the issue measured (80.6 s at 100k): cellmapper's defaults, which search all four
    # graphs (query->ref, ref->query, ref->ref, query->query)
    "cellmapper": {"only_yx": False},
    # the cheapest call that still gives every output here (its presence score uses only yx)
    "cellmapper-yx": {"only_yx": True},
}


def run_cellmapper(root: Path, n: int, tool: str = "cellmapper", knn_method: str = "faiss-cpu") -> dict:
    import anndata as ad
    import numpy as np
    from cellmapper import CellMapper as ReferenceCellMapper

    from napari_cellmapper.core.search.faiss_index import recall_at_k

    ref_path, query_path = _data_paths(root, n)
    reference, query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
    rss_data = _peak_rss_gb()
    stages = {}
    cm = ReferenceCellMapper(query, reference)
    start = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    cm.compute_neighbors(n_neighbors=K, use_rep="X_joint", knn_method=knn_method, **CELLMAPPER_VARIANTS[tool])
    lap("neighbour search")
    cm.compute_mapping_matrix(kernel_method="gauss")
    lap("mapping matrix")
    cm.map_obs("cell_type")
    lap("transfer cell_type")
    cm.map_obsm("X_umap")
    lap("transfer X_umap")
    cm.map_layers("X")
    lap("transfer expression")
    cm.compute_presence_score()
    lap("presence scores")
    total = time.perf_counter() - start
    rows = _sample_rows(query.n_obs)
    _, exact_idx = _exact_reference(query.obsm["X_joint"], reference.obsm["X_joint"], rows)
    idx = cm.knn.yx.indices
    truth = query.obs["cell_type_true"].astype(str).to_numpy()
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    return {
        "tool": tool,
        "backend": f"{knn_method}, only_yx={CELLMAPPER_VARIANTS[tool]['only_yx']}",
        "n": n,
        "total_s": total,
        "stages": stages,
        "peak_rss_gb": _peak_rss_gb(),
        "data_rss_gb": rss_data,
        "recall": recall_at_k(np.asarray(idx)[rows], exact_idx),
        "accuracy": float((pred == truth).mean()),
        "accuracy_sample": float((pred[rows] == truth[rows]).mean()),
    }


def _worker(args: argparse.Namespace) -> None:
    root = Path(args.data_dir)
    if args.worker == "ours":
        out = run_ours(root, args.n, args.backend, presence=not args.no_presence)
    else:
        out = run_cellmapper(root, args.n, args.worker)
    print("RESULT " + json.dumps(out))


def _spawn(tool: str, n: int, data_dir: Path, backend: str, presence: bool = True) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--n",
        str(n),
        "--data-dir",
        str(data_dir),
        "--backend",
        backend,
        *([] if presence else ["--no-presence"]),
    ]
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{tool} n={n} failed:\n{proc.stderr[-3000:]}")


def _fmt_table(results: list[dict]) -> str:
    lines = [
        "| n | tool | backend | total s (median) | runs | search s | other stages s | peak RSS GB "
        "| recall@30 | accuracy | exact-search accuracy (sample) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_n: dict[int, dict[str, float]] = {}
    for r in results:
        by_n.setdefault(r["n"], {})[r["tool"]] = r["total_s"]
    for r in results:
        search = sum(v for k, v in r["stages"].items() if "neighbour" in k or "index" in k)
        other = ", ".join(
            f"{k} {v:.2f}" for k, v in r["stages"].items() if not ("neighbour" in k or "index" in k)
        )
        speed = (
            ", ".join(
                f"{by_n[r['n']][v] / r['total_s']:.1f}x vs {v}"
                for v in CELLMAPPER_VARIANTS
                if v in by_n[r["n"]]
            )
            if r["tool"] not in CELLMAPPER_VARIANTS
            else ""
        )
        exact = (
            f"{r['accuracy_exact_sample']:.4f} (ours on sample {r['accuracy_sample']:.4f})"
            if "accuracy_exact_sample" in r
            else ""
        )
        lines.append(
            f"| {r['n']:,} | {r['tool']} | {r['backend']} | {r['total_s']:.2f} "
            f"| {', '.join(f'{t:.2f}' for t in r['runs'])} | {search:.2f} | {other} "
            f"| {r['peak_rss_gb']:.2f} | {r['recall']:.4f} | {r['accuracy']:.4f} | {exact} | {speed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cellmapper-max", type=int, default=100_000, help="largest size run through cellmapper"
    )
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--structure", choices=["structured", "isotropic"], default=None,
        help="synthetic latent space (see synthetic.make_pair); default structured",
    )  # fmt: skip
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--cellmapper-variants", nargs="+", choices=list(CELLMAPPER_VARIANTS),
        default=list(CELLMAPPER_VARIANTS), help="which cellmapper calls to run (default both)",
    )  # fmt: skip
    parser.add_argument("--worker", choices=["ours", *CELLMAPPER_VARIANTS], default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument(
        "--no-presence", action="store_true",
        help="our run without presence scores (no reference graph unless the labels' graph vote needs it)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.structure:
        os.environ["CELLMAPPER_BENCH_STRUCTURE"] = args.structure
        global STRUCTURE
        STRUCTURE = args.structure
    if args.worker:
        _worker(args)
        return
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="cellmapper-scale-"))
    # numba compiles the expression kernels once per machine (cached on disk); do it before timing
    subprocess.run(
        [sys.executable, "-c", "from napari_cellmapper.core.sparse_product import warm_up; warm_up().join()"],
        check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")},
    )  # fmt: skip
    results = []
    for n in args.sizes:
        prepare(data_dir, n)
        tools = ["ours"] + (args.cellmapper_variants if n <= args.cellmapper_max else [])
        for tool in tools:
            runs = [
                _spawn(tool, n, data_dir, args.backend, not args.no_presence) for _ in range(args.repeats)
            ]
            runs.sort(key=lambda r: r["total_s"])
            best = runs[len(runs) // 2]
            best["runs"] = [r["total_s"] for r in runs]
            best["stages"] = {
                k: statistics.median(r["stages"].get(k, 0.0) for r in runs) for k in best["stages"]
            }
            results.append(best)
            print(
                f"n={n:,} {tool}: median {best['total_s']:.2f} s over {len(runs)} runs",
                file=sys.stderr,
                flush=True,
            )
    print(_fmt_table(results))
    print(f"\n(structure {STRUCTURE}; data in {data_dir}; machine: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
