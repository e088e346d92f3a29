"""Whole tables: creating new entities' tables (in an order foreign keys allow) and dropping removed ones."""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic.operations import Operations, ops
from sqlalchemy.schema import sort_tables_and_constraints

from .checks import LossCheck
from .steps import Plan, Step


def join_table_of(entity: str, fname: str, fjson: dict) -> tuple[str, str]:
    """The join table of a stored ``refs`` field and its owner column (as ``tables.join_table`` names them)."""
    return f"{entity}__{fname}", f"{entity}_id" if fjson["params"].get("to") != entity else "source_id"


def drop_entities(plan: Plan, removed: dict[str, dict]) -> None:
    """Drop the tables of removed entities: their join tables first, then each table after the removed
    tables that refer to it. A foreign key between removed tables that closes a cycle is dropped first.
    (A remaining entity cannot refer to a removed one: the compiler refuses such a config.)"""
    refs = {name: {f["params"]["to"] for f in e.get("fields", {}).values()
                   if f.get("type") == "ref" and f["params"].get("to") in removed and f["params"]["to"] != name}
            for name, e in removed.items()}
    for name, entity in sorted(removed.items()):
        for fname, fjson in entity.get("fields", {}).items():
            if fjson.get("type") == "refs":
                join = join_table_of(name, fname, fjson)[0]
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


def sorted_tables(tables) -> list[sa.Table]:
    """``tables`` with referenced tables first, as far as cycles allow (without SQLAlchemy's warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # cycles are expected: see creation_order
        return [table for table, _ in sort_tables_and_constraints(list(tables)) if table is not None]


def creation_order(tables: list[sa.Table]) -> tuple[list[sa.Table], list[sa.ForeignKeyConstraint]]:
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


def bare_column(column: sa.Column) -> sa.Column:
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


def create_table(plan: Plan, table: sa.Table, what: str, skip=()) -> None:
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
    """Add a foreign key its CREATE TABLE left out (see ``create_table``): a no-op on SQLite."""


@Operations.implementation_for(AddDeferredForeignKeyOp)
def _add_deferred_foreign_key(operations: Operations, operation: AddDeferredForeignKeyOp) -> None:
    if operations.impl.dialect.supports_alter:  # else CREATE TABLE kept it inline
        operations.impl.add_constraint(operation.to_constraint(operations.migration_context))
