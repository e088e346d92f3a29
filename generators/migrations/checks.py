"""Data checks: what a plan needs to know about the rows before anything changes (counts and sample ids),
run by :func:`check_data` against the database; a failing check refuses the plan."""

from __future__ import annotations

from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .steps import Plan, Step, n_rows


def check_data(plan: Plan, conn: sa.Connection, *, allow_data_loss: bool = False) -> None:
    """Run the plan's data checks on ``conn`` before anything changes. Each check counts the rows its
    step concerns (the step's description then says how many) and refuses the plan when those rows
    would lose or break something, giving the count and the first ids; ``allow_data_loss`` lets drops
    of data through (never conversions that cannot be done)."""
    for i, step in enumerate(plan.steps):
        if step.check is not None:
            plan.steps[i], refusal = step.check.run(conn, step, allow_data_loss)
            if refusal:
                plan.refused.append(refusal)


def described(step: Step, words: str) -> Step:
    """``step`` with ``words`` after its description: what its data check found."""
    return replace(step, description=f"{step.description} ({words})")


def sample_ids(conn: sa.Connection, key: sa.ColumnElement, where: sa.ColumnElement, count: int) -> str:
    """``id 7`` or ``ids 1, 2, 3, 4, 5 ...``: the first rows matching ``where``, to name in a message."""
    ids = conn.execute(sa.select(key).where(where).distinct().order_by(key).limit(6)).scalars().all()
    return ("id " if count == 1 else "ids ") + ", ".join(str(i) for i in ids[:5]) + (" ..." if count > 5 else "")


def count_where(conn: sa.Connection, key: sa.ColumnElement, where: sa.ColumnElement) -> int:
    """How many distinct ``key`` values (rows, or a join table's owners) match ``where``."""
    return conn.execute(sa.select(sa.func.count(sa.distinct(key))).where(where)).scalar_one()


def copied_first(conn: sa.Connection) -> str:
    """What ``--allow-data-loss`` hints add on SQLite, whose file ``loom migrate`` copies first."""
    return " (the SQLite database is copied first)" if conn.dialect.name == "sqlite" else ""


def _they(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


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

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        """Count the rows without a value: the fill gives them one (the step says how many), else any
        such row refuses the plan."""
        table = sa.table(self.table, sa.column("id"), *([] if self.new else [sa.column(self.column)]))
        missing = sa.true() if self.new else table.c[self.column].is_(None)
        count = count_where(conn, table.c.id, missing)
        if self.fill is not None:
            return replace(step, description=f"backfill {self.where}: {n_rows(count)} from {self.fill}"), None
        step = described(step, f"data check: {n_rows(count)} without a value")
        if not count:
            return step, None
        what = f"new field {self.where} is required" if self.new else f"{self.where} is now required"
        them = _they(count, "it", "them")
        return step, (f"{what}, but {n_rows(count)} {_they(count, 'has', 'have')} no value "
                      f"({sample_ids(conn, table.c.id, missing, count)}): add 'default:' or 'backfill:' to fill "
                      f"{them}, or fill {them} first")


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

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        """Count the rows the drop loses data of; the step says how many."""
        table = sa.table(self.table, sa.column(self.key), *([sa.column(self.column)] if self.column else []))
        key = table.c[self.key]
        having = table.c[self.column].is_not(None) if self.column else sa.true()
        count = count_where(conn, key, having)
        if not count:
            return described(step, "no row has data to lose"), None
        loss = f"{self.lost}{n_rows(count)}"
        step = described(step, f"destructive: loses {loss}")
        if allow_data_loss:
            return step, None
        return step, (f"dropping {self.what} would lose {loss} ({sample_ids(conn, key, having, count)}): run "
                      f"'loom migrate --allow-data-loss' to drop {_they(count, 'it', 'them')}{copied_first(conn)}, "
                      f"or put the {self.kind} back")


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

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        """Count the rows holding the option: ``map:`` changes them (the step says how many), else any
        such row refuses the plan."""
        table = sa.table(self.table, sa.column("id"), sa.column(self.column))
        holding = holding_option(table.c[self.column], self.option, self.multi, conn.dialect.name)
        count = count_where(conn, table.c.id, holding)
        if self.fix is None:
            return described(step, n_rows(count)), None
        holds = _they(count, "holds", "hold")
        step = described(step, f"data check: {n_rows(count)} {holds} it")
        if not count:
            return step, None
        return step, (f"option {self.option!r} was removed from {self.where}, but {n_rows(count)} {holds} it "
                      f"({sample_ids(conn, table.c.id, holding, count)}): {self.fix}")


class BackfillFailed(Exception):
    """A backfill gave rows no value, or one their field cannot hold; the migration is rolled back."""


def holding_option(column: sa.ColumnElement, option: str, multi: bool, dialect: str) -> sa.ColumnElement:
    """The rows whose ``column`` holds ``option``: equal to it, or a list (multi_enum) containing it."""
    if not multi:
        return column == option
    if dialect == "postgresql":
        return sa.type_coerce(column, postgresql.JSONB).contains(sa.bindparam(None, [option], type_=postgresql.JSONB))
    items = sa.func.json_each(column).table_valued("value")
    return sa.exists(sa.select(1).select_from(items).where(items.c.value == option))
