"""Indexes and unique constraints: what an entity has, and what changed.

A new unique constraint or unique index on existing columns carries a :class:`UniqueCheck`: rows
sharing a value refuse the plan (NULLs are not duplicates). Indexes and unique constraints taken out
of the config are dropped: indexes in place, unique constraints by copying the table on SQLite (batch
mode). Neither touches a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

from ..tables import NAMING_CONVENTION
from .checks import described, sample_ids
from .steps import Plan, Step, n_rows

__all__ = ["index_signatures", "diff_indexes", "UniqueCheck"]

#: Duplicate values a refusal names, with the ids holding each.
SAMPLE_VALUES = 3


def index_signatures(entity_json: dict) -> set[tuple[str, tuple[str, ...]]]:
    """(kind, columns) of every index (``ix``, ``uix``) and unique constraint (``uq``) of an entity.

    Mirrors the rules of :func:`~loomcrm.generators.tables.entity_table`.
    """
    return {(kind, cols) for kind, cols, _name in _indexes(entity_json)}


def _indexes(entity_json: dict) -> set[tuple[str, tuple[str, ...], str | None]]:
    """:func:`index_signatures` with the explicit name of each index (None: the naming convention's)."""
    fields = entity_json.get("fields", {})
    found = set()
    for f in fields.values():
        if f.get("column") is None or f.get("system"):
            continue
        if f.get("unique"):
            found.add(("uq", (f["column"],), None))
        elif f.get("indexed") or f.get("type") == "ref":
            found.add(("ix", (f["column"],), None))
    for index in entity_json.get("indexes", []):
        cols = tuple(fields[n]["column"] if n in fields else n for n in index["fields"])
        kind = "uq" if index["unique"] and not index.get("name") else ("uix" if index["unique"] else "ix")
        found.add((kind, cols, index.get("name")))
    return found


def diff_indexes(plan: Plan, before: dict, entity, table: sa.Table, renamed: dict[str, str | None]) -> None:
    """Indexes and unique constraints taken out (dropped), then new ones (a unique one on columns that
    hold data gets a :class:`UniqueCheck`); ``renamed`` (``{old column: new}``) were renamed with their
    column. Drops come first, so an index moved to other columns under its explicit name is free."""
    # what the table has, under the new column names, and the old columns that named each: a rename
    # renames only what stays, so what goes has the name its old columns gave it. Items on a dropped
    # column, or one a type change replaces (``renamed`` maps it to None), go with their column.
    named = {(kind, tuple(renamed.get(c, c) for c in cols), name): cols for kind, cols, name in _indexes(before)}
    named = {item: cols for item, cols in named.items() if set(item[1]) <= set(table.c.keys())}
    old = set(named)
    new = _indexes(entity.to_json())
    skeleton = _skeleton(table.name, {c for cols in named.values() for c in cols})
    for kind, cols, name in sorted(old - new, key=_order):
        columns = [skeleton.c[c] for c in named[kind, cols, name]]
        if kind == "uq":
            uq = sa.UniqueConstraint(*columns)
            skeleton.append_constraint(uq)
            plan.steps.append(Step(f"drop unique constraint {uq.name} on {table.name} (no row changes)",
                                   ops.DropConstraintOp.from_constraint(uq), batch=table.name))
        else:
            index = sa.Index(name, *columns, unique=kind == "uix")
            plan.steps.append(Step(f"drop {'unique ' if kind == 'uix' else ''}index {index.name} on {table.name} "
                                   "(no row changes)", ops.DropIndexOp.from_index(index)))
    for kind, cols, name in sorted(new - old, key=_order):
        check = None if kind == "ix" else _unique_check(entity, kind, cols, name, table.name, before, renamed)
        if kind == "uq":
            uq = next(c for c in table.constraints
                      if isinstance(c, sa.UniqueConstraint) and tuple(c.columns.keys()) == cols)
            plan.steps.append(Step(f"add unique constraint {uq.name} on {table.name}",
                                   ops.CreateUniqueConstraintOp.from_constraint(uq), batch=table.name, check=check))
        else:
            index = next(i for i in table.indexes
                         if tuple(c.name for c in i.columns) == cols and bool(i.unique) == (kind == "uix"))
            plan.steps.append(Step(f"create {'unique ' if kind == 'uix' else ''}index {index.name} on {table.name}",
                                   ops.CreateIndexOp.from_index(index), check=check))


def _unique_check(entity, kind: str, cols: tuple[str, ...], name: str | None, table_name: str, before: dict,
                  renamed: dict[str, str | None]) -> UniqueCheck | None:
    """The check of a new unique rule on ``cols``, which runs before anything changes: on the columns
    as they are (old names; a column whose type changes, on its values before the conversion), with
    the literal ``default`` a field made required gives the rows without a value. None when no two rows
    can share a value: a column the plan adds is empty, unless such a default fills it (a backfill's
    values are known only once it runs)."""
    fields = {f.column: f for f in entity.fields.values() if f.column}
    old_fields = {f["column"]: f for f in before.get("fields", {}).values() if f.get("column")}
    as_before = {new_ or old_: old_ for old_, new_ in renamed.items()}
    columns, fills, new = [], [], []
    for c in cols:
        column, field_ = as_before.get(c, c), fields[c]
        old = old_fields.get(column)
        if field_.required and not (old or {}).get("required") and field_.backfill is None \
                and field_.default is not None:
            fills.append((column, field_.default))
        elif old is None:
            return None
        if old is None:
            new.append(column)
        columns.append(column)
    return UniqueCheck(_what(entity, cols, name), table_name, tuple(columns), _keep(entity, kind, cols),
                       tuple(fills), tuple(new))


def _order(item: tuple[str, tuple[str, ...], str | None]) -> tuple:
    kind, cols, name = item
    return kind, cols, name or ""


def _skeleton(name: str, columns: set[str]) -> sa.Table:
    """A stand-in for the table as it is: just the columns, so the naming convention names the
    indexes and constraints to drop exactly as it named them when they were created (long names
    shortened alike)."""
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    return sa.Table(name, metadata, *(sa.Column(c, sa.Integer) for c in sorted(columns)))


def _field_names(entity, cols: tuple[str, ...]) -> list[str]:
    by_column = {f.column: f.name for f in entity.fields.values() if f.column}
    return [by_column.get(c, c) for c in cols]


def _what(entity, cols: tuple[str, ...], name: str | None) -> str:
    """The new unique rule, as a refusal names it."""
    names = _field_names(entity, cols)
    if name is not None:
        return f"the new unique index {name} on {entity.name} ({', '.join(names)})"
    if len(names) == 1:
        return f"{entity.name}.{names[0]} is now unique"
    return f"{entity.name} ({', '.join(names)}) is now unique together"


def _keep(entity, kind: str, cols: tuple[str, ...]) -> str:
    """How to keep the data as it is instead."""
    names = _field_names(entity, cols)
    if kind == "uix":
        return "or make the index non-unique"
    if len(names) == 1 and entity.fields[names[0]].unique:
        return "or keep the field non-unique (remove 'unique: true')"
    return f"or remove [{', '.join(names)}] from unique_together (or the unique index)"


@dataclass(frozen=True)
class UniqueCheck:
    """The values of ``columns`` held by more than one row of ``table``, counted before a unique
    constraint or unique index is added. Any refuses the plan (NULLs are no duplicates: the database
    lets any number of rows have none).

    :ivar what: the new rule, as messages name it (``account.email is now unique``).
    :ivar columns: the columns as the table has them before the plan runs (old names).
    :ivar keep: the other way out, after fixing the rows (``or keep the field non-unique``).
    :ivar fills: ``(column, default)``: the rows without a value get that literal before the rule is
        added (a field made required), so they count as holding it.
    :ivar new: the columns the plan adds (each with a fill): every row holds its fill there.
    """

    what: str
    table: str
    columns: tuple[str, ...]
    keep: str
    fills: tuple[tuple[str, Any], ...] = ()
    new: tuple[str, ...] = ()

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        """Count the duplicate values and the rows holding them; name the first few values with their ids."""
        fills = dict(self.fills)
        varying = [c for c in self.columns if c not in self.new]  # a new column holds its fill in every row
        table = sa.table(self.table, sa.column("id"), *(sa.column(c) for c in varying))
        shown = sa.select(table.c.id, *(sa.func.coalesce(table.c[c], sa.literal(fills[c])).label(c) if c in fills
                                        else table.c[c] for c in varying)).subquery("shown")
        values = [shown.c[c] for c in varying]
        if values:
            groups = sa.select(*values, sa.func.count().label("n")).where(*(v.is_not(None) for v in values)) \
                .group_by(*values).having(sa.func.count() > 1).order_by(*values)
            found = conn.execute(groups.limit(SAMPLE_VALUES)).all()
            count = conn.execute(sa.select(sa.func.count()).select_from(groups.subquery())).scalar_one()
            rows = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(groups.subquery().c.n), 0))).scalar_one()
        else:  # every row gets the same value
            rows = conn.execute(sa.select(sa.func.count()).select_from(shown)).scalar_one()
            count, found = (1, [(rows,)]) if rows > 1 else (0, [])
        if not count:
            return described(step, "data check: no duplicate values"), None
        step = described(step, f"data check: {count} duplicate value{'s' if count != 1 else ''} in {n_rows(rows)}")
        samples = []
        for *group, n in found:
            same = sa.and_(sa.true(), *(v == g for v, g in zip(values, group, strict=True)))
            by_column = dict(zip(varying, group, strict=True))
            value = [by_column[c] if c in by_column else fills[c] for c in self.columns]
            samples.append(f"{_shown(value)} ({sample_ids(conn, shown.c.id, same, n)})")
        more = " ..." if count > SAMPLE_VALUES else ""
        held = "value is" if count == 1 else "values are"
        filled = f" once the default {_shown([v for _, v in self.fills])} fills the rows without one" \
            if self.fills else ""
        backfill = ", give it a 'backfill:' that gives each row its own value" if self.fills else ""
        return step, (f"{self.what}, but {count} {held} held by more than one row{filled} ({n_rows(rows)} in all): "
                      f"{', '.join(samples)}{more}: change or merge those rows first so each value is held once"
                      f"{backfill}, {self.keep}")


def _shown(values: list[Any]) -> str:
    """A value as a message shows it: text quoted, anything else as written; several in parentheses."""
    shown = [repr(v) if isinstance(v, str) else str(v) for v in values]
    return shown[0] if len(shown) == 1 else f"({', '.join(shown)})"
