"""Per-cell values a user can ask to see beyond the result's columns: a gene measured in the query,
a reference gene imputed on demand (one gene at a time, never the whole imputed matrix), or the
probability of one transferred type. Names carry their source: ``"Gad1 (measured)"``,
``"Gad1 (imputed)"``, ``"P(Astrocytes)"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from napari_cellmapper.core.validation import storable_name
from napari_cellmapper.viewer.colors import PROBABILITY_PREFIX

MEASURED, IMPUTED = " (measured)", " (imputed)"


def dense_column(column: Any) -> np.ndarray:
    """One column of an expression matrix (sparse or dense) as a flat float array."""
    return np.asarray(column.toarray() if hasattr(column, "toarray") else column, dtype=float).ravel()


def value_choices(table: Any, reference: Any, result: Any) -> list[str]:
    """Every name :func:`cell_values` accepts: type probabilities, measured and imputable genes."""
    names = [f"{PROBABILITY_PREFIX}{c})" for c in _probability_sources(table, result)]
    if table is not None:
        names += [f"{g}{MEASURED}" for g in table.var_names]
    if result is not None and (result.mapping is not None or result.imputed is not None):
        genes = reference.var_names if reference is not None and result.mapping is not None else []
        if result.imputed is not None:
            genes = pd.Index(genes).union(result.imputed.var_names, sort=False)
        names += [f"{g}{IMPUTED}" for g in genes]
    return names


def cell_values(name: str, table: Any, result: Any = None, reference: Any = None) -> tuple[str, np.ndarray]:
    """(column name, one value per table row) for ``name``: ``"P(<type>)"``, ``"<gene> (measured)"``,
    ``"<gene> (imputed)"``, or a bare type or gene (a type's probability first, then a gene the
    query measures, then an imputed reference gene). Raises KeyError naming what was looked for."""
    name = name.strip()
    bare = name
    if name.startswith(PROBABILITY_PREFIX) and name.endswith(")"):
        bare = name[len(PROBABILITY_PREFIX) : -1]
    probabilities = _probability_sources(table, result)
    if bare in probabilities:
        frame, column = probabilities[bare]
        return f"{PROBABILITY_PREFIX}{bare})", frame[column].to_numpy(dtype=float)
    gene, source = bare, None
    for suffix in (MEASURED, IMPUTED):
        if bare.endswith(suffix):
            gene, source = bare[: -len(suffix)], suffix
    if source in (None, MEASURED) and table is not None and gene in table.var_names:
        return f"{gene}{MEASURED}", dense_column(table[:, gene].X)
    if source in (None, IMPUTED) and result is not None:
        try:
            return f"{gene}{IMPUTED}", result.imputed_gene(gene, table.n_obs, reference)
        except KeyError as error:
            if source == IMPUTED:
                raise KeyError(f"{gene!r} cannot be imputed: {error.args[0]}") from None
    if source == IMPUTED and result is None:
        raise KeyError(f"Run a mapping before asking for imputed expression ({gene!r}).")
    raise KeyError(
        f"{name!r} is neither a transferred type nor a gene of the query or the reference. "
        "Type a gene name or a type (the box completes them)."
    )


def _probability_sources(table: Any, result: Any) -> dict[str, tuple[pd.DataFrame, Any]]:
    """Each transferred type: the frame ``obsm["<key>_proba"]`` and column of its probability
    per table row (only the names are read: converting every column cost 20 ms at 100k cells)."""
    out: dict[str, tuple[pd.DataFrame, Any]] = {}
    if table is None or result is None:
        return out
    for key in result.obs_keys:
        frame = table.obsm.get(f"{key}_proba")
        if not isinstance(frame, pd.DataFrame) or len(frame) != table.n_obs:
            continue
        # the columns are the types under names h5ad and zarr accept ("/" written as "∕")
        pred = table.obs.get(f"{key}_pred")
        types = pred.cat.categories if pred is not None and hasattr(pred, "cat") else []
        named = {storable_name(t): str(t) for t in types}
        for column in frame.columns:
            out.setdefault(named.get(str(column), str(column)), (frame, column))
    return out
