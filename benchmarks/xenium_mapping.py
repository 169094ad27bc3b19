"""Per-stage profile of the command line's mapping run on a Xenium-like store (issue 15, item 4).

The same steps as ``napari-cellmapper map --query STORE --obs cell_type --presence --niches 8``
(joint space from the shared genes, search, transfer, presence, quality, niches), with each
stage timed from the progress events the pipeline yields, plus reading the inputs. Run it in a
fresh process per repeat; stores come from ``xenium_store.py``.

    python benchmarks/xenium_mapping.py --query /tmp/xenium_300k.zarr --reference /tmp/ref_50k.h5ad
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import OrderedDict


def profile(query_path: str, reference_path: str, *, n_niches: int = 8, obs_key: str = "cell_type") -> dict:
    """Seconds per stage (ordered) and the peak RSS in GB."""
    import anndata as ad

    from napari_cellmapper.core.pipeline import MappingParams, annotate
    from napari_cellmapper.io import spatial as sio

    times: OrderedDict[str, float] = OrderedDict()
    t0 = time.perf_counter()
    reference = ad.read_h5ad(reference_path)
    times["read reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sdata = sio.open_spatial(query_path)
    table = sio.resolve_table(sdata)
    query = sio.query_table(sdata, table)
    times["open store + table"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    coords = sio.cell_coordinates(sdata, table, sio.default_coordinate_system(sdata, table))
    times["cell coordinates"] = time.perf_counter() - t0

    marks: list[tuple[float, str]] = []

    def on_progress(event) -> None:
        if not marks or marks[-1][1] != event.stage:
            marks.append((time.perf_counter(), event.stage))

    params = MappingParams(obs_keys=(obs_key,), presence=True, n_niches=n_niches)
    started = time.perf_counter()
    cmap = annotate(query, reference, params, coords=coords, progress=on_progress)
    ended = time.perf_counter()
    for (t, stage), (t_next, _) in zip(marks, [*marks[1:], (ended, "")], strict=True):
        times[stage] = times.get(stage, 0.0) + t_next - t
    times["annotate (total)"] = ended - started
    times["end to end"] = sum(v for k, v in times.items() if k != "annotate (total)" and k in _INPUT_STAGES) + (
        ended - started
    )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    search = {k: v for k, v in cmap.params.items() if k in ("backend", "nlist", "nprobe", "n_comps")}
    return {
        "times": times,
        "peak_gb": peak_gb,
        "n_query": query.n_obs,
        "n_reference": reference.n_obs,
        "search": search,
    }


_INPUT_STAGES = ("read reference", "open store + table", "cell coordinates")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--niches", type=int, default=8)
    args = parser.parse_args(argv)
    out = profile(args.query, args.reference, n_niches=args.niches)
    print(f"{out['n_query']:,} query x {out['n_reference']:,} reference cells, peak RSS {out['peak_gb']:.2f} GB, {out['search']}")
    for stage, seconds in out["times"].items():
        print(f"  {stage:<32s} {seconds:7.2f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
