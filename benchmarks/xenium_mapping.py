"""Per-stage profile of the command line's mapping run on a Xenium-like store (issue 15, item 4).

The same steps as ``napari-cellmapper map --query STORE --obs cell_type --presence --niches 8``
(joint space from the shared genes, search, transfer, presence, quality, niches), with each
stage timed from the progress events the pipeline yields, plus reading the inputs. Run it in a
fresh process per repeat; stores come from ``xenium_store.py``.

    python benchmarks/xenium_mapping.py --query /tmp/xenium_300k.zarr --reference /tmp/ref_50k.h5ad
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import OrderedDict


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def profile(
    query_path: str,
    reference_path: str,
    *,
    n_niches: int = 8,
    obs_key: str = "cell_type",
    verbose: bool = False,
) -> dict:
    """Wall and CPU seconds per stage (ordered), the peak RSS in GB and the search's settings.

    CPU seconds (all threads of the process) are less sensitive than wall time to other work on
    a shared machine; on an idle 2-core machine wall >= CPU / 2.
    """
    import anndata as ad

    from napari_cellmapper.core.pipeline import MappingParams, annotate
    from napari_cellmapper.io import spatial as sio

    times: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def since(start: tuple[float, float]) -> tuple[float, float]:
        now = _now()
        return now[0] - start[0], now[1] - start[1]

    t0 = _now()
    reference = ad.read_h5ad(reference_path)
    times["read reference"] = since(t0)
    t0 = _now()
    sdata = sio.open_spatial(query_path)
    table = sio.resolve_table(sdata)
    query = sio.query_table(sdata, table)
    times["open store + table"] = since(t0)
    t0 = _now()
    coords = sio.cell_coordinates(sdata, table, sio.default_coordinate_system(sdata, table))
    times["cell coordinates"] = since(t0)
    if verbose:
        print(f"inputs read, RSS {_rss_gb():.2f} GB", file=sys.stderr)

    marks: list[tuple[tuple[float, float], str]] = []

    def on_progress(event) -> None:
        if not marks or marks[-1][1] != event.stage:
            marks.append((_now(), event.stage))
            if verbose:  # where a run that runs out of memory got to
                print(
                    f"[{time.perf_counter() - started[0]:7.1f} s, RSS {_rss_gb():.2f} GB] {event.stage}",
                    file=sys.stderr,
                )

    params = MappingParams(obs_keys=(obs_key,), presence=True, n_niches=n_niches)
    started = _now()
    cmap = annotate(query, reference, params, coords=coords, progress=on_progress)
    ended = _now()
    bounds = [(started, "checks"), *marks, (ended, "")]  # "checks": before the first progress event
    for (t, stage), (t_next, _) in zip(bounds[:-1], bounds[1:], strict=True):
        wall, cpu = times.get(stage, (0.0, 0.0))
        times[stage] = (wall + t_next[0] - t[0], cpu + t_next[1] - t[1])
    stages = list(times.values())
    times["end to end"] = (sum(w for w, _ in stages), sum(c for _, c in stages))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    search = {k: v for k, v in cmap.params.items() if k in ("backend", "nlist", "nprobe")}
    return {
        "times": times,
        "peak_gb": peak_gb,
        "n_query": query.n_obs,
        "n_reference": reference.n_obs,
        "search": search,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--niches", type=int, default=8)
    parser.add_argument("--verbose", action="store_true", help="print each stage (with RSS) as it starts")
    args = parser.parse_args(argv)
    out = profile(args.query, args.reference, n_niches=args.niches, verbose=args.verbose)
    print(
        f"{out['n_query']:,} query x {out['n_reference']:,} reference cells, "
        f"peak RSS {out['peak_gb']:.2f} GB, {out['search']}"
    )
    print(f"  {'stage':<28s} {'wall s':>8s} {'CPU s':>8s}")
    for stage, (wall, cpu) in out["times"].items():
        print(f"  {stage:<28s} {wall:8.2f} {cpu:8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
