"""The IVF search kernels against faiss' own, interleaved in one process.

Same trained centroids, same lists probed: faiss' ``IndexIVFFlat.search`` (its quantizer's heap
per query, its heap per query over the scanned candidates) against ``core/search/ivf_scan.py`` (partial
insertion sort over the centroid distances, branch-free candidate buffer with quickselect). Prints
the median of ``--repeats`` interleaved rounds for the query search (k = 30, the calibrated
nprobe) and the reference's own graph (k = 15, half the probes), and how often both return the
same neighbours.

    .venv/bin/python benchmarks/ivf_scan.py --n 100000 --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="query = reference size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=65_536, help="query rows per search call")
    args = parser.parse_args(argv)

    import faiss
    from synthetic import make_pair

    from napari_cellmapper.core.search.faiss_index import IVFIndex
    from napari_cellmapper.core.search.neighbors import prepare_rep

    reference, query = make_pair(args.n, args.n, seed=0)
    ref = prepare_rep(reference.obsm["X_joint"], "euclidean")
    qry = prepare_rep(query.obsm["X_joint"], "euclidean")
    ours = IVFIndex(ref)
    nprobe = ours.calibrate(qry[: args.chunk], 30)
    theirs = faiss.IndexIVFFlat(faiss.IndexFlatL2(ref.shape[1]), ref.shape[1], ours.nlist)
    theirs.quantizer.add(ours._centroids)  # the same centroids: the same lists are probed
    theirs.is_trained = True
    theirs.add(ref)
    half = max(1, nprobe // 2)

    def faiss_search(x: np.ndarray, k: int, probes: int) -> np.ndarray:
        params = faiss.SearchParametersIVF(nprobe=probes)
        return np.vstack(
            [theirs.search(x[s : s + args.chunk], k, params=params)[1] for s in range(0, len(x), args.chunk)]
        )

    def our_search(x: np.ndarray, k: int, probes: int) -> np.ndarray:
        return np.vstack(
            [ours.search_with(x[s : s + args.chunk], k, probes)[1] for s in range(0, len(x), args.chunk)]
        )

    runs = {
        f"query search, k=30, nprobe {nprobe}": (
            lambda: faiss_search(qry, 30, nprobe),
            lambda: our_search(qry, 30, nprobe),
        ),
        f"reference graph, k=15, nprobe {half}": (
            lambda: faiss_search(ref, 15, half),
            lambda: our_search(ref, 15, half),
        ),
    }
    our_search(qry[:100], 30, nprobe)  # kernels loaded before timing
    print(f"n = {args.n:,}, nlist {ours.nlist}, medians of {args.repeats} interleaved rounds (2 cores)\n")
    print("| search | faiss IndexIVFFlat | napari-cellmapper | speed-up | same neighbours |")
    print("|---|---|---|---|---|")
    for name, (theirs_run, ours_run) in runs.items():
        times: dict[str, list[float]] = {"faiss": [], "ours": []}
        for _ in range(args.repeats):
            for label, run in (("faiss", theirs_run), ("ours", ours_run)):
                start = time.perf_counter()
                found = run()
                times[label].append(time.perf_counter() - start)
                if label == "faiss":
                    a = found
                else:
                    b = found
        same = float((np.sort(a, axis=1) == np.sort(b, axis=1)).mean())
        t_faiss, t_ours = np.median(times["faiss"]), np.median(times["ours"])
        print(f"| {name} | {t_faiss:.3f} s | {t_ours:.3f} s | {t_faiss / t_ours:.2f}x | {same:.4f} |")


if __name__ == "__main__":
    main()
