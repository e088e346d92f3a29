"""Steps and plans: what a migration does, as data ``loom plan`` shows and ``loom migrate`` applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

#: Rows a backfill reads and writes at a time.
BACKFILL_PAGE = 500

#: Field attributes whose change alters the table; anything else (labels, help) is metadata only.
SCHEMA_ATTRS = ("type", "column", "required", "unique")
SCHEMA_PARAMS = ("max_length", "precision", "scale", "to", "on_delete")


@dataclass(frozen=True)
class Step:
    """One schema change: an alembic operation plus the words ``loom plan`` shows for it.

    ``batch`` names the table when SQLite needs alembic's batch mode (copy-and-move) to apply it;
    consecutive steps on one table share one copy. ``operation`` may be an ``ops.ModifyTableOps``:
    operations applied together (dropping an index by its old name, creating it by its new one).
    ``run`` is Python the step runs instead, on the migration's connection (backfills); ``check`` is
    the data check :func:`check_data` runs for it before anything changes. ``closes_batch``: the copy
    ends with this step, so the next batch steps see its result (alembic cannot add a constraint on a
    column renamed in the same copy).
    """

    description: str
    operation: ops.MigrateOperation | None
    batch: str | None = None
    run: Callable[[sa.Connection], None] | None = None
    check: Any = None  # a data check (see .checks), run before anything changes
    closes_batch: bool = False


@dataclass
class Plan:
    """What it takes to bring a database from ``old`` to ``new``.

    :ivar steps: the schema changes, in order.
    :ivar refused: why changes this version cannot apply were left out; ``migrate`` applies nothing then.
    :ivar notes: changes with no DDL (labels, new options, rollups to recompute...).
    :ivar initial: the schema is created from nothing.
    :ivar backup: set by ``migrate``: the copy it made of a SQLite database file before changing it.
    :ivar refresh_rollups: a rollup is new (with its field or entity) or defined differently, so the
        stored values are not what it gives: ``migrate`` recomputes every rollup.
    """

    steps: list[Step] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial: bool = False
    refresh_rollups: bool = False
    backup: Any = None  # pathlib.Path of the copy ``migrate`` made of a SQLite file first, if any

    @property
    def empty(self) -> bool:
        return not self.steps and not self.refused

    def render(self) -> str:
        lines = []
        if self.initial:
            lines.append("Create the schema from nothing:")
        for step in self.steps:
            lines.append(f"  + {step.description}")
        for note in self.notes:
            lines.append(f"  ~ {note}")
        for reason in self.refused:
            lines.append(f"  ! refused: {reason}")
        if not lines:
            lines.append("The database is up to date.")
        return "\n".join(lines)

    def summary(self) -> str:
        if self.initial:
            return f"initial schema ({len(self.steps)} steps)"
        return "; ".join([s.description for s in self.steps] + self.notes) or "no schema change"


def n_rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def planned_renames(plan: Plan, renamed_from: dict[str, str], stored: dict[str, dict], *,
                    label: Callable[[str], str], instead: str) -> dict[str, str]:
    """``{new name: old name}`` of what to rename (fields of an entity, or entities): ``renamed_from:``
    names something the database has and the new name is not there yet. Any other ``renamed_from:``
    changes nothing: it was applied before (the note says so only when the stored manifest does not
    record it), or it names nothing the database has (the new name ``instead``, e.g. is added as new)."""
    renames = {}
    for name, previous in renamed_from.items():
        if name in stored:
            if stored[name].get("renamed_from") != previous:
                plan.notes.append(f"{label(name)} exists already: renamed_from '{previous}' renames nothing")
        elif previous in stored:
            renames[name] = previous
        else:
            plan.notes.append(f"{label(name)} is renamed from '{previous}', which the database does not have: "
                              f"{name} {instead}")
    return renames
