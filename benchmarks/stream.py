"""Streaming benchmark: query sets far larger than memory against a 1M-cell reference.

Query chunks are generated on the fly (never held whole), mapped with
:func:`napari_cellmapper.io.streaming.map_stream` and written to an AnnData zarr as they go.
Each query size runs in a fresh subprocess, so its peak resident memory is its own: it should not
grow with the number of query cells, while time grows about linearly.

    .venv/bin/python benchmarks/stream.py --reference 1000000 --queries 100000 1000000 3000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

CHUNK = 250_000


def _query_chunks(n_query: int):
    """(obs_names, embedding) chunks from the reference's latent space, generated one at a time."""
    from synthetic import make_pair

    for i, start in enumerate(range(0, n_query, CHUNK)):
        size = min(CHUNK, n_query - start)
        _, query = make_pair(1, size, structure="structured", query_seed=1000 + i)
        yield query.obs_names.str.replace("q", f"q{i}_", n=1), query.obsm["X_joint"]


def worker(n_ref: int, n_query: int, out_dir: Path) -> dict:
    from synthetic import make_pair

    from napari_cellmapper.io.streaming import map_stream

    reference, _ = make_pair(n_ref, 1, structure="structured")
    rss_reference = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = out_dir / f"stream_{n_query}.zarr"
    start = time.perf_counter()
    map_stream(
        reference,
        _query_chunks(n_query),
        out,
        use_rep="X_joint",
        obs_keys="cell_type",
        obsm_keys="X_umap",
        n_query=n_query,
        backend="faiss-ivf",
        overwrite=True,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    size_gb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1024**3
    shutil.rmtree(out, ignore_errors=True)
    return {
        "n_query": n_query,
        "seconds": elapsed,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "reference_rss_gb": rss_reference,
        "output_gb": size_gb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--out", default=None, help="scratch folder for the zarr outputs")
    parser.add_argument("--worker", type=int, default=0)
    args = parser.parse_args()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="cellmapper-stream-"))
    if args.worker:
        print("RESULT " + json.dumps(worker(args.reference, args.worker, out_dir)))
        return
    rows = []
    for n in args.queries:
        cmd = [
            sys.executable,
            __file__,
            "--reference",
            str(args.reference),
            "--worker",
            str(n),
            "--out",
            str(out_dir),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"n_query={n} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[7:]))
        print(f"n_query={n:,}: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(
        f"reference {args.reference:,} cells; chunks of {CHUNK:,} query cells; "
        "labels+confidence+UMAP written to zarr"
    )
    print("| query cells | seconds | µs per query cell | peak RSS GB | output GB |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n_query']:,} | {r['seconds']:.1f} | {1e6 * r['seconds'] / r['n_query']:.1f} "
            f"| {r['peak_rss_gb']:.2f} | {r['output_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
