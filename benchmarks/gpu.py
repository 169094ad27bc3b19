"""GPU benchmark (issue 12): the whole mapping on one GPU at 100k, 1M and 1.5M cells, per stage.

Workload per size n (query = reference = n cells, ``synthetic.make_pair``): a 50-dimensional
joint space, 20 cell types, k = 30; labels with confidence, the UMAP and a 500-gene sparse
expression transfer. Data are generated on the host first (not timed), like data a user has
loaded. Each stage runs through the public step API of :class:`CellMapper` and is timed on its
own (search, mapping matrix, labels, UMAP, expression); a first run compiles the CUDA kernels and
is reported apart. Also reported, on a sample of query cells:

- recall@k of the GPU search against exact search (float64 on the host, in reference blocks);
- accuracy against the true types, and the accuracy of the exact CPU path on the same sample
  (faiss-exact, same kernel and sigma), which the GPU path must equal.

Tables go to stdout and, as Markdown and JSON, to ``--out`` (``$OUT`` on the device machine).

On the GPU machine (it reaches no package registry; the few wheels it lacks travel along)::

    bash tools/gpu_wheels.sh                 # here: wheels the GPU machine lacks -> .gpu-wheels/
    bash benchmarks/gpu_device.sh            # there (carry .gpu-wheels): GPU tests, then this script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

STAGES = ("search", "mapping matrix", "labels", "umap", "expression")


def exact_neighbors(query: np.ndarray, reference: np.ndarray, k: int, block: int = 100_000):
    """Exact k nearest reference rows of each query row: (squared distances, indices), float64."""
    q = query.astype(np.float64)
    q_sq = (q * q).sum(1)[:, None]
    best_d = np.full((q.shape[0], k), np.inf)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for r0 in range(0, reference.shape[0], block):
        r = reference[r0 : r0 + block].astype(np.float64)
        d2 = q_sq - 2 * q @ r.T + (r * r).sum(1)[None, :]
        cand_d = np.concatenate([best_d, d2], axis=1)
        block_i = np.broadcast_to(np.arange(r0, r0 + r.shape[0]), d2.shape)
        cand_i = np.concatenate([best_i, block_i], axis=1)
        keep = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(cand_d, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    order = np.argsort(best_d, axis=1, kind="stable")
    return np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k nearest neighbours that the search found."""
    hits = [np.intersect1d(f[f >= 0], e).size for f, e in zip(found, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


def run_stages(query, reference, k: int, backend: str, sigma: float | None = None) -> tuple[dict, object]:
    """One mapping through the step API; seconds per stage and the mapper."""
    from napari_cellmapper import CellMapper

    cmap = CellMapper(query, reference)
    times = {}
    steps = (
        ("search", lambda: cmap.compute_neighbors("X_joint", k, backend=backend, progress=False)),
        ("mapping matrix", lambda: cmap.compute_mapping_matrix("gauss", sigma=sigma)),
        ("labels", lambda: cmap.transfer(obs_keys="cell_type", progress=False)),
        ("umap", lambda: cmap.transfer(obsm_keys="X_umap", progress=False)),
        ("expression", lambda: cmap.transfer(layer_key="X", progress=False)),
    )
    for name, step in steps:
        start = time.perf_counter()
        step()
        times[name] = time.perf_counter() - start
    times["total"] = sum(times[s] for s in STAGES)
    return times, cmap


def accuracy(adata, rows=None) -> float:
    pred = adata.obs["cell_type_pred"].astype(str).to_numpy()
    true = adata.obs["cell_type_true"].astype(str).to_numpy()
    return float((pred == true)[slice(None) if rows is None else rows].mean())


def measure(n: int, backend: str, data: tuple, args) -> dict:
    reference, query, generated = data
    runs = []
    for _ in range(args.repeats + 1):  # run 0 compiles the CUDA kernels
        q = query.copy()
        times, cmap = run_stages(q, reference, args.k, backend)
        runs.append(times)
    warm = runs[1:]
    prov = q.uns["cellmapper"]
    row = {
        "n": n,
        "backend": cmap.neighbors.backend,
        "nprobe": prov.get("nprobe"),
        "generate_s": generated,
        "first_run_s": runs[0]["total"],
        **{f"{s}_s": statistics.median(r[s] for r in warm) for s in (*STAGES, "total")},
        "runs_total_s": [r["total"] for r in warm],
        "accuracy": accuracy(q),
    }
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    rep_q, rep_r = q.obsm["X_joint"], reference.obsm["X_joint"]
    _, exact_idx = exact_neighbors(rep_q[sample], rep_r, args.k)
    row["recall"] = recall_at_k(cmap.neighbors.indices[sample], exact_idx)
    row["accuracy_sample"] = accuracy(q, sample)
    try:
        import faiss  # noqa: F401
    except ImportError:
        row["accuracy_cpu_sample"] = None
    else:  # the CPU path on the same cells, same kernel and bandwidth
        cpu_q = query[sample].copy()
        sigma = cmap.query.uns["cellmapper"].get("sigma")
        run_stages(cpu_q, reference, args.k, "faiss-exact", sigma=sigma)
        row["accuracy_cpu_sample"] = accuracy(cpu_q)
    return row


def markdown(rows: list[dict], device: str, args) -> str:
    head = (
        f"{device}: query = reference = n, {args.dim} dims, k = {args.k}, {args.types} types, 500 genes; "
        f"medians of {args.repeats} warm runs (run 0 compiles the kernels)\n\n"
        "| n | backend | search | mapping matrix | labels | UMAP | expression | **total** | first run | "
        "recall@k | accuracy | accuracy on sample: GPU / CPU exact |\n|" + "---|" * 12 + "\n"
    )
    lines = []
    for r in rows:
        cpu = "n/a" if r["accuracy_cpu_sample"] is None else f"{r['accuracy_cpu_sample']:.4f}"
        probes = "" if r["nprobe"] is None else f" (nprobe {r['nprobe']})"
        lines.append(
            f"| {r['n']:,} | {r['backend']}{probes} | "
            + " | ".join(f"{r[f'{s}_s']:.3f} s" for s in STAGES)
            + f" | **{r['total_s']:.2f} s** | {r['first_run_s']:.2f} s | {r['recall']:.4f} | "
            f"{r['accuracy']:.4f} | {r['accuracy_sample']:.4f} / {cpu} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 1_500_000])
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--types", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=2_000, help="query cells for recall and the CPU check")
    parser.add_argument(
        "--backends", nargs="+", default=["cupy", "cupy-ivf"],
        help="GPU backends to compare (exact brute force, inverted file); faiss-exact runs it on a CPU",
    )  # fmt: skip
    parser.add_argument("--out", default=os.environ.get("OUT", str(HERE / "results")))
    args = parser.parse_args()

    from synthetic import make_pair

    from napari_cellmapper.core.search.neighbors import gpu_available

    on_gpu = any(b.startswith("cupy") for b in args.backends)
    if on_gpu and not gpu_available():
        sys.exit("No GPU (cupy + CUDA device) here: nothing to measure (--backends faiss-exact: CPU).")
    device = "CPU"
    if on_gpu:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        start = time.perf_counter()
        reference, query = make_pair(n, n, dim=args.dim, n_types=args.types, seed=n % 9973)
        data = (reference, query, time.perf_counter() - start)
        for backend in args.backends:
            rows.append(measure(n, backend, data, args))
            print(markdown(rows[-1:], device, args), flush=True)
            write_tables(out, rows, device, args)  # after every row: a run cut short keeps them
    print(markdown(rows, device, args))


def write_tables(out: Path, rows: list[dict], device: str, args) -> None:
    """``gpu.md`` and ``gpu.json`` in ``out`` (each written whole, then renamed into place)."""
    for name, text in (
        ("gpu.md", markdown(rows, device, args)),
        ("gpu.json", json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=1)),
    ):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, out / name)


if __name__ == "__main__":
    main()
