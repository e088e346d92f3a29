"""Rollup fields at write time: a child's write updates the summaries of the parents it points at.

Each rollup is one correlated ``UPDATE``, run inside the child's write transaction (so a write that
rolls back leaves the summaries as they were)::

    UPDATE account SET won_amount = (SELECT coalesce(sum(c.amount), 0) FROM opportunity AS c
                                     WHERE c.account_id = account.id AND c.stage = 'won')
    WHERE account.id IN (...)

The database computes the value from the rows as they are, after locking the parents' rows, so
concurrent writes never add up wrong and no value is carried over from Python. The parent's ``version``, ``updated_*`` and audit trail
stay untouched: the value is derived, the child's own history records the change that caused it,
and bumping the version would make someone editing the account get a 409 whenever a colleague adds
an opportunity.

A rollup over a rollup (a region's sum of its accounts' ``won_amount``) is updated after the one it
reads, in the same write.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.exc import DataError

from ..errors import Problem
from ..manifest import Entity, Manifest
from ..rollups import Rollup, rollups_of
from .persistence import Store

__all__ = ["Rollups", "RollupOverflow", "Doomed"]

#: Per rollup, the parents whose children a delete takes along (see :meth:`Rollups.before_delete`).
Doomed = dict[Rollup, set[int]]

CHILD = "loom_rollup_child"  # the child table's alias: a tree (account.parent) summarises its own table


class Rollups:
    """The rollup fields of one app, with their statements built once."""

    def __init__(self, manifest: Manifest, store: Store):
        self.manifest, self.store = manifest, store
        self.rollups = rollups_of(manifest.entities)  # each after the rollups it reads
        self._of_child: dict[str, list[Rollup]] = {}
        self._dependents: dict[Rollup, list[Rollup]] = {}
        for rollup in self.rollups:
            self._of_child.setdefault(rollup.child, []).append(rollup)
            self._dependents[rollup] = [r for r in self.rollups if r.child == rollup.entity and rollup.name in r.reads]
        self._some = {r: self._statement(r).where(self._id(r).in_(sa.bindparam("ids", expanding=True)))
                      for r in self.rollups}
        self._cascades = self._cascading_children()

    # --- the pipeline's calls ---------------------------------------------------------------------
    def after_write(self, conn: sa.Connection, entity: Entity, old: dict | None, record: dict | None,
                    doomed: Doomed | None = None) -> None:
        """Recompute the rollups ``entity``'s write affects (``old`` None on create, ``record`` None on
        delete, with ``doomed``: what :meth:`before_delete` found), in the write's transaction. An update
        that changes none of the fields a rollup reads costs nothing; a child moved to another parent
        updates both. A value its field cannot hold is a 422 naming the rollup."""
        parents: dict[Rollup, set[int]] = {}
        for rollup in self._of_child.get(entity.name, ()):
            if old is not None and record is not None and all(old.get(f) == record.get(f) for f in rollup.reads):
                continue
            ids = {r.get(rollup.ref) for r in (old, record) if r is not None} - {None}
            if ids:
                parents.setdefault(rollup, set()).update(ids)
        for rollup, ids in (doomed or {}).items():
            parents.setdefault(rollup, set()).update(ids)
        if parents:
            self._update(conn, parents)

    def before_delete(self, conn: sa.Connection, entity: Entity, record_id: int) -> Doomed:
        """The parents of children the database will delete by cascade (or empty a ref of, by
        ``set_null``) with this record, one level deep: give them to :meth:`after_write` of the delete."""
        parents: Doomed = {}
        for child, ref, rollups in self._cascades.get(entity.name, ()):
            table = self.store.tables[child.name]
            columns = [table.c[child.fields[r.ref].column] for r in rollups]
            rows = conn.execute(sa.select(*columns).distinct().where(table.c[child.fields[ref].column] == record_id))
            for row in rows:
                for rollup, parent in zip(rollups, row, strict=True):
                    if parent is not None:
                        parents.setdefault(rollup, set()).add(parent)
        return parents

    def refresh_all(self, conn: sa.Connection) -> int:
        """Recompute every rollup of every record (after a migration adds one or changes its
        definition): one UPDATE per rollup, in dependency order. Returns the rows updated; raises
        :class:`RollupOverflow` when a value does not fit its field."""
        updated = 0
        for rollup in self.rollups:
            try:
                updated += conn.execute(self._statement(rollup)).rowcount
            except DataError:
                raise RollupOverflow(self._overflow(rollup)) from None
        return updated

    # --- statements -------------------------------------------------------------------------------
    def _update(self, conn: sa.Connection, parents: dict[Rollup, set[int]]) -> None:
        """Run the rollups for the parents given, in dependency order; a rollup that others read
        passes its parents' own parents on to them."""
        locked: set[tuple[str, int]] = set()
        for rollup in self.rollups:
            ids = parents.get(rollup)
            if not ids:
                continue
            self._lock(conn, rollup.entity, ids, locked)
            try:
                conn.execute(self._some[rollup], {"ids": sorted(ids)})
            except DataError:  # the transaction is spoilt (PostgreSQL): the write rolls back
                raise Problem(422, "Validation failed", errors=[
                    {"field": "", "code": "rollup_overflow", "message": self._overflow(rollup)}]) from None
            for dependent in self._dependents[rollup]:
                parents.setdefault(dependent, set()).update(self._refs(conn, dependent, ids))

    def _lock(self, conn: sa.Connection, entity: str, ids: set[int], locked: set[tuple[str, int]]) -> None:
        """Lock the parents' rows (PostgreSQL) before the UPDATE that counts their children.

        Under READ COMMITTED an UPDATE that waits for another write's row lock still counts from
        the snapshot it started with, missing that write's child: two children created at once
        would leave a count of 1. A statement that starts after the lock is held sees every
        committed child. Rows are locked in id order so concurrent writes cannot deadlock here.
        (SQLite runs one write at a time.)"""
        if conn.dialect.name != "postgresql":
            return
        new = sorted(i for i in ids if (entity, i) not in locked)
        if new:
            table = self.store.tables[entity]
            conn.execute(sa.select(table.c.id).where(table.c.id.in_(new)).order_by(table.c.id)
                         .with_for_update(key_share=True))  # NO KEY UPDATE: children may still be added
            locked.update((entity, i) for i in new)

    def _overflow(self, rollup: Rollup) -> str:
        """Why the database refused a rollup's value, and what to change in the config."""
        field = self.manifest.entities[rollup.entity].fields[rollup.name]
        if "precision" not in field.params:  # a 64-bit integer: only a sum reaches its end
            return f"{rollup.entity}.{rollup.name} cannot hold the {rollup.op} of its {rollup.child} records"
        digits = field.params["precision"] - field.params["scale"]
        return (f"{rollup.entity}.{rollup.name} cannot hold the {rollup.op} of its {rollup.child} records: "
                f"it has {digits} digits before the decimal point (precision {field.params['precision']}, "
                f"scale {field.params['scale']}); give it a larger precision")

    def _refs(self, conn: sa.Connection, rollup: Rollup, ids: Iterable[int]) -> set[int]:
        """The parents of ``rollup`` that the child records ``ids`` point at."""
        child = self.manifest.entities[rollup.child]
        table = self.store.tables[child.name]
        ref = table.c[child.fields[rollup.ref].column]
        return set(conn.execute(sa.select(ref).distinct().where(table.c.id.in_(sorted(ids)), ref.is_not(None)))
                   .scalars())

    def _id(self, rollup: Rollup) -> sa.Column:
        return self.store.tables[rollup.entity].c.id

    def _statement(self, rollup: Rollup) -> sa.Update:
        """``UPDATE parent SET field = (summary of its children)``, for every parent."""
        parent = self.manifest.entities[rollup.entity]
        field = parent.fields[rollup.name]
        return self.store.tables[parent.name].update().values({field.column: self._summary(rollup)})

    def _summary(self, rollup: Rollup) -> sa.ColumnElement:
        """The correlated subquery giving one parent's value: count and sum are 0 without children,
        min and max null. Decimal sums are rounded to the field's scale, since SQLite adds in binary
        floating point (0.1 + 0.2) and a filter for 0.30 must find the result."""
        child = self.manifest.entities[rollup.child]
        table = self.store.tables[child.name].alias(CHILD)
        if rollup.op == "count":
            value = sa.func.count()
        else:
            value = getattr(sa.func, rollup.op)(table.c[child.fields[rollup.field].column])
        field = self.manifest.entities[rollup.entity].fields[rollup.name]
        if rollup.op == "sum" and "scale" in field.params:
            value = sa.func.round(value, field.params["scale"])
        query = sa.select(value).where(table.c[child.fields[rollup.ref].column] == self._id(rollup))
        if rollup.where is not None:
            query = query.where(rollup.where.condition(table, "rollup_"))
        summary = query.scalar_subquery()
        return sa.func.coalesce(summary, 0) if rollup.op == "sum" else summary

    def _cascading_children(self) -> dict[str, list[tuple[Entity, str, list[Rollup]]]]:
        """Per entity, the children a delete of one of its records takes along (``on_delete:
        cascade``) or changes (``set_null``), with the rollups of other parents that this affects."""
        cascades: dict[str, list[tuple[Entity, str, list[Rollup]]]] = {}
        for child_name, rollups in self._of_child.items():
            child = self.manifest.entities[child_name]
            for ref in child.user_fields:
                action = ref.params.get("on_delete") if ref.type == "ref" else None
                if action not in ("cascade", "set_null"):
                    continue
                affected = [r for r in rollups if r.ref != ref.name and (action == "cascade" or ref.name in r.reads)]
                if affected:
                    cascades.setdefault(ref.target, []).append((child, ref.name, affected))
        return cascades


class RollupOverflow(Exception):
    """A rollup's value does not fit its field (a sum past a decimal's precision): the database
    refused it, and the statement's transaction is spoilt."""
