"""Curated labels: a person's corrections of transferred labels, with undo, redo and provenance.

The curated labels live in their own column, ``obs[f"{key}_curated"]``, which starts as a copy
of the predictions ``obs[f"{key}_pred"]``; the predictions are never changed. Every edit (which
cells, which label, who, when) is kept:

- ``obs[f"{key}_curated_edit"]``: the number of the edit that last set each cell (-1: none);
- ``uns[f"{key}_curated"]``: one entry per edit (``edit``, ``label``, ``n_cells``, ``who``,
  ``when``), as arrays that h5ad and zarr store;
- ``uns[f"{key}_curated_colors"]``: one colour per category; a new label gets a new colour,
  existing types keep the reference's.

Undo and redo move along the edits made in this session; edits read back from a table (a
re-opened export) stay in the provenance and can no longer be undone.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_cellmapper.core.palettes import default_palette, fitted_colors

SUFFIX = "_curated"
_FIELDS = ("edit", "label", "n_cells", "who", "when")


@dataclass(frozen=True)
class Edit:
    """One curation step: ``rows`` (table rows) got ``label``; ``before`` holds what they had."""

    number: int
    rows: np.ndarray
    before: np.ndarray  # object array of labels (None: no label)
    before_edit: np.ndarray  # the edit number each row had before
    label: str
    who: str
    when: str


class LabelCuration:
    """Curate the labels transferred for ``key`` in ``table`` (changed in place)."""

    def __init__(self, table: AnnData, key: str) -> None:
        pred = f"{key}_pred"
        if pred not in table.obs:
            raise KeyError(f"{pred!r} is not in the table: transfer {key!r} before curating it.")
        self.table, self.key = table, key
        self.column = f"{key}{SUFFIX}"
        self.edit_column = f"{self.column}_edit"
        if self.column not in table.obs:
            table.obs[self.column] = pd.Categorical(table.obs[pred])
            table.obs[self.edit_column] = np.full(table.n_obs, -1, dtype=np.int64)
            categories = list(table.obs[self.column].cat.categories)
            table.uns[f"{self.column}_colors"] = np.asarray(
                fitted_colors(categories, table.uns.get(f"{pred}_colors")), dtype=object
            )
        elif self.edit_column not in table.obs:
            table.obs[self.edit_column] = np.full(table.n_obs, -1, dtype=np.int64)
        self._done: list[Edit] = []
        self._undone: list[Edit] = []

    # ------------------------------------------------------------------ queries
    @property
    def labels(self) -> pd.Series:
        return self.table.obs[self.column]

    def categories(self) -> list[str]:
        """Labels a cell can be given: the curated column's categories (reference types first)."""
        return [str(c) for c in self.labels.cat.categories]

    def provenance(self) -> pd.DataFrame:
        """All edits so far (earlier sessions' too), one row each."""
        stored = self.table.uns.get(self.column) or {}
        return pd.DataFrame({f: np.asarray(stored.get(f, []), dtype=object) for f in _FIELDS})

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    # ------------------------------------------------------------------ edits
    def assign(self, rows: np.ndarray, label: str, who: str | None = None) -> Edit:
        """Give ``label`` (a type or a new name) to the cells in ``rows``; clears the redo list."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        label = str(label).strip()
        if not label:
            raise ValueError("Type a label (a reference type or a new name).")
        if not len(rows):
            raise ValueError("Select cells first (click one, or draw a lasso around several).")
        if rows.min() < 0 or rows.max() >= self.table.n_obs:
            raise IndexError(f"rows must lie in 0..{self.table.n_obs - 1}")
        provenance = self.provenance()
        number = int(provenance["edit"].max()) + 1 if len(provenance) else 0
        edit = Edit(
            number=number,
            rows=rows,
            before=self.labels.iloc[rows]
            .astype(object)
            .where(self.labels.iloc[rows].notna(), None)
            .to_numpy(),
            before_edit=self.table.obs[self.edit_column].to_numpy()[rows].copy(),
            label=label,
            who=who or _user(),
            when=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._apply(edit)
        self._done.append(edit)
        self._undone.clear()
        return edit

    def undo(self) -> Edit | None:
        """Take back the last edit of this session (None when there is none)."""
        if not self._done:
            return None
        edit = self._done.pop()
        self._set(edit.rows, edit.before, edit.before_edit)
        self._write_provenance(self.provenance().iloc[:-1])
        self._undone.append(edit)
        return edit

    def redo(self) -> Edit | None:
        """Make the last undone edit again (None when there is none)."""
        if not self._undone:
            return None
        edit = self._undone.pop()
        self._apply(edit)
        self._done.append(edit)
        return edit

    # ------------------------------------------------------------------ writing
    def _apply(self, edit: Edit) -> None:
        self._add_category(edit.label)
        self._set(
            edit.rows, np.full(len(edit.rows), edit.label, dtype=object), np.full(len(edit.rows), edit.number)
        )
        entry = {
            "edit": edit.number,
            "label": edit.label,
            "n_cells": len(edit.rows),
            "who": edit.who,
            "when": edit.when,
        }
        self._write_provenance(pd.concat([self.provenance(), pd.DataFrame([entry])], ignore_index=True))

    def _set(self, rows: np.ndarray, labels: np.ndarray, edits: np.ndarray) -> None:
        column = self.labels.array.copy()
        column[rows] = labels
        self.table.obs[self.column] = column
        numbers = self.table.obs[self.edit_column].to_numpy(dtype=np.int64).copy()
        numbers[rows] = edits
        self.table.obs[self.edit_column] = numbers

    def _add_category(self, label: str) -> None:
        if label in self.categories():
            return
        self.table.obs[self.column] = self.labels.cat.add_categories([label])
        colors_key = f"{self.column}_colors"
        colors = [str(c) for c in self.table.uns.get(colors_key, [])]
        palette = default_palette(len(colors) + 1)
        fresh = next((c for c in palette if c not in colors), palette[-1])
        self.table.uns[colors_key] = np.asarray([*colors, fresh], dtype=object)

    def _write_provenance(self, frame: pd.DataFrame) -> None:
        self.table.uns[self.column] = {
            "edit": frame["edit"].to_numpy(dtype=np.int64),
            "label": frame["label"].astype(str).to_numpy(dtype=object),
            "n_cells": frame["n_cells"].to_numpy(dtype=np.int64),
            "who": frame["who"].astype(str).to_numpy(dtype=object),
            "when": frame["when"].astype(str).to_numpy(dtype=object),
        }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers): still record the edit
        return "unknown"
