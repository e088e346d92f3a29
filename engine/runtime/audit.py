"""The audit trail: what changed, when, by whom, through which channel.

Rows are written by the built-in ``loomcrm.plugins.audit`` plugin inside each write's transaction;
this module holds the table, the diff, and the reads (record history, retention purge).

Renames (``renamed_from:`` on entities and fields) are mapped when the history is read, never
rewritten in the rows: an audit row is a record of what happened, under the names of the day, and
stays as written (a rename that rolls back, or is followed by others, never leaves rows half-renamed,
and a migration does not grow with the size of the trail). :func:`name_history` follows the names
through the chain of applied manifests in ``loom_migrations``, so entries written several renames ago
show under today's names.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from dataclasses import field as default
from typing import Any

import sqlalchemy as sa

from loomcrm.generators.tables import MIGRATIONS_TABLE, audit_table, migrations_table

from ..manifest import Entity
from .persistence import dump_record

__all__ = ["AUDIT", "TRANSITION_KEY", "changed_fields", "write_entry", "write_entries", "history_page", "purge_before",
           "FormerName", "name_history"]

#: The audit table (the app's MetaData holds an identical one, which migrations create).
AUDIT = audit_table(sa.MetaData())
_INSERT = AUDIT.insert()
#: In a transition's entry, ``changes[TRANSITION_KEY]`` is ``[workflow, transition]`` (read back as
#: the entry's ``transition``).
TRANSITION_KEY = "$transition"
_COLUMNS = (AUDIT.c.id, AUDIT.c.at, AUDIT.c.actor, AUDIT.c.channel, AUDIT.c.action, AUDIT.c.version,
            AUDIT.c.changes, AUDIT.c.entity)
#: name_history per database and last applied migration: read once, not on every history request.
_NAMES: dict[tuple, dict[str, list[FormerName]]] = {}
_NAMES_KEPT = 16


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

    Entries written before the entity or a field was renamed (``renamed_from:``, over any number of
    migrations) show under the current names; the rows stay as written.
    """
    names = former_names(conn, entity)
    mine = (sa.or_(*(name.condition() for name in names)), AUDIT.c.record_id == record_id)
    # only the latest record with this id: a database that reused the id of a deleted record (SQLite
    # tables made before Loom asked for AUTOINCREMENT) must not show the new record the old one's past
    created = sa.select(sa.func.max(AUDIT.c.id)).where(*mine, AUDIT.c.action == "create").scalar_subquery()
    stmt = sa.select(*_COLUMNS).where(*mine, AUDIT.c.id >= sa.func.coalesce(created, 0))
    if before is not None:
        stmt = stmt.where(AUDIT.c.id < before)
    rows = conn.execute(stmt.order_by(AUDIT.c.id.desc()).limit(limit + 1)).all()
    entries = [_entry(r, next((n.fields for n in names if n.holds(r)), {})) for r in rows[:limit]]
    return entries, entries[-1]["id"] if len(rows) > limit else None


def _entry(row, fields: dict[str, str]) -> dict[str, Any]:
    changes = {fields.get(name, name): change for name, change in row.changes.items()}
    entry = {"id": row.id, "at": row.at.isoformat().replace("+00:00", "Z"), "actor": row.actor,
             "channel": row.channel, "action": row.action, "version": row.version, "changes": changes}
    if TRANSITION_KEY in changes:
        workflow, name = changes.pop(TRANSITION_KEY)
        entry["transition"] = {"workflow": workflow, "name": name}
    return entry


# --- names over time -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FormerName:
    """Audit rows written under entity name ``entity`` (from ``since``, until ``until``, when set) belong
    to one current entity; ``fields`` maps the field names they were written with to the current ones.

    The times are those of the migrations that changed the names; they bound a name only when the name
    alone is ambiguous (another entity, or the same entity with other fields, used it at another time).
    """

    entity: str
    fields: dict[str, str] = default(default_factory=dict)
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def condition(self) -> sa.ColumnElement[bool]:
        bounds = [AUDIT.c.at >= self.since] if self.since else []
        bounds += [AUDIT.c.at < self.until] if self.until else []
        return sa.and_(AUDIT.c.entity == self.entity, *bounds)

    def holds(self, row) -> bool:
        return row.entity == self.entity and (self.since is None or row.at >= self.since) \
            and (self.until is None or row.at < self.until)


def name_history(applied: list[tuple[dt.datetime, dict[str, dict]]]) -> dict[str, list[FormerName]]:
    """Per entity of the last manifest, every name its rows were written under, with the field names
    of the day mapped to the last ones, from ``applied``: ``(applied_at, manifest["entities"])`` of
    each migration, oldest first.

    A migration keeps an entity when the new manifest has its name, or renames it when the new entity's
    ``renamed_from`` is an entity of the previous manifest that the new one no longer has (the rules
    ``loom migrate`` applies); fields alike, within the entity. Each migration starts a new period, and
    periods that agree are merged at the end, so most names need no time bounds.
    """
    periods: dict[str, list[FormerName]] = {}
    previous: dict[str, dict] = {}
    for i, (at, entities) in enumerate(applied):
        since = at if i else None
        following: dict[str, list[FormerName]] = {}
        for name, entity in entities.items():
            fields = entity.get("fields", {})
            source = name if name in previous else entity.get("renamed_from")
            if source not in previous or (source != name and source in entities):
                following[name] = [FormerName(name, {f: f for f in fields}, since)]
                continue
            old_fields = previous[source].get("fields", {})
            renames = {f["renamed_from"]: n for n, f in fields.items()
                       if n not in old_fields and f.get("renamed_from") in old_fields}
            carried = [replace(p, fields={w: renames.get(c, c) for w, c in p.fields.items()}) for p in periods[source]]
            carried[-1] = replace(carried[-1], until=at)
            following[name] = [*carried, FormerName(name, {f: f for f in fields}, at)]
        periods, previous = following, entities
    users = {}  # entity name written -> the current entities whose rows used it
    for current, names in periods.items():
        for name in names:
            users.setdefault(name.entity, set()).add(current)
    return {current: _merged(names, users) for current, names in periods.items()}


def _merged(names: list[FormerName], users: dict[str, set[str]]) -> list[FormerName]:
    """One unbounded :class:`FormerName` per entity name written, where no other entity used that name
    and the field names of all its periods agree; bounded periods otherwise."""
    result = []
    for written in dict.fromkeys(n.entity for n in names):
        group = [n for n in names if n.entity == written]
        fields: dict[str, str] = {}
        agree = len(users[written]) == 1
        for name in group:
            agree = agree and all(fields.setdefault(w, c) == c for w, c in name.fields.items())
        result += [FormerName(written, fields)] if agree else group
    return result


def former_names(conn: sa.Connection, entity: Entity) -> list[FormerName]:
    """The names ``entity``'s rows were written under, from the migrations applied to the database; the
    config's own ``renamed_from:`` (entity and fields) covers a rename not migrated yet."""
    applied = _applied_names(conn)
    names = applied.get(entity.name) or applied.get(entity.renamed_from or "") or [FormerName(entity.name)]
    if entity.name not in {n.entity for n in names}:
        names = [*names, FormerName(entity.name)]
    renamed = entity.former_names
    return [replace(n, fields={**{w: renamed.get(c, c) for w, c in n.fields.items()},
                               **{w: c for w, c in renamed.items() if w not in n.fields}}) for n in names]


def _applied_names(conn: sa.Connection) -> dict[str, list[FormerName]]:
    """:func:`name_history` of the database's applied manifests, kept until the next migration."""
    if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
        return {}
    table = migrations_table(sa.MetaData())
    last = conn.execute(sa.select(table.c.id, table.c.manifest_hash).order_by(table.c.id.desc()).limit(1)).first()
    key = (conn.engine.url.render_as_string(hide_password=True), tuple(last) if last else None)
    if key not in _NAMES:
        rows = conn.execute(sa.select(table.c.applied_at, table.c.manifest).order_by(table.c.id)).all()
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.pop(next(iter(_NAMES)))
        _NAMES[key] = name_history([(at, json.loads(text).get("entities", {})) for at, text in rows])
    return _NAMES[key]


def purge_before(conn: sa.Connection, cutoff: dt.datetime) -> int:
    """Delete entries older than ``cutoff``; returns how many."""
    return conn.execute(AUDIT.delete().where(AUDIT.c.at < cutoff)).rowcount
