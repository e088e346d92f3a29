"""Applying steps through alembic's operations (in the caller's transaction), or rendering their SQL."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops

from .steps import Step


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
    for (table, _), group in itertools.groupby(steps, key=_batches(dialect_name)):
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


def _batches(dialect_name: str) -> Callable[[Step], tuple[str | None, int]]:
    """The key grouping consecutive steps into one SQLite table copy: the table, and a count of the
    copies closed so far (see ``Step.closes_batch``)."""
    closed = 0

    def key(step: Step) -> tuple[str | None, int]:
        nonlocal closed
        if dialect_name != "sqlite":
            return None, 0
        group = (step.batch, closed)
        closed += step.closes_batch
        return group
    return key


def _operations(step: Step) -> list[ops.MigrateOperation]:
    if step.operation is None:
        return []
    if isinstance(step.operation, ops.ModifyTableOps):
        return list(step.operation.ops)
    return [step.operation]
