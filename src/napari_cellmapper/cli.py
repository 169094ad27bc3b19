"""Command line: ``napari-cellmapper map | example | demo``.

``map`` reads a reference (.h5ad, or a table of a SpatialData .zarr) and a query (.h5ad, or a
SpatialData .zarr with ``--table``), maps, and writes the annotated query (.h5ad or .zarr). Progress
bars go to stderr; bad input gives a one-line message and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def _is_zarr(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-cellmapper",
        description="Transfer cell types, embeddings and expression from a reference onto a (spatial) query.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("map", help="map a query onto a reference and write the annotated query")
    m.add_argument("--reference", required=True, help="reference .h5ad, or a SpatialData .zarr")
    m.add_argument("--reference-table", default=None, help="table of a SpatialData reference")
    m.add_argument("--query", required=True, help="query .h5ad, or a SpatialData .zarr")
    m.add_argument("--table", default=None, help="table of a SpatialData query (default: the only one)")
    m.add_argument("--coordinate-system", default=None, help="coordinate system for niches (default: first)")
    m.add_argument("--use-rep", default=None, help="obsm key of the joint embedding (default: build one)")
    m.add_argument("--obs", action="append", default=[], help="reference obs column to transfer (repeatable)")
    m.add_argument("--obsm", action="append", default=[], help="reference obsm key to transfer (repeatable)")
    m.add_argument(
        "--layer",
        default=None,
        help="transfer expression from this layer ('X' for X); "
        "a .zarr output gets it as the table '<table>_imputed'",
    )
    m.add_argument("-k", "--n-neighbors", type=int, default=30, help="neighbours per query cell (30)")
    m.add_argument(
        "--kernel", default="gauss", help="gauss, gauss_adaptive, scarches, inverse_distance, equal, hnoca"
    )
    m.add_argument("--backend", default="auto", help="auto, faiss-exact, faiss-ivf, cupy, dask")
    m.add_argument("--metric", default="euclidean", help="euclidean or cosine")
    m.add_argument("--joint", default="pca", help="joint embedding from shared genes: pca or cca")
    m.add_argument("--n-comps", type=int, default=30, help="components of the built joint embedding (30)")
    _add_quality_options(m)
    m.add_argument("--presence", action="store_true", help="presence scores on the reference")
    m.add_argument(
        "--reference-k", type=int, default=15,
        help="neighbours per cell in the reference's own graph (presence, quality; 15)",
    )  # fmt: skip
    m.add_argument("--niches", type=int, default=0, metavar="N", help="find N niches (needs a spatial query)")
    m.add_argument("--out", required=True, help="output .h5ad or .zarr")
    m.add_argument("--reference-out", default=None, help="write the reference with presence scores here")
    m.add_argument("--imputed-out", default=None, help="write imputed expression (.h5ad) here")
    m.add_argument("--in-place", action="store_true", help="update the query zarr's table in place")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    m.add_argument(
        "--stream", action="store_true",
        help="stream an .h5ad/.zarr query in chunks (any size; needs --use-rep; writes .zarr as it goes)",
    )  # fmt: skip
    m.add_argument("--chunk-size", type=int, default=200_000, help="query cells per chunk with --stream")

    e = sub.add_parser("example", help="map the built-in example and print its accuracy")
    e.add_argument("--out", default=None, help="also write the annotated spatial example (.zarr)")
    e.add_argument("--backend", default="auto")
    e.add_argument("-q", "--quiet", action="store_true")

    d = sub.add_parser("demo", help="open napari with the built-in example and the widget docked")
    d.add_argument("--run", action="store_true", help="also run a mapping straight away")
    return parser


def _add_quality_options(m: argparse.ArgumentParser) -> None:
    """Joint-space and label options (core.pipeline.MappingParams fields of the same names)."""
    m.add_argument(
        "--joint-layer", default=None, help="layer with the expression for the joint embedding (X)"
    )
    m.add_argument(
        "--normalize", default="auto", choices=("auto", "true", "false"),
        help="counts -> library size + log1p: auto (decide from the values), true, false",
    )  # fmt: skip
    m.add_argument(
        "--scaling", default="dataset", choices=("dataset", "gene"), help="per-dataset scaling (dataset)"
    )
    m.add_argument(
        "--n-top-genes", type=int, default=2000, help="highly variable genes kept (2000; 0: all shared)"
    )
    m.add_argument("--head", default="lda", choices=("lda", "none"), help="classifier head for labels (lda)")
    m.add_argument("--head-weight", type=float, default=0.5, help="weight of the head's probabilities (0.5)")
    m.add_argument("--no-calibrate", action="store_true", help="keep the uncalibrated confidence")
    m.add_argument("--min-confidence", type=float, default=0.0, help="label cells below it 'unassigned' (0)")


def _quality_params(args) -> dict:
    normalize = {"true": True, "false": False}.get(args.normalize, args.normalize)
    return {
        "joint_layer": args.joint_layer, "scaling": args.scaling, "normalize": normalize,
        "n_top_genes": args.n_top_genes or None, "head": args.head, "head_weight": args.head_weight,
        "calibrate": not args.no_calibrate, "min_confidence": args.min_confidence,
    }  # fmt: skip


def _fail(message: str, code: int) -> int:
    print(f"napari-cellmapper: error: {message}", file=sys.stderr)
    return code


def _write_h5ad_atomic(adata, path: Path, overwrite: bool) -> None:
    from napari_cellmapper.core.validation import CellMapperInputError

    if path.exists() and not overwrite:
        raise CellMapperInputError(f"{path} exists; pass --overwrite to replace it or choose another --out.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_reference(args):
    from napari_cellmapper.io.reference import read_reference

    return read_reference(args.reference, table=args.reference_table)


def _check_paths(args) -> None:
    from napari_cellmapper.core.validation import CellMapperInputError

    for name in ("reference", "query"):
        path = Path(getattr(args, name))
        if not path.exists():
            raise CellMapperInputError(f"--{name} {path} does not exist.")
    out = Path(args.out)
    if out.exists() and not (args.overwrite or args.in_place):
        raise CellMapperInputError(f"{out} exists; pass --overwrite to replace it or choose another --out.")


def _cmd_stream(args) -> int:
    from napari_cellmapper.core.streaming import iter_rep_chunks, map_stream
    from napari_cellmapper.core.validation import CellMapperInputError

    if args.use_rep is None or args.presence or args.niches:
        raise CellMapperInputError("--stream needs --use-rep and supports neither --presence nor --niches.")
    reference = _read_reference(args)
    started = time.perf_counter()
    out = map_stream(
        reference,
        iter_rep_chunks(args.query, args.use_rep, args.chunk_size),
        args.out,
        use_rep=args.use_rep,
        obs_keys=args.obs,
        obsm_keys=args.obsm,
        layer_key=args.layer,
        n_neighbors=args.n_neighbors,
        kernel=args.kernel,
        backend=args.backend,
        metric=args.metric,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"streamed the query onto {reference.n_obs:,} reference cells in {time.perf_counter() - started:.1f} s -> {out}",
        file=sys.stderr,
    )
    return 0


def _cmd_map(args) -> int:
    import anndata as ad
    import numpy as np

    from napari_cellmapper.core.pipeline import MappingParams, annotate

    _check_paths(args)
    if args.stream:
        return _cmd_stream(args)
    params = MappingParams(
        use_rep=args.use_rep,
        obs_keys=tuple(args.obs),
        obsm_keys=tuple(args.obsm),
        layer_key=args.layer,
        n_neighbors=args.n_neighbors,
        kernel=args.kernel,
        backend=args.backend,
        metric=args.metric,
        joint=args.joint,
        n_comps=args.n_comps,
        **_quality_params(args),
        presence=args.presence,
        reference_k=args.reference_k,
        n_niches=args.niches,
    )
    reference = _read_reference(args)
    spatial = _is_zarr(args.query)
    coords = None
    if spatial:
        from napari_cellmapper.io import spatial as sio

        sdata = sio.open_spatial(args.query)
        table = sio.resolve_table(sdata, args.table)
        query = sio.query_table(sdata, table)
        if args.niches:
            cs = args.coordinate_system or sio.default_coordinate_system(sdata, table)
            coords = sio.cell_coordinates(sdata, table, cs)
    else:
        query = ad.read_h5ad(args.query)
        if args.niches and "spatial" in query.obsm:
            coords = np.asarray(query.obsm["spatial"])[:, :2]
    started = time.perf_counter()
    cmap = annotate(query, reference, params, coords=coords, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    if _is_zarr(out) or (spatial and args.in_place):
        if not spatial:
            from napari_cellmapper.core.validation import CellMapperInputError

            raise CellMapperInputError("A .zarr output needs a SpatialData query; write .h5ad instead.")
        from napari_cellmapper.io.export import export_annotated

        written = export_annotated(
            args.query,
            table,
            query,
            None if args.in_place else out,
            in_place=args.in_place,
            overwrite=args.overwrite,
            provenance={"reference": str(Path(args.reference).resolve())},
            imputed=cmap.query_imputed,
        )
    else:
        _write_h5ad_atomic(query, out, args.overwrite)
        written = out
    if args.reference_out:
        _write_h5ad_atomic(reference, Path(args.reference_out), args.overwrite)
    if args.imputed_out and cmap.query_imputed is not None:
        _write_h5ad_atomic(cmap.query_imputed, Path(args.imputed_out), args.overwrite)
    n_unmapped = int(query.obs["cellmapper_unmapped"].sum())
    print(
        f"mapped {query.n_obs:,} query cells onto {reference.n_obs:,} reference cells in {elapsed:.1f} s "
        f"(backend {cmap.params['backend']}, {n_unmapped} unmapped) -> {written}",
        file=sys.stderr,
    )
    return 0


def _cmd_example(args) -> int:
    from napari_cellmapper import datasets
    from napari_cellmapper.core.metrics import accuracy, macro_f1
    from napari_cellmapper.core.pipeline import MappingParams, annotate
    from napari_cellmapper.io import spatial as sio

    reference, _ = datasets.pbmc_example()
    sdata = datasets.spatial_example()
    table = sio.resolve_table(sdata, None)
    query = sio.query_table(sdata, table)
    coords = sio.cell_coordinates(sdata, table, sio.default_coordinate_system(sdata, table))
    params = MappingParams(
        use_rep="X_joint", obs_keys=("cell_type",), obsm_keys=("X_umap",), backend=args.backend,
        presence=True, n_niches=5,
    )  # fmt: skip
    started = time.perf_counter()
    annotate(query, reference, params, coords=coords, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    truth, pred = query.obs["cell_type_true"], query.obs["cell_type_pred"]
    print(
        f"built-in example: {query.n_obs} spatial cells mapped onto {reference.n_obs} reference cells "
        f"in {elapsed:.2f} s; accuracy {accuracy(truth, pred):.3f}, macro F1 {macro_f1(truth, pred):.3f}; "
        f"{query.obs['niche'].nunique()} niches; median presence {reference.obs['presence_score'].median():.2f}"
    )
    if args.out:
        from napari_cellmapper.io.export import export_annotated

        src = Path(tempfile.mkdtemp(prefix="cellmapper-example-")) / "example.zarr"
        datasets.write_spatial_example(src)
        print(f"annotated example written to {export_annotated(src, table, query, Path(args.out))}")
    return 0


def _cmd_demo(args) -> int:
    from napari_cellmapper.core.validation import CellMapperInputError

    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    )
    if headless:
        raise CellMapperInputError(
            "No display found (DISPLAY is unset): napari needs one. Run it on a desktop, under a virtual "
            "display (`xvfb-run napari-cellmapper demo`), or map the example headless with "
            "`napari-cellmapper example`."
        )
    from napari_cellmapper.widgets.demo import launch_demo

    launch_demo(run=args.run)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-cellmapper`` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handlers = {"map": _cmd_map, "example": _cmd_example, "demo": _cmd_demo}
    from napari_cellmapper.core.validation import CellMapperInputError

    try:
        return handlers[args.command](args)
    except (CellMapperInputError, FileNotFoundError, PermissionError, KeyError) as err:
        if args.debug:
            raise
        message = str(err).strip("'\"") or type(err).__name__
        return _fail(
            message.splitlines()[0] if len(message) > 500 else " ".join(message.split()), EXIT_BAD_INPUT
        )
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written.", 130)
    except Exception as err:  # noqa: BLE001 - one line for users, --debug for the traceback
        if args.debug:
            raise
        return _fail(f"{type(err).__name__}: {err}. Re-run with --debug for the traceback.", EXIT_FAILURE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
