"""Migration plans as data: diff the last applied manifest against a new one into alembic operations.

Supported: creating the schema from nothing (entities that refer to each other included); *additive*
changes (a new entity, a new optional field, a new index or unique constraint, a new many-to-many
field, label, help and option additions, which need no DDL); field renames (``renamed_from:``: the
column, and the indexes and constraints named after it, get the new name; the data stays). Changes that
depend on the data carry a check that ``check_data`` runs against the database before anything changes:
making a field required (:class:`NullCheck`; ``default``/``backfill`` fill the rows), taking enum options
out (:class:`OptionCheck`; ``map:`` converts the rows), and dropping a field or an entity
(:class:`LossCheck`: destructive, refused while rows would lose data unless data loss is allowed).
Anything else (type changes, entity renames...) is listed in ``Plan.refused`` with the reason.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import sort_tables_and_constraints

from loomcrm.engine.manifest import Manifest

from .tables import MIGRATIONS_TABLE, JSONValue, build_metadata

__all__ = ["Step", "Plan", "NullCheck", "LossCheck", "OptionCheck", "BackfillFailed", "plan_migration", "check_data", "apply_steps", "render_sql"]

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
    the data check :func:`check_data` runs for it before anything changes.
    """

    description: str
    operation: ops.MigrateOperation | None
    batch: str | None = None
    run: Callable[[sa.Connection], None] | None = None
    check: NullCheck | LossCheck | OptionCheck | None = None


@dataclass(frozen=True)
class NullCheck:
    """The rows of ``table`` with no value in ``column``, counted before a field becomes required.

    :ivar where: ``entity.field``, as messages name it.
    :ivar fill: how those rows get a value (``default 'other'``, ``backfill "..."``); None: any such
        row refuses the plan.
    :ivar new: the column is added by the plan, so every existing row has no value.
    """

    where: str
    table: str
    column: str
    fill: str | None
    new: bool = False


@dataclass(frozen=True)
class LossCheck:
    """The rows a drop would lose data of, counted before anything changes: those with a value in
    ``column``, or every row when ``column`` is None (a table). Any such row refuses the plan unless
    data loss is allowed (``loom migrate --allow-data-loss``).

    :ivar what: what is dropped, as messages name it (``account.fax``, ``entity 'lead'``).
    :ivar kind: ``field`` or ``entity``: what to put back in the config to keep the data.
    :ivar lost: what the rows lose (``the values of``, ``the links of``; empty: the rows themselves).
    :ivar key: the column naming a row in messages (a join table names its owner's rows).
    """

    what: str
    kind: str
    table: str
    column: str | None
    lost: str = ""
    key: str = "id"


@dataclass(frozen=True)
class OptionCheck:
    """The rows of ``table`` whose ``column`` holds ``option`` (or, for a list, has it as an item),
    counted before the option is taken out of an enum or multi_enum field.

    :ivar where: ``entity.field``, as messages name it.
    :ivar multi: the column holds lists (multi_enum).
    :ivar fix: what to write when rows hold an option ``map:`` leaves out (any such row refuses the plan);
        None: ``map:`` changes those rows.
    """

    where: str
    table: str
    column: str
    option: str
    multi: bool = False
    fix: str | None = None


class BackfillFailed(Exception):
    """A backfill gave rows no value, or one their field cannot hold; the migration is rolled back."""


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


def plan_migration(old: dict[str, Any] | None, new: Manifest, *, has_migrations_table: bool = True) -> Plan:
    """Diff ``old`` (a stored ``Manifest.to_json()``, or None for an empty database) against ``new``.

    New tables come first, referenced tables before the tables that refer to them; a foreign key that
    closes a cycle (two entities referring to each other) is added once both tables exist. Changes to
    existing tables follow, so a new ref column can point at a table created in the same migration.
    """
    metadata = build_metadata(new)
    plan = Plan(initial=old is None)
    if not has_migrations_table:
        _create_table(plan, metadata.tables[MIGRATIONS_TABLE], "Loom's migration history")
    old_entities: dict[str, Any] = (old or {}).get("entities", {})
    creates: list[tuple[sa.Table, str]] = []
    changes: list[sa.Table] = []
    for table in _sorted_tables(metadata.tables.values()):
        if table.name == MIGRATIONS_TABLE:
            continue
        if table.info.get("system"):  # Loom's own tables: created once, by name
            if table.name not in (old or {}).get("system_tables", []):
                creates.append((table, "Loom's own"))
            continue
        if "join" in table.info:
            owner, fname = table.info["loom"].split(".")
            if fname not in old_entities.get(owner, {}).get("fields", {}):
                creates.append((table, f"links of {owner}.{fname}"))
            continue
        entity = new.entities[table.info["loom"]]
        if entity.name not in old_entities:
            creates.append((table, f"entity '{entity.name}'"))
            plan.refresh_rollups |= any(f.rollup is not None for f in entity.fields.values())
        else:
            changes.append(table)
    order, deferred = _creation_order([table for table, _ in creates])
    what = {table.name: text for table, text in creates}
    for table in order:
        _create_table(plan, table, what[table.name], skip=deferred)
    for fk in deferred:
        plan.steps.append(Step(f"add foreign key {fk.name} on {fk.parent.name}",
                               AddDeferredForeignKeyOp.from_constraint(fk)))
    for table in changes:
        entity = new.entities[table.info["loom"]]
        before = old_entities[entity.name]
        renamed = _diff_fields(plan, entity.name, before, entity, table, new)
        _diff_indexes(plan, before, entity, table, renamed)
    _drop_entities(plan, {n: e for n, e in old_entities.items() if n not in new.entities})
    return plan


def _join_table(entity: str, fname: str, fjson: dict) -> tuple[str, str]:
    """The join table of a stored ``refs`` field and its owner column (as ``tables.join_table`` names them)."""
    return f"{entity}__{fname}", f"{entity}_id" if fjson["params"].get("to") != entity else "source_id"


def _drop_entities(plan: Plan, removed: dict[str, dict]) -> None:
    """Drop the tables of removed entities: their join tables first, then each table after the removed
    tables that refer to it. A foreign key between removed tables that closes a cycle is dropped first.
    (A remaining entity cannot refer to a removed one: the compiler refuses such a config.)"""
    refs = {name: {f["params"]["to"] for f in e.get("fields", {}).values()
                   if f.get("type") == "ref" and f["params"].get("to") in removed and f["params"]["to"] != name}
            for name, e in removed.items()}
    for name, entity in sorted(removed.items()):
        for fname, fjson in entity.get("fields", {}).items():
            if fjson.get("type") == "refs":
                join = _join_table(name, fname, fjson)[0]
                plan.steps.append(Step(f"drop table {join} (links of {name}.{fname})", ops.DropTableOp(join)))
    order: list[str] = []
    while len(order) < len(removed):
        # a table no remaining removed table refers to; in a cycle, the first by name, once the keys
        # referring to it are dropped
        left = [n for n in sorted(removed) if n not in order]
        free = [n for n in left if not any(n in refs[other] for other in left if other != n)]
        name = free[0] if free else left[0]
        for other in [] if free else left[1:]:
            for _fname, fjson in sorted(removed[other].get("fields", {}).items()):
                if name in refs[other] and fjson.get("type") == "ref" and fjson["params"].get("to") == name:
                    fk = f"fk_{other}_{fjson['column']}_{name}"
                    plan.steps.append(Step(f"drop foreign key {fk} on {other}", DropCycleForeignKeyOp(fk, other)))
            refs[other].discard(name)
        order.append(name)
        plan.steps.append(Step(f"drop table {name}", ops.DropTableOp(name),
                               check=LossCheck(f"entity '{name}'", "entity", name, None)))


class DropCycleForeignKeyOp(ops.DropConstraintOp):
    """Drop a foreign key between two tables about to be dropped: a no-op on SQLite (whose migrations
    run without enforcing foreign keys, and which cannot drop a constraint in place)."""

    def __init__(self, name: str, table_name: str) -> None:
        super().__init__(name, table_name, type_="foreignkey")


@Operations.implementation_for(DropCycleForeignKeyOp)
def _drop_cycle_foreign_key(operations: Operations, operation: DropCycleForeignKeyOp) -> None:
    if operations.impl.dialect.supports_alter:
        operations.drop_constraint(operation.constraint_name, operation.table_name, type_="foreignkey")


def _sorted_tables(tables) -> list[sa.Table]:
    """``tables`` with referenced tables first, as far as cycles allow (without SQLAlchemy's warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # cycles are expected: see _creation_order
        return [table for table, _ in sort_tables_and_constraints(list(tables)) if table is not None]


def _creation_order(tables: list[sa.Table]) -> tuple[list[sa.Table], list[sa.ForeignKeyConstraint]]:
    """The order to create ``tables`` in, and the foreign keys to add once they all exist.

    A foreign key stays in its CREATE TABLE when the table it refers to exists by then: already in the
    database, the table itself, or created earlier; only those closing a cycle are deferred.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # a cycle: SQLAlchemy sets its keys apart
        sorted_ = sort_tables_and_constraints(tables)
    order = [table for table, _ in sorted_ if table is not None]
    position = {table: i for i, table in enumerate(order)}
    deferred = [fk for table, fks in sorted_ if table is None for fk in fks
                if fk.referred_table in position and position[fk.referred_table] > position[fk.parent]]
    return order, sorted(deferred, key=lambda fk: (position[fk.parent], fk.name or ""))


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _bare(column: sa.Column) -> sa.Column:
    """A copy of ``column`` without index/unique flags (those become steps of their own), keeping its
    foreign key (``_copy`` drops it), named by the naming convention as ``build_metadata`` names it."""
    copy = column._copy()
    copy.index = None
    copy.unique = None
    for fk in column.foreign_keys:
        target = fk.column.table.name
        copy.append_foreign_key(sa.ForeignKey(fk.target_fullname, ondelete=fk.ondelete,
                                              name=f"fk_{column.table.name}_{column.name}_{target}"))
    return copy


def _create_table(plan: Plan, table: sa.Table, what: str, skip=()) -> None:
    """Create ``table`` with its indexes; the foreign keys in ``skip`` are added by a later step.

    Where the database can ALTER a table to add a foreign key, CREATE TABLE leaves those out
    (``use_alter``); SQLite keeps them inline (it resolves the referenced table only when rows are
    written) and the later ``AddDeferredForeignKeyOp`` does nothing there.
    """
    operation = ops.CreateTableOp.from_table(table)
    if any(fk.parent is table for fk in skip):
        constraints = []
        for constraint in table.constraints:
            if constraint in skip:
                constraint = constraint._copy()
                constraint.use_alter = True
            constraints.append(constraint)
        operation = ops.CreateTableOp(
            table.name, list(table.c) + constraints, schema=table.schema, _namespace_metadata=table.metadata,
            _constraints_included=True, comment=table.comment, info=dict(table.info),
            prefixes=list(table._prefixes), **table.kwargs)
    plan.steps.append(Step(f"create table {table.name} ({what}, {len(table.columns)} columns)", operation))
    for index in sorted(table.indexes, key=lambda i: i.name or ""):
        plan.steps.append(Step(f"create index {index.name} on {table.name}", ops.CreateIndexOp.from_index(index)))


class AddDeferredForeignKeyOp(ops.CreateForeignKeyOp):
    """Add a foreign key its CREATE TABLE left out (see ``_create_table``): a no-op on SQLite."""


@Operations.implementation_for(AddDeferredForeignKeyOp)
def _add_deferred_foreign_key(operations: Operations, operation: AddDeferredForeignKeyOp) -> None:
    if operations.impl.dialect.supports_alter:  # else CREATE TABLE kept it inline
        operations.impl.add_constraint(operation.to_constraint(operations.migration_context))


def _diff_fields(plan: Plan, name: str, before: dict, entity, table: sa.Table, manifest: Manifest) -> dict[str, str]:
    """Field by field: new columns, renames, and the changes this version refuses.

    Returns the renamed columns, ``{old: new}``, so indexes are compared under their new names.
    """
    old_fields = before.get("fields", {})
    renames = _renames(plan, name, old_fields, entity)
    renamed: list[tuple[dict, Any]] = []
    required: list[Step] = []  # after the new columns and renames: a backfill may read them
    columns = {}
    for fname, field_ in entity.fields.items():
        old = old_fields.get(renames.get(fname, fname))
        where = f"{name}.{fname}"
        if fname in renames:
            if old["column"]:  # refused or not: its indexes are not "removed"
                columns[old["column"]] = field_.column
            if not _renamable(plan, name, old, field_):
                continue
            renamed.append((old, field_))
        if old is None:
            if field_.type == "refs":
                continue  # its join table is planned with the other tables
            column = table.c[field_.column]
            bare = _bare(column)
            bare.nullable = True  # a required column gets its values first, then NOT NULL (below)
            plan.steps.append(Step(f"add column {table.name}.{column.name} ({column.type}, "
                                   f"{'required' if field_.required else 'optional'})",
                                   ops.AddColumnOp.from_column_and_tablename(None, table.name, bare),
                                   batch=table.name if field_.type == "ref" else None))
            if field_.required:
                required.extend(_required_steps(where, entity, field_, table, manifest, new=True))
            if field_.rollup is not None:
                _diff_rollup(plan, where, None, field_.rollup.to_json())
            continue
        changed = [a for a in SCHEMA_ATTRS if old.get(a) != getattr(field_, a)
                   and not (a == "column" and fname in renames)]
        if "required" in changed and field_.column is not None and fname not in renames:
            changed.remove("required")
            if field_.required:
                required.extend(_required_steps(where, entity, field_, table, manifest, new=False))
            else:  # always safe: every value fits a nullable column
                column = table.c[field_.column]
                required.append(Step(f"drop NOT NULL of {table.name}.{column.name} ({where} is optional now)",
                                     ops.AlterColumnOp(table.name, column.name, modify_nullable=True,
                                                       existing_type=column.type, existing_nullable=False),
                                     batch=table.name))
        changed += [p for p in SCHEMA_PARAMS if old.get("params", {}).get(p) != field_.params.get(p)]
        if changed:
            plan.refused.append(
                f"field {where} changed {', '.join(changed)}; only additive changes are supported until "
                "schema evolution lands: revert that change, or add a new field instead"
            )
        old_options = [o["value"] for o in old.get("params", {}).get("options", [])]
        new_options = [o["value"] for o in field_.params.get("options", [])]
        removed = [o for o in old_options if o not in new_options]
        if removed and old.get("type") == field_.type:  # a changed type is refused above
            required.extend(_option_steps(where, field_, table, removed, new_options))
        added = [o for o in new_options if o not in old_options]
        if added:
            plan.notes.append(f"new options for {where}: {', '.join(added)}")
        _diff_rollup(plan, where, old.get("rollup"), field_.rollup.to_json() if field_.rollup else None)
    drops = []  # after the other changes of the table
    for fname, old in old_fields.items():
        if fname in entity.fields or fname in renames.values():
            continue
        where = f"{name}.{fname}"
        if old.get("type") == "refs":
            join, owner = _join_table(name, fname, old)
            drops.append(Step(f"drop table {join} (links of {where})", ops.DropTableOp(join),
                              check=LossCheck(where, "field", join, None, "the links of ", key=owner)))
            continue
        operations = [ops.DropColumnOp(table.name, old["column"])]
        if ("ix", (old["column"],)) in _index_signatures({"fields": {fname: old}}):  # batch mode keeps indexes
            operations.insert(0, ops.DropIndexOp(f"ix_{table.name}_{old['column']}", table_name=table.name))
        drops.append(Step(f"drop column {table.name}.{old['column']}", ops.ModifyTableOps(table.name, operations),
                          batch=table.name, check=LossCheck(where, "field", table.name, old["column"],
                                                            "the values of ")))
    if renamed:
        _rename_columns(plan, manifest, before, entity, table, renamed)
    plan.steps += required + drops
    return columns


def _required_steps(where: str, entity, field_, table: sa.Table, manifest: Manifest, *, new: bool) -> list[Step]:
    """Make a column NOT NULL: rows without a value get the ``backfill:`` or the literal ``default``
    first; without either, a data check refuses the plan when there are such rows (see :func:`check_data`)."""
    column = table.c[field_.column]
    not_null = ops.AlterColumnOp(table.name, column.name, modify_nullable=False, existing_type=column.type,
                                 existing_nullable=True)
    if field_.backfill is not None:
        fill = f'backfill "{field_.backfill.text}"'
        run = _backfill_expression(where, entity, field_, table, manifest.timezone)
    elif field_.default is not None:
        fill = f"default {field_.default!r}"
        run = _backfill_default(field_.default, table, column)
    else:
        check = NullCheck(where, table.name, column.name, None, new)
        return [Step(f"set {table.name}.{column.name} NOT NULL", not_null, batch=table.name, check=check)]
    check = NullCheck(where, table.name, column.name, fill, new)
    return [Step(f"backfill {where} from {fill}", None, run=run, check=check),
            Step(f"set {table.name}.{column.name} NOT NULL", not_null, batch=table.name)]


def _backfill_default(value: Any, table: sa.Table, column: sa.Column) -> Callable[[sa.Connection], None]:
    """One UPDATE giving every row without a value the default (a bare table: no onupdate columns)."""
    target = sa.table(table.name, sa.column(column.name, column.type))

    def run(conn: sa.Connection) -> None:
        conn.execute(sa.update(target).where(target.c[column.name].is_(None)).values({column.name: value}))
    return run


def _backfill_expression(where: str, entity, field_, table: sa.Table, timezone: str) -> Callable[[sa.Connection], None]:
    """Evaluate the backfill for each row without a value, page by page in id order, and write the
    results by id. Rows it gives no value or one the field cannot hold fail the migration, named."""
    from loomcrm.engine.actions import to_field_value
    from loomcrm.engine.expressions import context
    from loomcrm.engine.fieldtypes import FieldValueError
    from loomcrm.engine.runtime.context import utcnow, zone

    expression = field_.backfill
    read = [entity.fields[n] for n in sorted(expression.reads.get("record", ())) if entity.fields[n].column]
    column = table.c[field_.column]
    target = sa.table(table.name, sa.column("id"), sa.column(column.name, column.type))
    select = sa.select(table.c.id, *(table.c[f.column] for f in read)).where(column.is_(None)) \
        .order_by(table.c.id).limit(BACKFILL_PAGE)
    update = sa.update(target).where(target.c.id == sa.bindparam("row_id")).values({column.name: sa.bindparam("v")})

    def run(conn: sa.Connection) -> None:
        now = utcnow()
        today = now.astimezone(zone(timezone)).date().isoformat()
        failed: list[str] = []
        after = 0
        while True:
            rows = conn.execute(select.where(table.c.id > after)).all()
            if not rows:
                break
            values = []
            for row in rows:
                record = {"id": row[0], **{f.name: v for f, v in zip(read, row[1:], strict=True)}}
                try:
                    result = expression.evaluate(context(expression.reads, {"record": record, "now": now,
                                                                            "today": today}))
                    value = to_field_value(field_, result, timezone)
                except FieldValueError as exc:
                    failed.append(f"id {row[0]}: {exc.message}")
                    continue
                except Exception as exc:  # noqa: BLE001 - CEL errors: reported with the row
                    failed.append(f"id {row[0]}: {type(exc).__name__}: {exc}")
                    continue
                if value is None:
                    failed.append(f"id {row[0]}: no value")
                else:
                    values.append({"row_id": row[0], "v": value})
            if values:
                conn.execute(update, values)
            after = rows[-1][0]
        if failed:
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise BackfillFailed(f"backfill of {where} (\"{expression.text}\") failed for {_rows(len(failed))}: "
                                 f"{'; '.join(failed[:5])}{more}: change 'backfill:' so it gives every row a "
                                 "value that fits, or fill those rows first; nothing was changed")
    return run


def check_data(plan: Plan, conn: sa.Connection, *, allow_data_loss: bool = False) -> None:
    """Run the plan's data checks on ``conn`` before anything changes: count the rows each backfill
    fills (its step says how many), and refuse the plan when a column without one would become
    NOT NULL over rows with no value, or when a drop would lose data and ``allow_data_loss`` is
    not set (the messages give the count and the first ids)."""
    for i, step in enumerate(plan.steps):
        check = step.check
        if isinstance(check, LossCheck):
            _check_loss(plan, i, check, conn, allow_data_loss)
            continue
        if isinstance(check, OptionCheck):
            _check_option(plan, i, check, conn)
            continue
        if check is None:
            continue
        table = sa.table(check.table, sa.column("id"), *([] if check.new else [sa.column(check.column)]))
        missing = sa.true() if check.new else table.c[check.column].is_(None)
        count = conn.execute(sa.select(sa.func.count()).select_from(table).where(missing)).scalar_one()
        if check.fill is not None:
            plan.steps[i] = replace(step, description=f"backfill {check.where}: {_rows(count)} from {check.fill}")
            continue
        plan.steps[i] = replace(step, description=f"{step.description} (data check: {_rows(count)} without a value)")
        if count:
            ids = conn.execute(sa.select(table.c.id).where(missing).order_by(table.c.id).limit(6)).scalars().all()
            sample = ", ".join(str(row_id) for row_id in ids[:5]) + (" ..." if count > 5 else "")
            what = f"new field {check.where} is required" if check.new else f"{check.where} is now required"
            plan.refused.append(f"{what}, but {_rows(count)} {'has' if count == 1 else 'have'} no value "
                                f"({'id' if count == 1 else 'ids'} {sample}): add 'default:' or 'backfill:' to fill "
                                f"{'it' if count == 1 else 'them'}, or fill {'it' if count == 1 else 'them'} first")


def _check_loss(plan: Plan, i: int, check: LossCheck, conn: sa.Connection, allowed: bool) -> None:
    """Count the rows a drop loses data of (see :class:`LossCheck`); the step says how many."""
    table = sa.table(check.table, sa.column(check.key), *([sa.column(check.column)] if check.column else []))
    key = table.c[check.key]
    having = table.c[check.column].is_not(None) if check.column else sa.true()
    count = conn.execute(sa.select(sa.func.count(sa.distinct(key))).where(having)).scalar_one()
    step = plan.steps[i]
    if not count:
        plan.steps[i] = replace(step, description=f"{step.description} (no row has data to lose)")
        return
    loss = f"{check.lost}{_rows(count)}"
    plan.steps[i] = replace(step, description=f"{step.description} (destructive: loses {loss})")
    if allowed:
        return
    ids = conn.execute(sa.select(key).where(having).distinct().order_by(key).limit(6)).scalars().all()
    sample = ", ".join(str(row_id) for row_id in ids[:5]) + (" ..." if count > 5 else "")
    them = "it" if count == 1 else "them"
    copied = " (the SQLite database is copied first)" if conn.dialect.name == "sqlite" else ""
    plan.refused.append(f"dropping {check.what} would lose {loss} ({'id' if count == 1 else 'ids'} {sample}): "
                        f"run 'loom migrate --allow-data-loss' to drop {them}{copied}, "
                        f"or put the {check.kind} back")


def _option_steps(where: str, field_, table: sa.Table, removed: list[str], options: list[str]) -> list[Step]:
    """Options taken out of an enum field need no DDL (the column is text, or JSON lists for
    multi_enum; options are checked in Python), but the rows holding one get what ``map:`` says;
    an option ``map:`` leaves out must be unused (a data check, see :func:`check_data`)."""
    column = table.c[field_.column]
    multi = isinstance(column.type, JSONValue)
    mapping = field_.option_map or {}
    steps = []
    for option in removed:
        check = OptionCheck(where, table.name, column.name, option, multi)
        if option in mapping:
            to = mapping[option]
            steps.append(Step(f"map {where}: {option!r} -> {'null' if to is None else repr(to)}", None,
                              run=_remap_option(table.name, column, option, to, multi), check=check))
            continue
        empty = "" if field_.required else f" (or {{{option}: null}})"
        fix = f"add map: {{{option}: {options[0]}}}{empty} under the field, or put the option back"
        steps.append(Step(f"remove option {option!r} of {where}", None, check=replace(check, fix=fix)))
    return steps


def _holding(column: sa.ColumnElement, option: str, multi: bool, dialect: str) -> sa.ColumnElement:
    """The rows whose ``column`` holds ``option``: equal to it, or a list (multi_enum) containing it."""
    if not multi:
        return column == option
    if dialect == "postgresql":
        return sa.type_coerce(column, postgresql.JSONB).contains(sa.bindparam(None, [option], type_=postgresql.JSONB))
    items = sa.func.json_each(column).table_valued("value")
    return sa.exists(sa.select(1).select_from(items).where(items.c.value == option))


def _remap_option(table_name: str, column: sa.Column, option: str, to: str | None,
                  multi: bool) -> Callable[[sa.Connection], None]:
    """Give the rows holding ``option`` the value ``to``: one UPDATE; lists are rewritten by id, 500 rows
    at a time, with ``to`` in the option's place (once) or the option left out. ``version`` and
    ``updated_at`` stay as they were."""
    target = sa.table(table_name, sa.column("id"), sa.column(column.name, column.type))
    value = target.c[column.name]

    def rewritten(items: list[str]) -> list[str]:
        result = []
        for item in items:
            item = to if item == option else item
            if item is not None and item not in result:
                result.append(item)
        return result

    def run(conn: sa.Connection) -> None:
        holding = _holding(value, option, multi, conn.dialect.name)
        if not multi:
            conn.execute(sa.update(target).where(holding).values({column.name: to}))
            return
        select = sa.select(target.c.id, value).where(holding).order_by(target.c.id).limit(BACKFILL_PAGE)
        update = sa.update(target).where(target.c.id == sa.bindparam("row_id")) \
            .values({column.name: sa.bindparam("v", type_=column.type)})
        after = None
        while rows := conn.execute(select if after is None else select.where(target.c.id > after)).all():
            conn.execute(update, [{"row_id": row_id, "v": rewritten(items)} for row_id, items in rows])
            after = rows[-1][0]
    return run


def _check_option(plan: Plan, i: int, check: OptionCheck, conn: sa.Connection) -> None:
    """Count the rows holding an option taken out: ``map:`` changes them (its step says how many), else
    any such row refuses the plan, with the count and the first ids."""
    step = plan.steps[i]
    table = sa.table(check.table, sa.column("id"), sa.column(check.column))
    holding = _holding(table.c[check.column], check.option, check.multi, conn.dialect.name)
    count = conn.execute(sa.select(sa.func.count()).select_from(table).where(holding)).scalar_one()
    if check.fix is None:
        plan.steps[i] = replace(step, description=f"{step.description} ({_rows(count)})")
        return
    holds = "holds" if count == 1 else "hold"
    plan.steps[i] = replace(step, description=f"{step.description} (data check: {_rows(count)} {holds} it)")
    if count:
        ids = conn.execute(sa.select(table.c.id).where(holding).order_by(table.c.id).limit(6)).scalars().all()
        sample = ", ".join(str(row_id) for row_id in ids[:5]) + (" ..." if count > 5 else "")
        plan.refused.append(f"option {check.option!r} was removed from {check.where}, but {_rows(count)} {holds} "
                            f"it ({'id' if count == 1 else 'ids'} {sample}): {check.fix}")


def _renames(plan: Plan, name: str, old_fields: dict, entity) -> dict[str, str]:
    """``{new name: old name}`` of the fields to rename: ``renamed_from:`` names a field the database
    has and the new name is not there yet. Any other ``renamed_from:`` changes nothing: it was applied
    before (the note says so only when the stored manifest does not record it), or names no field."""
    renames = {}
    for fname, field_ in entity.fields.items():
        previous = field_.renamed_from
        if previous is None:
            continue
        if fname in old_fields:
            if old_fields[fname].get("renamed_from") != previous:
                plan.notes.append(f"{name}.{fname} exists already: renamed_from '{previous}' renames nothing")
        elif previous in old_fields:
            renames[fname] = previous
        else:
            plan.notes.append(f"{name}.{fname} is renamed from '{previous}', which the database does not have: "
                              f"{fname} is added as a new field")
    return renames


def _renamable(plan: Plan, name: str, old: dict, new) -> bool:
    """A rename changes the name and nothing the table holds; anything more is refused (for now)."""
    where = f"{name}.{old['name']} -> {name}.{new.name}"
    if new.type == "refs" or old.get("type") == "refs":
        plan.refused.append(f"rename {where}: renaming a many-to-many field (its join table) is not supported yet; "
                            "remove 'renamed_from:' and keep the old name for now")
        return False
    changed = [a for a in ("type", "required", "unique", "indexed") if old.get(a) != getattr(new, a)]
    changed += [p for p in SCHEMA_PARAMS if old.get("params", {}).get(p) != new.params.get(p)]
    if changed:
        plan.refused.append(f"rename {where} also changes {', '.join(changed)}: rename first (migrate with the "
                            "old settings under the new name), then change it in a second migration")
        return False
    return True


def _rename_columns(plan: Plan, manifest: Manifest, before: dict, entity, table: sa.Table,
                    renamed: list[tuple[dict, Any]]) -> None:
    """Rename the columns, then every index and constraint the naming convention named after them.

    The columns are renamed in place (``ALTER TABLE ... RENAME``, natively on SQLite too: no copy,
    and SQLite rewrites the indexes and constraints that use them). The names that followed the old
    column are found on a copy of the table with the old column names, so they are exactly what the
    naming convention gave when they were created; constraints (SQLite keeps them in the table's
    definition) are renamed in one batch, indexes by dropping and creating them.
    """
    columns = {old["column"]: new.column for old, new in renamed}
    for old, new in renamed:
        column = table.c[new.column]
        plan.steps.append(Step(
            f"rename column {table.name}.{old['column']} -> {table.name}.{new.column} (data kept)",
            ops.AlterColumnOp(table.name, old["column"], modify_name=new.column, existing_type=column.type,
                              existing_nullable=column.nullable)))
    old_columns = {new.name: old["column"] for old, new in renamed}
    reverted = {n: replace(f, column=old_columns[n]) if n in old_columns else f for n, f in entity.fields.items()}
    as_before = replace(manifest, entities={**manifest.entities, entity.name: replace(entity, fields=reverted)})
    old_table = build_metadata(as_before).tables[table.name]
    existing = _index_signatures(before)

    def counterpart(items, item):
        cols = tuple(columns.get(c, c) for c in item.columns.keys())
        return next(i for i in items if type(i) is type(item) and tuple(i.columns.keys()) == cols
                    and getattr(i, "unique", None) == getattr(item, "unique", None))

    constraints, indexes = [], []
    for item in sorted(old_table.constraints, key=lambda c: str(c.name)):
        cols = tuple(item.columns.keys())
        if not set(cols) & set(columns) or isinstance(item, sa.PrimaryKeyConstraint):
            continue
        if isinstance(item, sa.UniqueConstraint) and ("uq", cols) not in existing:
            continue
        new_item = counterpart(table.constraints, item)
        if new_item.name == item.name:
            continue
        if isinstance(item, sa.ForeignKeyConstraint):
            what, create = "foreign key", ops.CreateForeignKeyOp.from_constraint(new_item)
            drop = ops.DropConstraintOp(item.name, table.name, type_="foreignkey")
        else:
            what, create = "unique constraint", ops.CreateUniqueConstraintOp.from_constraint(new_item)
            drop = ops.DropConstraintOp(item.name, table.name, type_="unique")
        constraints.append(Step(f"rename {what} {item.name} -> {new_item.name} on {table.name}",
                                ops.ModifyTableOps(table.name, [drop, create]), batch=table.name))
    for item in sorted(old_table.indexes, key=lambda i: str(i.name)):
        cols = tuple(item.columns.keys())
        if not set(cols) & set(columns) or ("uix" if item.unique else "ix", cols) not in existing:
            continue
        new_item = counterpart(table.indexes, item)
        if new_item.name == item.name:
            continue
        indexes.append(Step(f"rename index {item.name} -> {new_item.name} on {table.name}",
                            ops.ModifyTableOps(table.name, [ops.DropIndexOp(item.name, table_name=table.name),
                                                            ops.CreateIndexOp.from_index(new_item)])))
    plan.steps += constraints + indexes


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


def _diff_indexes(plan: Plan, before: dict, entity, table: sa.Table, renamed: dict[str, str]) -> None:
    """New indexes and unique constraints; ``renamed`` (``{old column: new}``) were renamed with their column."""
    old = {(kind, tuple(renamed.get(c, c) for c in cols)) for kind, cols in _index_signatures(before)}
    old = {(kind, cols) for kind, cols in old if set(cols) <= set(table.c.keys())}  # others go with their column
    new = _index_signatures(entity.to_json())
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
    """The SQL the steps would run on ``dialect_name``, without a database (``loom plan --sql``).

    SQLite's batch steps copy a table, which alembic can only plan against the live table: they are
    listed as a comment.
    """
    buffer = io.StringIO()
    context = MigrationContext.configure(dialect_name=dialect_name, opts={"as_sql": True, "output_buffer": buffer})
    _invoke(Operations(context), steps, dialect_name)
    return buffer.getvalue()


def _invoke(operations: Operations, steps: list[Step], dialect_name: str) -> None:
    offline = operations.migration_context.as_sql
    for table, group in itertools.groupby(steps, key=lambda s: s.batch if dialect_name == "sqlite" else None):
        if table and offline:
            operations.impl.static_output(f"-- copy table {table} (SQLite batch mode) to: "
                                          + "; ".join(step.description for step in group))
        elif table:  # one copy of the table for consecutive steps on it
            # the copy keeps AUTOINCREMENT (ids of deleted records are never given out again), and gives it
            # to tables made before Loom asked for it
            with operations.batch_alter_table(table, recreate="auto",
                                              table_kwargs={"sqlite_autoincrement": True}) as batch:
                for step in group:
                    for operation in _operations(step):
                        batch.invoke(operation)
        else:
            for step in group:
                if step.run is not None and offline:
                    operations.impl.static_output(f"-- {step.description} (Python, run by loom migrate)")
                elif step.run is not None:
                    step.run(operations.migration_context.connection)
                for operation in _operations(step):
                    operations.invoke(operation)


def _operations(step: Step) -> list[ops.MigrateOperation]:
    if step.operation is None:
        return []
    if isinstance(step.operation, ops.ModifyTableOps):
        return list(step.operation.ops)
    return [step.operation]
