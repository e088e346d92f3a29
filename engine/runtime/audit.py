"""The audit trail: what changed, when, by whom, through which channel.

Rows are written by the built-in ``loomcrm.plugins.audit`` plugin inside each write's transaction;
this module holds the table, the diff, and the reads (record history, retention purge).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from loomcrm.generators.tables import audit_table

from ..manifest import Entity
from .persistence import dump_record

__all__ = ["AUDIT", "TRANSITION_KEY", "changed_fields", "write_entry", "write_entries", "history_page", "purge_before"]

#: The audit table (the app's MetaData holds an identical one, which migrations create).
AUDIT = audit_table(sa.MetaData())
_INSERT = AUDIT.insert()
#: In a transition's entry, ``changes[TRANSITION_KEY]`` is ``[workflow, transition]`` (read back as
#: the entry's ``transition``).
TRANSITION_KEY = "$transition"
_COLUMNS = (AUDIT.c.id, AUDIT.c.at, AUDIT.c.actor, AUDIT.c.channel, AUDIT.c.action, AUDIT.c.version,
            AUDIT.c.changes)


def changed_fields(entity: Entity, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, list]:
    """``{field: [old, new]}`` in JSON form for every user field whose value differs."""
    before = dump_record(entity, old) if old else {}
    after = dump_record(entity, new) if new else {}
    changes = {}
    for field in entity.user_fields:
        a, b = before.get(field.name), after.get(field.name)
        if a != b and not (a in (None, []) and b in (None, [])):  # no links and no field: the same
            changes[field.name] = [a, b]
    return changes


def write_entry(conn: sa.Connection, *, at: dt.datetime, actor: int | None, channel: str, action: str,
                entity: Entity, record: dict[str, Any], changes: dict[str, list]) -> None:
    conn.execute(_INSERT, {"at": at, "actor": actor, "channel": channel, "action": action, "entity": entity.name,
                           "record_id": record["id"], "version": record.get("version"), "changes": changes})


def write_entries(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Many entries at once (bulk operations); each dict has the keys of :func:`write_entry`'s row."""
    if rows:
        conn.execute(_INSERT, rows)


def history_page(conn: sa.Connection, entity: Entity, record_id: int, *, limit: int,
                 before: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """Entries of one record, newest first, and the id to continue before (or None on the last page).

    Entries written before a field was renamed (``renamed_from:``) show it under its new name; the rows
    stay as written.
    """
    mine = (AUDIT.c.entity == entity.name, AUDIT.c.record_id == record_id)
    # only the latest record with this id: a database that reused the id of a deleted record (SQLite
    # tables made before Loom asked for AUTOINCREMENT) must not show the new record the old one's past
    created = sa.select(sa.func.max(AUDIT.c.id)).where(*mine, AUDIT.c.action == "create").scalar_subquery()
    stmt = sa.select(*_COLUMNS).where(*mine, AUDIT.c.id >= sa.func.coalesce(created, 0))
    if before is not None:
        stmt = stmt.where(AUDIT.c.id < before)
    rows = conn.execute(stmt.order_by(AUDIT.c.id.desc()).limit(limit + 1)).all()
    entries = [_entry(r, entity.former_names) for r in rows[:limit]]
    return entries, entries[-1]["id"] if len(rows) > limit else None


def _entry(row, former_names: dict[str, str]) -> dict[str, Any]:
    changes = {former_names.get(name, name): change for name, change in row.changes.items()}
    entry = {"id": row.id, "at": row.at.isoformat().replace("+00:00", "Z"), "actor": row.actor,
             "channel": row.channel, "action": row.action, "version": row.version, "changes": changes}
    if TRANSITION_KEY in changes:
        workflow, name = changes.pop(TRANSITION_KEY)
        entry["transition"] = {"workflow": workflow, "name": name}
    return entry


def purge_before(conn: sa.Connection, cutoff: dt.datetime) -> int:
    """Delete entries older than ``cutoff``; returns how many."""
    return conn.execute(AUDIT.delete().where(AUDIT.c.at < cutoff)).rowcount
