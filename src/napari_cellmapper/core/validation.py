"""Input checks that run before any heavy work and never modify their inputs.

Every problem raises :class:`CellMapperInputError` with a message that names the problem and
the fix, so the CLI can print it on one line and the plugin can show it as a notification.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

KERNELS = ("gauss", "gauss_adaptive", "scarches", "inverse_distance", "equal", "hnoca")
BACKENDS = ("auto", "faiss-exact", "faiss-ivf", "cupy", "cupy-ivf", "dask")
METRICS = ("euclidean", "cosine")
JOINT_METHODS = ("pca", "cca")


class CellMapperInputError(ValueError):
    """Bad input to napari-cellmapper: the message says what is wrong and how to fix it."""


def storable_name(name: object) -> str:
    """A column name that h5ad and zarr accept as a key: "/" becomes "∕" (U+2215, looks alike).

    Category names such as "CD4+/CD25 T Reg" become DataFrame columns (class probabilities,
    niche compositions); HDF5 and zarr refuse "/" in keys, so such a result could not be saved.
    """
    return str(name).replace("/", "\u2215")


def as_key_list(keys: str | Iterable[str] | None) -> list[str]:
    """Normalise ``None``, one key or several keys to a list of keys."""
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    return list(keys)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise CellMapperInputError(
            f"Unknown {name} {value!r}. Choose one of: {', '.join(map(repr, choices))}."
        )


def check_not_empty(adata: AnnData, role: str) -> None:
    """Raise if an AnnData has no cells."""
    if adata.n_obs == 0:
        raise CellMapperInputError(f"The {role} has no cells (n_obs == 0). Pass a non-empty {role}.")


def check_unique_obs_names(adata: AnnData, role: str) -> None:
    """Raise on duplicate obs names: results could not be aligned back to cells."""
    if not adata.obs_names.is_unique:
        dupes = adata.obs_names[adata.obs_names.duplicated()].unique()[:3].tolist()
        raise CellMapperInputError(
            f"The {role} has duplicate obs names (e.g. {dupes}). "
            f"Make them unique first, e.g. `{role}.obs_names_make_unique()`."
        )


def check_unique_var_names(adata: AnnData, role: str) -> None:
    """Raise on duplicate gene names: shared genes could not be matched."""
    if not adata.var_names.is_unique:
        dupes = adata.var_names[adata.var_names.duplicated()].unique()[:3].tolist()
        raise CellMapperInputError(
            f"The {role} has duplicate gene names (e.g. {dupes}). "
            f"Make them unique first, e.g. `{role}.var_names_make_unique()`."
        )


def get_rep(adata: AnnData, use_rep: str, role: str) -> np.ndarray:
    """Return ``adata.obsm[use_rep]`` (or ``X`` for ``"X"``) as a dense array, checked."""
    if use_rep == "X":
        rep = adata.X
    elif use_rep in adata.obsm:
        rep = adata.obsm[use_rep]
    else:
        available = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise CellMapperInputError(
            f"use_rep={use_rep!r} is missing from the {role}'s obsm (available: {available}). "
            "Compute the joint representation for both objects, or pass use_rep=None to build one "
            "from the shared genes."
        )
    if isinstance(rep, pd.DataFrame):
        rep = rep.to_numpy()
    if hasattr(rep, "toarray"):
        rep = rep.toarray()
    rep = np.asarray(rep)
    if rep.ndim != 2:
        raise CellMapperInputError(f"{role}.obsm[{use_rep!r}] must be 2-D, got shape {rep.shape}.")
    if not np.issubdtype(rep.dtype, np.number):
        raise CellMapperInputError(f"{role}.obsm[{use_rep!r}] must be numeric, got dtype {rep.dtype}.")
    if rep.shape[1] == 0:
        raise CellMapperInputError(
            f"{role}.obsm[{use_rep!r}] has 0 columns; nothing to compare cells by. "
            "Pass a representation with at least one column, or use_rep=None."
        )
    return rep


def check_finite(rep: np.ndarray, name: str) -> None:
    """Raise if an embedding holds NaN or inf."""
    finite = np.isfinite(rep)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        raise CellMapperInputError(
            f"{name} contains NaN or inf in {bad_rows} cell(s). Remove or impute those cells "
            "(e.g. `adata = adata[np.isfinite(adata.obsm[key]).all(1)].copy()`) before mapping."
        )


def get_rep_pair(query: AnnData, reference: AnnData, use_rep: str) -> tuple[np.ndarray, np.ndarray]:
    """The query's and the reference's ``use_rep``, checked (:func:`check_reps`).

    ``use_rep="X"`` compares genes, so columns are matched by gene name, not by position: the
    query's columns are put in the reference's gene order, and different gene sets are refused.
    """
    q_rep, r_rep = get_rep(query, use_rep, "query"), get_rep(reference, use_rep, "reference")
    if use_rep == "X" and not query.var_names.equals(reference.var_names):
        check_unique_var_names(query, "query")
        check_unique_var_names(reference, "reference")
        missing = reference.var_names.difference(query.var_names)
        extra = query.var_names.difference(reference.var_names)
        if len(missing) or len(extra):
            raise CellMapperInputError(
                f"use_rep='X' compares genes, but the query and the reference have different genes "
                f"({len(missing)} of the reference's are missing from the query, e.g. "
                f"{list(missing[:3])}; {len(extra)} are only in the query, e.g. {list(extra[:3])}). "
                "Use use_rep=None (a joint embedding of the shared genes), or subset both to the "
                "same genes."
            )
        q_rep = q_rep[:, query.var_names.get_indexer(reference.var_names)]
    check_reps(q_rep, r_rep, use_rep)
    return q_rep, r_rep


def check_reps(query_rep: np.ndarray, ref_rep: np.ndarray, use_rep: str) -> None:
    """Raise if the two embeddings differ in width or hold NaN/inf."""
    if query_rep.shape[1] != ref_rep.shape[1]:
        raise CellMapperInputError(
            f"use_rep={use_rep!r} has {query_rep.shape[1]} dimensions in the query but "
            f"{ref_rep.shape[1]} in the reference. Both must live in the same joint space: "
            "compute it jointly (e.g. scVI/scArches, or use_rep=None to build one from shared genes)."
        )
    check_finite(query_rep, f"query.obsm[{use_rep!r}]")
    check_finite(ref_rep, f"reference.obsm[{use_rep!r}]")


def check_positive_int(name: str, value: Any) -> None:
    """Raise if ``value`` is not a positive integer (bools are not integers here)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise CellMapperInputError(f"{name} must be a positive integer, got {value!r}.")


def check_k(k: int, n_reference: int) -> None:
    """Raise if k is not a positive integer at most the reference size."""
    check_positive_int("n_neighbors", k)
    if k > n_reference:
        raise CellMapperInputError(
            f"n_neighbors={k} is larger than the reference ({n_reference} cells). "
            f"Use n_neighbors <= {n_reference}."
        )


def check_obs_keys(reference: AnnData, keys: Sequence[str]) -> None:
    """Raise if an obs key is missing or holds only missing values."""
    for key in keys:
        if key not in reference.obs.columns:
            available = ", ".join(map(repr, reference.obs.columns[:20])) or "none"
            raise CellMapperInputError(
                f"obs key {key!r} is not in reference.obs (available: {available}). "
                "Pass one of the reference's obs columns."
            )
        column = reference.obs[key]
        if column.isna().all():
            raise CellMapperInputError(
                f"reference.obs[{key!r}] holds only missing values; nothing can be transferred. "
                "Pick an annotated column."
            )
        if not (
            isinstance(column.dtype, pd.CategoricalDtype)
            or pd.api.types.is_numeric_dtype(column)
            or pd.api.types.is_bool_dtype(column)
            or pd.api.types.is_string_dtype(column)
            or pd.api.types.is_object_dtype(column)
        ):
            raise CellMapperInputError(
                f"reference.obs[{key!r}] is a {column.dtype} column, which cannot be transferred. "
                f"Convert it to categorical (`.astype('category')`) or to numbers first."
            )


def is_categorical_like(column: pd.Series) -> bool:
    """Whether an obs column is transferred as labels (categorical, string, object or bool)."""
    return not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def check_obsm_keys(reference: AnnData, keys: Sequence[str]) -> None:
    """Raise if an obsm key to transfer is missing or not numeric."""
    for key in keys:
        if key not in reference.obsm:
            available = ", ".join(map(repr, reference.obsm.keys())) or "none"
            raise CellMapperInputError(f"obsm key {key!r} is not in reference.obsm (available: {available}).")
        check_finite(get_rep(reference, key, "reference"), f"reference.obsm[{key!r}]")


def check_expression_finite(expression: Any, layer_key: str) -> None:
    """Raise if the reference expression to transfer holds NaN or inf (they would reach every
    imputed value of the query cells mapped onto those cells)."""
    values = expression.data if sparse.issparse(expression) else np.asarray(expression)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise CellMapperInputError(
            f"The reference's {layer_key!r} expression holds {bad} NaN or inf value(s); they would flow "
            "into the imputed expression. Replace them (e.g. with 0) or pass another layer_key."
        )


def check_layer(reference: AnnData, layer_key: str) -> None:
    """Raise if the expression layer to transfer does not exist."""
    if layer_key != "X" and layer_key not in reference.layers:
        available = ", ".join(["'X'", *map(repr, reference.layers.keys())])
        raise CellMapperInputError(
            f"layer_key={layer_key!r} is not a layer of the reference (available: {available})."
        )
    if layer_key == "X" and reference.X is None:
        raise CellMapperInputError("reference.X is empty; pass layer_key naming a layer with expression.")
