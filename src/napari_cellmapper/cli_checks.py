"""Pre-flight checks of ``napari-cellmapper map``: whatever can be refused is refused before mapping.

:func:`check_paths` runs on the arguments alone (before any file is read), :func:`check_inputs`
on the loaded reference and query (before any neighbour search). Every message names the flag
and the fix, in command-line words.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_cellmapper.core.validation import CellMapperInputError


def is_zarr(path: str | os.PathLike) -> bool:
    """A .zarr path, or a folder that is a zarr store."""
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()))


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_folder(path: Path, flag: str) -> None:
    folder = path.resolve().parent
    if not folder.is_dir():
        raise CellMapperInputError(f"{flag} {path}: the folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CellMapperInputError(
            f"{flag} {path}: the folder {folder} is not writable; choose another {flag}."
        )


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    named = [
        ("--out", args.out),
        ("--reference-out", args.reference_out),
        ("--imputed-out", args.imputed_out),
    ]
    return [(flag, Path(value)) for flag, value in named if value is not None]


def check_paths(args: argparse.Namespace) -> None:
    """Refuse option combinations and output paths that cannot work, before reading any data."""
    for name in ("reference", "query"):
        if not Path(getattr(args, name)).exists():
            raise CellMapperInputError(f"--{name} {getattr(args, name)} does not exist.")
    query, reference = Path(args.query), Path(args.reference)
    query_is_zarr = is_zarr(query)
    if args.in_place:
        if args.out is not None:
            raise CellMapperInputError("--in-place writes into the --query; drop --out (or drop --in-place).")
        if not query_is_zarr:
            raise CellMapperInputError(
                "--in-place needs a SpatialData .zarr --query; "
                "for an .h5ad query write a new file with --out."
            )
        if args.stream:
            raise CellMapperInputError("--stream writes a new store; use --out instead of --in-place.")
        if not os.access(query, os.W_OK | os.X_OK):
            raise CellMapperInputError(
                f"--in-place: the --query {query} is not writable; write a copy with --out."
            )
    elif args.out is None:
        raise CellMapperInputError(
            "no output given: pass --out <file.h5ad or .zarr>, or --in-place for a .zarr query."
        )
    if args.imputed_out is not None and args.layer is None:
        raise CellMapperInputError(
            "--imputed-out needs --layer (the reference expression to impute, 'X' for X)."
        )
    if args.presence and args.reference_out is None:
        raise CellMapperInputError(
            "--presence scores the reference's cells: add --reference-out <file.h5ad> to save them "
            "(or drop --presence)."
        )
    if args.stream:
        if args.use_rep is None or args.presence or args.niches:
            raise CellMapperInputError(
                "--stream needs --use-rep and supports neither --presence nor --niches."
            )
        if args.imputed_out is not None:
            raise CellMapperInputError(
                "--stream writes the imputed expression into --out; drop --imputed-out."
            )
        if Path(args.out).suffix != ".zarr":
            raise CellMapperInputError(
                f"--stream writes a .zarr store: give --out a .zarr name, not {args.out}."
            )
    elif args.out is not None and is_zarr(args.out) and not query_is_zarr:
        raise CellMapperInputError(
            f"--out {args.out}: a .zarr output needs a SpatialData .zarr --query; "
            "write --out <file>.h5ad instead."
        )
    outputs = _outputs(args)
    for flag, path in outputs:
        for source_flag, source in (("--query", query), ("--reference", reference)):
            if path.exists() and _same(path, source):
                fix = (
                    " or use --in-place to add the results to its table"
                    if flag == "--out" and query_is_zarr
                    else ""
                )
                raise CellMapperInputError(
                    f"{flag} is the {source_flag} {source}; inputs are never replaced: "
                    f"choose another {flag}{fix}."
                )
        if path.exists() and not args.overwrite:
            raise CellMapperInputError(
                f"{flag} {path} exists; pass --overwrite to replace it or choose another {flag}."
            )
        _check_folder(path, flag)
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[i + 1 :]:
            if path.resolve() == other.resolve():
                raise CellMapperInputError(f"{flag} and {other_flag} are the same path; give each its own.")
    if args.in_place:
        _check_folder(query, "--in-place")


def _bad_key(name: str, *, spatialdata: bool) -> str | None:
    """Why ``name`` cannot be a key in the output, or None."""
    if name in ("", ".", ".."):
        return "empty, '.' and '..' cannot be stored"
    if spatialdata:
        from spatialdata._core.validation import check_valid_name

        try:
            check_valid_name(name)
        except ValueError as err:
            return str(err).rstrip(".")
    return None


def _categories(values: Any) -> Iterable[str]:
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype):
        return (str(c) for c in values.cat.categories)
    if values.dtype == object:
        return (str(c) for c in pd.unique(values))
    return ()


def check_inputs(args: argparse.Namespace, reference: Any, query: Any, coords: Any) -> None:
    """Refuse names the outputs cannot hold and niches without usable coordinates, before mapping."""
    import numpy as np

    spatial_out = not args.stream and (args.in_place or is_zarr(args.out))
    for key in args.obs:
        for column in (f"{key}_pred", f"{key}_conf", f"{key}_entropy", f"{key}_proba"):
            why = _bad_key(column, spatialdata=spatial_out)
            if why:
                raise CellMapperInputError(
                    f"--obs {key!r}: the output cannot hold the column {column!r} ({why}); rename the "
                    "column in the reference (e.g. with underscores) or write an .h5ad --out."
                )
        if key in reference.obs:
            bad = [c for c in _categories(reference.obs[key]) if c in ("", ".", "..")]
            if bad:
                raise CellMapperInputError(
                    f"--obs {key!r}: the reference's category {bad[0]!r} cannot be stored as a column of "
                    f"the class probabilities; rename it in the reference (e.g. 'unknown')."
                )
    for key in args.obsm:
        why = _bad_key(f"{key}_pred", spatialdata=spatial_out)
        if why:
            raise CellMapperInputError(f"--obsm {key!r}: the output cannot hold {key + '_pred'!r} ({why}).")
    if args.niches:
        if coords is None:
            raise CellMapperInputError(
                "--niches needs cell coordinates: an .h5ad --query needs obsm['spatial'], or pass a "
                "SpatialData .zarr --query (or drop --niches)."
            )
        bad = int((~np.isfinite(np.asarray(coords, dtype=float))).any(axis=1).sum())
        if bad:
            raise CellMapperInputError(
                f"--niches: {bad} query cells have no finite coordinates; "
                "fix them in the query or drop --niches."
            )
