"""Ref changes: a ref field pointing at another entity (``to``), or deleting differently (``on_delete``).

Either way the foreign key is dropped and created again (by copying the table on SQLite: batch mode).
An ``on_delete`` change keeps every value. A new ``to`` makes the stored ids meaningless (they name
records of the old target), so the rows holding one would lose it: a :class:`RetargetCheck` refuses
that unless data loss is allowed, and then the values are cleared before the new foreign key is made;
a required ref cannot be cleared, so a new target over rows with values is refused outright.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

from loomcrm.engine.manifest import Manifest

from ..tables import NAMING_CONVENTION, ON_DELETE
from .checks import copied_first, count_where, described, sample_ids
from .steps import Plan, Step, n_rows

__all__ = ["REF_CHANGES", "ref_steps", "RetargetCheck"]

#: The ref params whose change alters the foreign key.
REF_CHANGES = ("to", "on_delete")


def ref_steps(plan: Plan, where: str, old: dict, field_: Any, table: sa.Table, manifest: Manifest) -> list[Step]:
    """The steps changing the foreign key of ref field ``where`` from ``old`` (its stored definition)
    to ``field_``: for a new target, clearing the values first (checked by a :class:`RetargetCheck`),
    then dropping the old key and creating the new one. A change of type is a conversion, not this."""
    if old.get("type") != "ref" or field_.type != "ref":
        return []
    column = field_.column
    before, after = old["params"], field_.params
    fk = next(c for c in table.foreign_key_constraints if c.column_keys == [column])
    old_name = _foreign_key_name(table.name, column, before["to"])
    changes = []
    steps = []
    if before["to"] != after["to"]:
        changes.append(f"to {before['to']} -> {after['to']}")
        target = sa.table(table.name, sa.column(column))
        clear = sa.update(target).where(target.c[column].is_not(None)).values({column: sa.null()})
        check = RetargetCheck(where, table.name, column, before["to"], after["to"], field_.required)
        steps.append(Step(f"clear {table.name}.{column} (ids of {before['to']}, not {after['to']})",
                          ops.ExecuteSQLOp(clear), check=check))
    if before["on_delete"] != after["on_delete"]:
        changes.append(f"ON DELETE {ON_DELETE[before['on_delete']]} -> {ON_DELETE[after['on_delete']]}")
    steps.append(Step(f"replace foreign key {old_name} with {fk.name} on {table.name} ({where}: {', '.join(changes)})",
                      ops.ModifyTableOps(table.name, [
                          ops.DropConstraintOp(old_name, table.name, type_="foreignkey"),
                          ops.CreateForeignKeyOp.from_constraint(fk)]),
                      batch=table.name))
    return steps


def _foreign_key_name(table_name: str, column: str, target: str) -> str:
    """The name the naming convention gave the foreign key of ``column`` to ``target`` (an entity
    name is its table's), shortened alike when long, so the key found is the key created."""
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    if target != table_name:
        sa.Table(target, metadata, sa.Column("id", sa.Integer, primary_key=True))
    table = sa.Table(table_name, metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column(column, sa.Integer, sa.ForeignKey(f"{target}.id")))
    return next(iter(table.foreign_key_constraints)).name


@dataclass(frozen=True)
class RetargetCheck:
    """The rows of ``table`` with a value in ``column``, counted before ref field ``where`` points at
    another entity: their ids name records of ``old`` and are cleared. Any such row refuses the plan
    unless data loss is allowed; if the field is ``required``, always (it cannot be left without a value).
    """

    where: str
    table: str
    column: str
    old: str
    new: str
    required: bool

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        """Count the rows holding an id of the old target; the step says how many it clears."""
        table = sa.table(self.table, sa.column("id"), sa.column(self.column))
        having = table.c[self.column].is_not(None)
        count = count_where(conn, table.c.id, having)
        if not count:
            return described(step, "no row has a value to lose"), None
        step = described(step, f"destructive: loses the values of {n_rows(count)}")
        what = (f"{self.where} now points at {self.new} instead of {self.old}, but {n_rows(count)} "
                f"({sample_ids(conn, table.c.id, having, count)}) {'holds' if count == 1 else 'hold'} {self.old} ids")
        if self.required:
            return step, (f"{what}, which mean nothing for {self.new}, and the field is required, so they cannot be "
                          f"cleared: add a new ref field to {self.new} instead (and drop this one once it is no "
                          f"longer used), or point it back at {self.old}")
        if allow_data_loss:
            return step, None
        return step, (f"{what}, which mean nothing for {self.new}: run 'loom migrate --allow-data-loss' to clear "
                      f"{'it' if count == 1 else 'them'}{copied_first(conn)}, or add a new ref field to {self.new} instead "
                      f"and keep this one")
