"""Command line: ``napari-cellmapper map | example | demo``.

``map`` reads a reference (.h5ad, or a table of a SpatialData .zarr) and a query (.h5ad, or a
SpatialData .zarr with ``--table``), maps, and writes the annotated query (.h5ad or .zarr). Progress
bars go to stderr; bad input gives a one-line message and a non-zero exit, not a traceback, and
is refused before any mapping runs (:mod:`napari_cellmapper.cli_checks`). Importing this module
is cheap (``--help`` must be instant): the engine is imported by the command that needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from napari_cellmapper.cli_output import print_error, warnings_as_lines, write_h5ad_atomic

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
# the engine's choices (core.validation, which imports anndata: too slow for --help); a test keeps them equal
KERNELS = ("gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal", "hnoca")
BACKENDS = ("auto", "faiss-exact", "faiss-ivf", "cupy", "cupy-ivf", "dask")
METRICS = ("euclidean", "cosine")
JOINT_METHODS = ("pca", "cca")
GUI_INSTALL = "pip install 'napari-cellmapper[all]'"

MAP_EXAMPLES = """examples:
  napari-cellmapper map --reference ref.h5ad --query query.h5ad --use-rep X_joint \\
      --obs celltype --obsm X_umap --out out.h5ad
  napari-cellmapper map --reference ref.h5ad --query sample.zarr --table table --obs cell_type \\
      --presence --reference-out ref_presence.h5ad --niches 8 --out annotated.zarr
  napari-cellmapper map --reference ref.h5ad --query sample.zarr --obs cell_type --in-place
  napari-cellmapper map --stream --reference ref.h5ad --query huge.h5ad --use-rep X_joint \\
      --obs cell_type --out huge_annotated.zarr
"""


def _count(minimum: int):
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: it must be at least {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the command; SUPPRESS keeps the later one from resetting it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    parser = argparse.ArgumentParser(
        prog="napari-cellmapper",
        description="Transfer cell types, embeddings and expression from a reference onto a (spatial) query.",
        parents=[debug],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser(
        "map", parents=[debug], help="map a query onto a reference and write the annotated query",
        description="Map a query onto a reference and write the annotated query. Every input problem "
        "is refused before the mapping starts.",
        epilog=MAP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
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
    m.add_argument("-k", "--n-neighbors", type=_count(1), default=30, help="neighbours per query cell (30)")
    m.add_argument("--kernel", default="gauss", choices=KERNELS, help="distance weights (gauss)")
    m.add_argument("--backend", default="auto", choices=BACKENDS, help="neighbour search (auto)")
    m.add_argument("--metric", default="euclidean", choices=METRICS, help="distance (euclidean)")
    m.add_argument("--joint", default="pca", choices=JOINT_METHODS, help="joint embedding from shared genes")
    m.add_argument("--n-comps", type=int, default=50, help="components of the built joint embedding (50)")
    _add_quality_options(m)
    m.add_argument("--presence", action="store_true", help="presence scores on the reference")
    m.add_argument(
        "--reference-k", type=_count(2), default=15,
        help="neighbours per cell in the reference's own graph (presence, quality; 15)",
    )  # fmt: skip
    m.add_argument(
        "--niches", type=_count(0), default=0, metavar="N", help="find N niches (needs a spatial query)"
    )
    m.add_argument("--out", default=None, help="output .h5ad, or .zarr for a SpatialData query")
    m.add_argument("--reference-out", default=None, help="write the reference with presence scores (.h5ad)")
    m.add_argument("--imputed-out", default=None, help="write imputed expression (.h5ad) here")
    m.add_argument("--in-place", action="store_true", help="update the query zarr's table in place")
    m.add_argument("--overwrite", action="store_true", help="replace existing output files")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    m.add_argument(
        "--stream", action="store_true",
        help="stream an .h5ad/.zarr query in chunks (any size; needs --use-rep; writes .zarr as it goes)",
    )  # fmt: skip
    m.add_argument(
        "--chunk-size", type=_count(1), default=200_000, help="query cells per chunk with --stream"
    )

    e = sub.add_parser("example", parents=[debug], help="map the built-in example and print its accuracy")
    e.add_argument("--out", default=None, help="also write the annotated spatial example (.zarr)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e.add_argument("--backend", default="auto", choices=BACKENDS, help="neighbour search (auto)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser(
        "demo", parents=[debug], help=f"open napari with the built-in example and the widget docked "
        f"(needs the GUI: {GUI_INSTALL})",
    )  # fmt: skip
    d.add_argument("--run", action="store_true", help="also run a mapping straight away")

    sub.add_parser(
        "precompile", parents=[debug],
        help="compile the numba kernels now (a fresh install otherwise compiles them in the "
        "background after its first mapping; e.g. when building a container image)",
    )  # fmt: skip
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
    m.add_argument(
        "--head-weight",
        type=float,
        default=0.25,
        help="weight of the head's probabilities, pooled with the k-NN ones (0.25)",
    )
    m.add_argument(
        "--self-training",
        type=float,
        default=0.9,
        help="fit the head again with the query cells labelled at least this confidently (0.9; 0: off)",
    )
    m.add_argument(
        "--graph-vote",
        type=float,
        default=0.75,
        help="share of the reference graph's vote in the k-NN class probabilities (0.75; 0: off)",
    )
    m.add_argument("--no-calibrate", action="store_true", help="keep the uncalibrated confidence")
    m.add_argument("--min-confidence", type=float, default=0.0, help="label cells below it 'unassigned' (0)")


def _quality_params(args) -> dict:
    normalize = {"true": True, "false": False}.get(args.normalize, args.normalize)
    return {
        "joint_layer": args.joint_layer, "scaling": args.scaling, "normalize": normalize,
        "n_top_genes": args.n_top_genes or None, "head": args.head, "head_weight": args.head_weight,
        "self_training": args.self_training or None, "graph_vote": args.graph_vote or None,
        "calibrate": not args.no_calibrate,
        "min_confidence": args.min_confidence,
    }  # fmt: skip


def _read_reference(args):
    from napari_cellmapper.io.reference import read_reference

    return read_reference(args.reference, table=args.reference_table)


def _cmd_stream(args) -> int:
    from napari_cellmapper.cli_checks import check_inputs
    from napari_cellmapper.io.streaming import iter_rep_chunks, map_stream

    reference = _read_reference(args)
    check_inputs(args, reference, None, None)
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
        protect=(args.query, args.reference),
        progress=not args.quiet,
    )
    print(
        f"streamed the query onto {reference.n_obs:,} reference cells "
        f"in {time.perf_counter() - started:.1f} s -> {out}",
        file=sys.stderr,
    )
    return 0


def _cmd_map(args) -> int:
    import numpy as np

    from napari_cellmapper.cli_checks import check_inputs, check_paths, is_zarr
    from napari_cellmapper.core.pipeline import MappingParams, annotate

    check_paths(args)
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
    spatial = is_zarr(args.query)
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
        from napari_cellmapper.io.reference import read_h5ad_file

        query = read_h5ad_file(args.query, "Query")
        if args.niches and "spatial" in query.obsm:
            coords = np.asarray(query.obsm["spatial"])[:, :2]
    check_inputs(args, reference, query, coords)
    started = time.perf_counter()
    cmap = annotate(query, reference, params, coords=coords, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    if args.in_place or is_zarr(args.out):
        from napari_cellmapper.io.export import export_annotated

        written = export_annotated(
            args.query,
            table,
            query,
            None if args.in_place else Path(args.out),
            in_place=args.in_place,
            overwrite=args.overwrite,
            provenance={"reference": str(Path(args.reference).resolve())},
            imputed=cmap.query_imputed,
        )
    else:
        written = Path(args.out)
        write_h5ad_atomic(query, written, args.overwrite)
    if args.reference_out:
        write_h5ad_atomic(reference, Path(args.reference_out), args.overwrite, "--reference-out")
    if args.imputed_out:
        write_h5ad_atomic(cmap.query_imputed, Path(args.imputed_out), args.overwrite, "--imputed-out")
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
    from napari_cellmapper.core.validation import CellMapperInputError
    from napari_cellmapper.io import spatial as sio

    if args.out and Path(args.out).exists() and not args.overwrite:
        raise CellMapperInputError(
            f"--out {args.out} exists; pass --overwrite to replace it or choose another --out."
        )
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
        f"{query.obs['niche'].nunique()} niches; "
        f"median presence {reference.obs['presence_score'].median():.2f}"
    )
    if args.out:
        from napari_cellmapper.io.export import export_annotated

        with tempfile.TemporaryDirectory(prefix="cellmapper-example-") as tmp:
            src = datasets.write_spatial_example(Path(tmp) / "example.zarr")
            written = export_annotated(src, table, query, Path(args.out), overwrite=args.overwrite)
        print(f"annotated example written to {written}")
    return 0


def _cmd_demo(args) -> int:
    from napari_cellmapper.core.validation import CellMapperInputError

    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    )
    if importlib.util.find_spec("napari") is None or not _qt_binding_installed():
        raise CellMapperInputError(f"the demo needs napari and a Qt binding: {GUI_INSTALL}")
    if headless:
        raise CellMapperInputError(
            "No display found (DISPLAY is unset): napari needs one. Run it on a desktop, under a virtual "
            "display (`xvfb-run napari-cellmapper demo`), or map the example headless with "
            "`napari-cellmapper example`."
        )
    from napari_cellmapper.widgets.demo import launch_demo

    launch_demo(run=args.run)
    return 0


def _cmd_precompile(args) -> int:
    import time

    from napari_cellmapper.core import jit

    start = time.perf_counter()
    marker = jit.compile_kernels()
    print(f"numba kernels compiled in {time.perf_counter() - start:.1f} s, cached in {marker.parent}")
    return 0


def _qt_binding_installed() -> bool:
    return any(importlib.util.find_spec(name) for name in ("PyQt6", "PyQt5", "PySide6", "PySide2"))


def _message(err: BaseException) -> str:
    # a KeyError's str() is its key's repr: show the text itself, quotes inside it kept
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-cellmapper`` command."""
    args = _build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    handlers = {"map": _cmd_map, "example": _cmd_example, "demo": _cmd_demo, "precompile": _cmd_precompile}
    with contextlib.nullcontext() if debug else warnings_as_lines():
        from napari_cellmapper.core.validation import CellMapperInputError

        try:
            return handlers[args.command](args)
        except (CellMapperInputError, FileNotFoundError, PermissionError, KeyError) as err:
            if debug:
                raise
            print_error(_message(err))
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print_error("interrupted; nothing was written.")
            return 130
        except Exception as err:  # noqa: BLE001 - one line for users, --debug for the traceback
            if debug:
                raise
            print_error(f"{type(err).__name__}: {_message(err)}. Re-run with --debug for the traceback.")
            return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
