"""Indexes and unique constraints: what an entity has, and what changed."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import ops

from .steps import Plan, Step


def index_signatures(entity_json: dict) -> set[tuple[str, tuple[str, ...]]]:
    """(kind, columns) of every index (``ix``, ``uix``) and unique constraint (``uq``) of an entity.

    Mirrors the rules of :func:`~loomcrm.generators.tables.entity_table`.
    """
    fields = entity_json.get("fields", {})
    found = set()
    for f in fields.values():
        if f.get("column") is None or f.get("system"):
            continue
        if f.get("unique"):
            found.add(("uq", (f["column"],)))
        elif f.get("indexed") or f.get("type") == "ref":
            found.add(("ix", (f["column"],)))
    for index in entity_json.get("indexes", []):
        cols = tuple(fields[n]["column"] if n in fields else n for n in index["fields"])
        kind = "uq" if index["unique"] and not index.get("name") else ("uix" if index["unique"] else "ix")
        found.add((kind, cols))
    return found


def diff_indexes(plan: Plan, before: dict, entity, table: sa.Table, renamed: dict[str, str]) -> None:
    """New indexes and unique constraints; ``renamed`` (``{old column: new}``) were renamed with their column."""
    old = {(kind, tuple(renamed.get(c, c) for c in cols)) for kind, cols in index_signatures(before)}
    old = {(kind, cols) for kind, cols in old if set(cols) <= set(table.c.keys())}  # others go with their column
    new = index_signatures(entity.to_json())
    for kind, cols in sorted(new - old):
        if kind == "uq":
            uq = next(c for c in table.constraints
                      if isinstance(c, sa.UniqueConstraint) and tuple(c.columns.keys()) == cols)
            plan.steps.append(Step(f"add unique constraint {uq.name} on {table.name}",
                                   ops.CreateUniqueConstraintOp.from_constraint(uq), batch=table.name))
        else:
            index = next(i for i in table.indexes
                         if tuple(c.name for c in i.columns) == cols and bool(i.unique) == (kind == "uix"))
            plan.steps.append(Step(f"create index {index.name} on {table.name}", ops.CreateIndexOp.from_index(index)))
    for kind, cols in sorted(old - new):
        plan.refused.append(f"{'unique constraint' if kind == 'uq' else 'index'} on {table.name}({', '.join(cols)}) "
                            "was removed; dropping indexes and constraints is not supported yet")
