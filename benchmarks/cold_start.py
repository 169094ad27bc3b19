"""First mapping of a fresh install against the next ones: what compiling kernels costs.

A fresh install has no compiled kernels on disk. Each run here is a fresh process; "cold" runs
point numba at an empty cache folder (``NUMBA_CACHE_DIR``), "warm" runs reuse that folder once
the kernels are in it (under the default ``NAPARI_CELLMAPPER_JIT=auto`` the cold run starts a
background process that compiles them; the benchmark waits for it and reports how long it
took). The workload is the scale benchmark's 100k x 100k pair (30 dimensions, k = 30, labels,
UMAP, 500-gene expression, presence). Prints the median total and per-stage times.

    .venv/bin/python benchmarks/cold_start.py --n 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def _paths(root: Path, n: int) -> tuple[Path, Path]:
    return root / f"ref_{n}.h5ad", root / f"query_{n}.h5ad"


def prepare(root: Path, n: int) -> None:
    from synthetic import make_pair

    ref_path, query_path = _paths(root, n)
    if not (ref_path.exists() and query_path.exists()):
        reference, query = make_pair(n, n)
        reference.write_h5ad(ref_path)
        query.write_h5ad(query_path)


def run_once(root: Path, n: int) -> dict:
    """One mapping in this process: total and per-stage seconds (imports excluded)."""
    import anndata as ad

    from napari_cellmapper.core.pipeline import MappingParams, annotate

    ref_path, query_path = _paths(root, n)
    reference, query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
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
        n_neighbors=30, presence=True,
    )  # fmt: skip
    start = time.perf_counter()
    annotate(query, reference, params, progress=on_progress)
    total = time.perf_counter() - start
    stages[state["stage"]] = stages.get(state["stage"], 0.0) + time.perf_counter() - state["t"]
    return {"total_s": total, "stages": stages}


def _wait_for_kernels(cache: Path, timeout: float = 600.0) -> float:
    """Seconds until the background compile's marker appears in ``cache`` (0 if not started)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if any(cache.glob("compiled-*")) or not any(cache.glob("compiling-*.lock")):
            return time.perf_counter() - start
        time.sleep(0.2)
    raise TimeoutError(f"no compiled kernels in {cache} after {timeout} s")


def _subprocess(root: Path, n: int, cache: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), "--n", str(n)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(args.child, args.n)))
        return
    with tempfile.TemporaryDirectory(prefix="cellmapper-cold-") as tmp:
        root = Path(tmp)
        prepare(root, args.n)
        cold, warm = [], []
        for i in range(args.repeats):
            cache = root / f"numba-{i}"
            cold.append(_subprocess(root, args.n, cache))
            waited = _wait_for_kernels(cache)
            warm.append(_subprocess(root, args.n, cache))
            print(
                f"repeat {i}: cold {cold[-1]['total_s']:.2f} s, background compile done "
                f"{waited:.1f} s after it, warm {warm[-1]['total_s']:.2f} s",
                flush=True,
            )
    for name, runs in (("cold (first run, empty kernel cache)", cold), ("warm (kernels cached)", warm)):
        totals = [r["total_s"] for r in runs]
        print(
            f"\n{name}: median {statistics.median(totals):.2f} s  ({', '.join(f'{t:.2f}' for t in totals)})"
        )
        for stage in runs[0]["stages"]:
            times = [r["stages"].get(stage, 0.0) for r in runs]
            print(f"  {stage:<28} {statistics.median(times):6.2f} s")
    ratio = statistics.median(r["total_s"] for r in cold) / statistics.median(r["total_s"] for r in warm)
    print(f"\ncold / warm: {ratio:.2f}x")


if __name__ == "__main__":
    main()
