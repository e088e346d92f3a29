"""Migration plans as data: diff the last applied manifest against a new one into alembic operations.

This first slice supports creating the schema from nothing and *additive* changes: a new entity,
a new optional field, a new index or unique constraint, a new many-to-many field, label, help and
option additions (no DDL). Anything else is listed in ``Plan.refused`` with the reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops

from loomcrm.engine.manifest import Manifest

from .tables import MIGRATIONS_TABLE, build_metadata

__all__ = ["Step", "Plan", "plan_migration", "apply_steps", "render_sql"]

#: Field attributes whose change alters the table; anything else (labels, help) is metadata only.
SCHEMA_ATTRS = ("type", "column", "required", "unique")
SCHEMA_PARAMS = ("max_length", "precision", "scale", "to", "on_delete")


@dataclass(frozen=True)
class Step:
    """One schema change: an alembic operation plus the words ``loom plan`` shows for it.

    ``batch`` names the table when SQLite needs alembic's batch mode (copy-and-move) to apply it.
    """

    description: str
    operation: ops.MigrateOperation
    batch: str | None = None


@dataclass
class Plan:
    """What it takes to bring a database from ``old`` to ``new``.

    :ivar steps: the schema changes, in order.
    :ivar refused: why changes this version cannot apply were left out; ``migrate`` applies nothing then.
    :ivar notes: changes with no DDL (labels, new options, rollups to recompute...).
    :ivar initial: the schema is created from nothing.
    :ivar refresh_rollups: a rollup is new (with its field or entity) or defined differently, so the
        stored values are not what it gives: ``migrate`` recomputes every rollup.
    """

    steps: list[Step] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial: bool = False
    refresh_rollups: bool = False

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


def plan_migration(old: dict[str, Any] | None, new: Manifest, *, has_migrations_table: bool = True) -> Plan:
    """Diff ``old`` (a stored ``Manifest.to_json()``, or None for an empty database) against ``new``."""
    metadata = build_metadata(new)
    plan = Plan(initial=old is None)
    if not has_migrations_table:
        _create_table(plan, metadata.tables[MIGRATIONS_TABLE], "Loom's migration history")
    old_entities: dict[str, Any] = (old or {}).get("entities", {})
    for table in metadata.sorted_tables:  # referenced tables before the tables that refer to them
        if table.name == MIGRATIONS_TABLE:
            continue
        if table.info.get("system"):  # Loom's own tables: created once, by name
            if table.name not in (old or {}).get("system_tables", []):
                _create_table(plan, table, "Loom's own")
            continue
        if "join" in table.info:
            owner, fname = table.info["loom"].split(".")
            if fname not in old_entities.get(owner, {}).get("fields", {}):
                _create_table(plan, table, f"links of {owner}.{fname}")
            continue
        entity = new.entities[table.info["loom"]]
        before = old_entities.get(entity.name)
        if before is None:
            _create_table(plan, table, f"entity '{entity.name}'")
            plan.refresh_rollups |= any(f.rollup is not None for f in entity.fields.values())
            continue
        _diff_fields(plan, entity.name, before, entity, table)
        _diff_indexes(plan, before, entity, table)
    for name in old_entities:
        if name not in new.entities:
            plan.refused.append(
                f"entity '{name}' was removed; dropping a table (and its data) is not supported yet: "
                "put the entity back in the config"
            )
    return plan


def _bare(column: sa.Column) -> sa.Column:
    """A copy of ``column`` without index/unique flags: those become steps of their own."""
    copy = column._copy()
    copy.index = None
    copy.unique = None
    return copy


def _create_table(plan: Plan, table: sa.Table, what: str) -> None:
    plan.steps.append(Step(f"create table {table.name} ({what}, {len(table.columns)} columns)",
                           ops.CreateTableOp.from_table(table)))
    for index in sorted(table.indexes, key=lambda i: i.name or ""):
        plan.steps.append(Step(f"create index {index.name} on {table.name}", ops.CreateIndexOp.from_index(index)))


def _diff_fields(plan: Plan, name: str, before: dict, entity, table: sa.Table) -> None:
    old_fields = before.get("fields", {})
    for fname, field_ in entity.fields.items():
        old = old_fields.get(fname)
        where = f"{name}.{fname}"
        if old is None:
            if field_.type == "refs":
                continue  # its join table is planned with the other tables
            if field_.required:
                plan.refused.append(
                    f"new field {where} is required, but existing rows have no value for it: add it "
                    "as optional first, fill it, then make it required (backfills come with schema evolution)"
                )
            else:
                column = table.c[field_.column]
                plan.steps.append(Step(f"add column {table.name}.{column.name} ({column.type}, optional)",
                                       ops.AddColumnOp.from_column_and_tablename(None, table.name, _bare(column)),
                                       batch=table.name if field_.type == "ref" else None))
                if field_.rollup is not None:
                    _diff_rollup(plan, where, None, field_.rollup.to_json())
            continue
        changed = [a for a in SCHEMA_ATTRS if old.get(a) != getattr(field_, a)]
        changed += [p for p in SCHEMA_PARAMS if old.get("params", {}).get(p) != field_.params.get(p)]
        if changed:
            plan.refused.append(
                f"field {where} changed {', '.join(changed)}; only additive changes are supported until "
                "schema evolution lands: revert that change, or add a new field instead"
            )
        old_options = [o["value"] for o in old.get("params", {}).get("options", [])]
        new_options = [o["value"] for o in field_.params.get("options", [])]
        removed = [o for o in old_options if o not in new_options]
        if removed:
            plan.refused.append(f"options {', '.join(removed)} were removed from {where}; removing options is "
                                "not supported yet: put them back")
        added = [o for o in new_options if o not in old_options]
        if added:
            plan.notes.append(f"new options for {where}: {', '.join(added)}")
        _diff_rollup(plan, where, old.get("rollup"), field_.rollup.to_json() if field_.rollup else None)
    for fname in old_fields:
        if fname not in entity.fields:
            plan.refused.append(
                f"field {name}.{fname} was removed; dropping a column (and its data) is not supported yet: "
                "put the field back in the config"
            )


def _diff_rollup(plan: Plan, where: str, old: dict | None, new: dict | None) -> None:
    """A rollup added to a field or changed needs no DDL, but its values are recomputed
    (``migrate`` does it); one taken away leaves the stored values as they are."""
    if old == new:
        return
    if new is None:
        plan.notes.append(f"{where} is no longer a rollup: its values stay as they are and people may change them")
    else:
        plan.notes.append(f"rollup {where} {'changed' if old else 'added'}: its values are recomputed")
        plan.refresh_rollups = True


def _index_signatures(entity_json: dict) -> set[tuple[str, tuple[str, ...]]]:
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


def _diff_indexes(plan: Plan, before: dict, entity, table: sa.Table) -> None:
    old, new = _index_signatures(before), _index_signatures(entity.to_json())
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


def apply_steps(conn: sa.Connection, steps: list[Step]) -> None:
    """Run the steps on ``conn`` (inside the caller's transaction) through alembic's operations."""
    context = MigrationContext.configure(conn)
    _invoke(Operations(context), steps, conn.dialect.name)


def render_sql(steps: list[Step], dialect_name: str) -> str:
    """The SQL the steps would run on ``dialect_name``, without a database (``loom plan --sql``)."""
    buffer = io.StringIO()
    context = MigrationContext.configure(dialect_name=dialect_name, opts={"as_sql": True, "output_buffer": buffer})
    _invoke(Operations(context), steps, dialect_name)
    return buffer.getvalue()


def _invoke(operations: Operations, steps: list[Step], dialect_name: str) -> None:
    for step in steps:
        if step.batch and dialect_name == "sqlite":
            with operations.batch_alter_table(step.batch, recreate="auto") as batch:
                batch.invoke(step.operation)
        else:
            operations.invoke(step.operation)
