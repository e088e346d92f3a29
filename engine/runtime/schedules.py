"""Scheduled rules (``schedules:``), run by ``loom worker``.

A rule runs its actions once for each record that comes to match its ``when`` (a case open longer
than 48 hours, a deal three days before its close date). Exactly once, however many workers run:

- a *mark* row ``(rule, record)`` is inserted in the same transaction as the actions; its primary key
  lets only one worker's transaction commit it (the other's insert fails, and it skips the record);
- a record that no longer matches loses its mark, so it runs again if it matches again later;
- the rule's ``every:`` is claimed through a counter row holding the time of its last run, so several
  workers do not all scan the table each tick.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..errors import Problem
from .context import Context, utcnow

__all__ = ["run_schedules", "run_schedule"]

PAGE = 500


def run_schedules(loom, *, now: dt.datetime | None = None, log: Callable[[str], None] | None = None,
                  force: bool = False) -> dict[str, int]:
    """Run every scheduled rule whose ``every`` has passed (all with ``force``); returns how many
    records each rule acted on."""
    now = now or utcnow()
    done = {}
    for schedule in loom.manifest.schedules.values():
        if force or _claim_turn(loom, schedule, now):
            done[schedule.name] = run_schedule(loom, schedule, now=now, log=log)
    return done


def _claim_turn(loom, schedule, now: dt.datetime) -> bool:
    """True for the one worker that gets this period of the rule (its last run is stored as seconds)."""
    counters = loom.metadata.tables["loom_counter"]
    key, stamp = f"schedule:{schedule.name}", int(now.timestamp())
    records = loom.records
    with records.writing(Context(channel="worker", now=now)) as conn:
        updated = conn.execute(counters.update().where(counters.c.key == key,
                                                       counters.c.value <= stamp - schedule.every).values(value=stamp))
        if updated.rowcount:
            return True
        if conn.execute(sa.select(counters.c.value).where(counters.c.key == key)).first() is not None:
            return False
        conn.execute(counters.insert().values(key=key, value=stamp))
        return True


def run_schedule(loom, schedule, *, now: dt.datetime | None = None, log: Callable[[str], None] | None = None) -> int:
    """Run one rule over every record of its entity now; returns how many records it acted on."""
    now = now or utcnow()
    records = loom.records
    entity = loom.entity(schedule.entity)
    marks = loom.metadata.tables["loom_schedule_mark"]
    with records.reading() as conn:
        marked = set(conn.execute(sa.select(marks.c.record_id).where(marks.c.schedule == schedule.name)).scalars())
    matching, acted, failed, after = set(), 0, 0, 0
    ctx = Context(channel="worker", now=now)
    while True:
        with records.reading() as conn:
            page = records.store.scan(conn, entity, after, PAGE)
        if not page:
            break
        after = page[-1]["id"]
        for record in page:
            try:
                if not records.flow.holds(schedule.when, ctx, record, None):
                    continue
            except Problem as problem:  # one record's values must not stop the rule (nor the worker)
                failed += 1
                if log:
                    log(f"schedule {schedule.name}: {entity.name} {record['id']}: {problem.detail}")
                continue
            matching.add(record["id"])
            if record["id"] in marked:
                continue
            try:
                acted += _act(loom, schedule, entity, record["id"], now)
            except Problem as problem:
                failed += 1
                if log:
                    log(f"schedule {schedule.name}: {entity.name} {record['id']}: {problem}")
    stale = marked - matching  # records that stopped matching may match again later
    if stale:
        with records.writing(Context(channel="worker", now=now)) as conn:
            conn.execute(marks.delete().where(marks.c.schedule == schedule.name, marks.c.record_id.in_(sorted(stale))))
    if log and failed:
        log(f"schedule {schedule.name}: {failed} {entity.name} record(s) failed; they are tried again next time")
    return acted


def _act(loom, schedule, entity, record_id: int, now: dt.datetime) -> int:
    """Mark the record and run the rule's actions on it, in one transaction; 0 when another worker
    was first (or the record is gone, or no longer matches once locked)."""
    records = loom.records
    marks = loom.metadata.tables["loom_schedule_mark"]
    ctx = Context(channel="worker", now=now)
    try:
        with records.writing(ctx) as conn:
            conn.execute(marks.insert().values(schedule=schedule.name, record_id=record_id, at=now))
            try:
                record = records.current(conn, entity, record_id, None, ctx, "update")
            except Problem:
                raise _Skip from None  # deleted meanwhile: the mark goes with the rollback
            if not records.flow.holds(schedule.when, ctx, record, None):
                raise _Skip
            records.flow.run_actions(ctx, entity, record, schedule.actions)
        return 1
    except (IntegrityError, _Skip):
        return 0


class _Skip(Exception):
    """Roll the record's transaction back without an error."""
