"""The transactional outbox: events written in the write's transaction, delivered by ``loom worker``.

A write that rolls back takes its outbox rows with it, and one that commits keeps them until the worker
has delivered them (:mod:`.delivery`): no event is lost and none is sent for a change that never
happened. Each row is one event for one subscription, its payload already shaped by the field and row
security of the subscription's ``run_as`` user, so nobody learns through a webhook what their roles
hide from them in the API.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from ..expressions import context
from ..manifest import Entity, Manifest
from ..webhooks import Webhook
from .access import Access, Policies, RowFilter, access_for
from .audit import changed_fields
from .context import Context, zone
from .persistence import Store, dump_record

__all__ = ["Outbox", "CACHE_SECONDS", "api_subscription_name", "api_subscription_id", "record_in_rows"]

log = logging.getLogger("loomcrm.webhooks")

#: How long one process trusts what it read about subscriptions made through the API and about the
#: users webhooks run as: a new subscription hears of writes in other processes within this time.
CACHE_SECONDS = 2.0
API_PREFIX = "api:"


def api_subscription_name(subscription_id: int) -> str:
    """The outbox's name of a subscription made through the API (``webhooks:`` names cannot look so)."""
    return f"{API_PREFIX}{subscription_id}"


def api_subscription_id(name: str) -> int | None:
    """The id in an outbox name made by :func:`api_subscription_name`; None for a ``webhooks:`` name."""
    number = name.removeprefix(API_PREFIX)
    return int(number) if number != name and number.isdigit() else None


@dataclass(frozen=True)
class Viewer:
    """What a subscription's user may see: ``access`` None is everything; ``allowed`` False is nothing
    (the user does not exist or is disabled)."""

    access: Access | None
    allowed: bool = True


EVERYTHING = Viewer(None)
NOTHING = Viewer(None, allowed=False)


class Outbox:
    """Webhook events of one app waiting for delivery."""

    def __init__(self, manifest: Manifest, store: Store, policies: Policies):
        self.manifest, self.store, self.policies = manifest, store, policies
        tables = store.metadata.tables
        self.table, self.subscriptions = tables["loom_outbox"], tables["loom_webhook"]
        self._insert = self.table.insert()
        self._configured = tuple(manifest.webhooks.values())
        self._api: tuple[float, tuple[Webhook, ...]] = (float("-inf"), ())
        self._viewers: dict[tuple, tuple[float, Viewer]] = {}
        self._has_table: bool | None = None  # None: not looked yet

    def forget(self) -> None:
        """Drop what this process remembers of subscriptions, users and tables (after changing them)."""
        self._api = (float("-inf"), ())
        self._viewers.clear()
        self._has_table = None

    def enqueue(self, conn, ctx: Context, event: str, entity: Entity, record: dict, old: dict | None = None) -> int:
        """Queue ``event`` (``<entity>.created`` ...) of ``record`` for every subscription that wants it,
        in the running transaction; returns how many deliveries were queued."""
        wanting = [s for s in (*self._configured, *self._api_subscriptions(conn)) if s.wants(event, entity.name)]
        if not wanting:
            return 0
        # a deleted record comes as both record and old (from a custom event of an automation on delete too)
        shapes = Shapes(entity, record, old, stored=not event.endswith(".deleted") and record is not old)
        rows = []
        for subscription in wanting:
            payload = self._payload(conn, ctx, subscription, event, entity, shapes)
            if payload is not None:
                rows.append({"event": event, "entity": entity.name, "record_id": record["id"],
                             "subscription": subscription.name, "url": subscription.url, "payload": payload,
                             "key": payload["id"], "status": "pending", "attempts": 0,
                             "next_attempt_at": ctx.now, "claimed_until": None, "created_at": ctx.now,
                             "delivered_at": None, "last_error": None})
        if rows:
            conn.execute(self._insert, rows)
        return len(rows)

    # --- who wants the event, and what they may see of it ------------------------------------------
    def _api_subscriptions(self, conn) -> tuple[Webhook, ...]:
        """Active subscriptions made through the API, read at most every :data:`CACHE_SECONDS`
        (so a write costs no query when nobody subscribed)."""
        read_at, subscriptions = self._api
        now = time.monotonic()
        if now - read_at < CACHE_SECONDS:
            return subscriptions
        if not self._has_table:  # a database not migrated since webhooks came: looked at again until it is
            found = sa.inspect(conn).has_table(self.subscriptions.name)
            if not found and self._has_table is None:
                log.warning("the database has no table %s: run 'loom migrate' to use webhooks", self.subscriptions.name)
            self._has_table = found
        rows = conn.execute(sa.select(self.subscriptions).where(self.subscriptions.c.active.is_(True))).all() \
            if self._has_table else []
        subscriptions = tuple(Webhook(api_subscription_name(r.id), r.url, tuple(r.events), run_as_id=r.run_as)
                              for r in rows)
        self._api = (now, subscriptions)
        return subscriptions

    def _payload(self, conn, ctx: Context, subscription: Webhook, event: str, entity: Entity,
                 shapes: Shapes) -> dict | None:
        """The event as the subscription's user may see it; None when they may not see it at all
        or its ``where`` leaves the record out."""
        if subscription.where is not None and not self._matches(subscription, ctx, shapes):
            return None
        viewer = self._viewer(conn, subscription)
        access = viewer.access
        if not viewer.allowed or access is not None and not (
                access.can(entity, "read") and self._in_rows(conn, shapes, access.rows(entity, "read"))):
            return None
        key = uuid.uuid4().hex
        payload: dict[str, Any] = {"id": key, "event": event, "entity": entity.name,
                                   "occurred_at": ctx.now.isoformat().replace("+00:00", "Z"), "actor": ctx.actor,
                                   "record": shapes.dumped(access)}
        if shapes.old is not None and not event.endswith(".deleted"):  # a deletion has nothing new
            payload["changes"] = shapes.changes(access)
        return payload

    def _in_rows(self, conn, shapes: Shapes, rows: RowFilter | None) -> bool:
        """Whether the event's record is among ``rows``: a stored one is looked up (in this transaction),
        a deleted one is tested through its values."""
        if shapes.stored:
            return self.store.in_rows(conn, shapes.entity, shapes.record["id"], rows)
        return record_in_rows(conn, self.store, shapes.entity, shapes.record, rows)

    def _matches(self, subscription: Webhook, ctx: Context, shapes: Shapes) -> bool:
        where = subscription.where
        today = ctx.now.astimezone(zone(self.manifest.timezone)).date().isoformat() if "today" in where.reads \
            else None
        try:
            variables = context(where.reads, {"record": shapes.record, "old": shapes.old, "now": ctx.now,
                                              "today": today})
            return where.evaluate(variables) is True
        except Exception as exc:  # a filter that cannot be evaluated lets nothing through, and says so
            log.warning("webhook '%s': 'where' (%s) could not be evaluated for %s %s, so no event was queued: "
                        "%s: %s", subscription.name, where.text, shapes.entity.name, shapes.record.get("id"),
                        type(exc).__name__, exc)
            return False

    def _viewer(self, conn, subscription: Webhook) -> Viewer:
        """What the subscription's user may see, remembered for :data:`CACHE_SECONDS`."""
        if subscription.run_as is None and subscription.run_as_id is None:
            return EVERYTHING
        key = ("name", subscription.run_as) if subscription.run_as is not None else ("id", subscription.run_as_id)
        now = time.monotonic()
        cached = self._viewers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        users = self.store.tables["user"]
        column = users.c.username if key[0] == "name" else users.c.id
        row = conn.execute(sa.select(users.c.id, users.c.active).where(column == key[1])).first()
        if row is None or not row.active:
            log.warning("webhook '%s' runs as %s %s, who %s: no event is queued for it", subscription.name,
                        "user" if key[0] == "name" else "user id", key[1],
                        "does not exist" if row is None else "is disabled")
            viewer = NOTHING
        else:
            viewer = Viewer(access_for(self.policies, self.store, conn, row.id))
        self._viewers[key] = (now + CACHE_SECONDS, viewer)
        return viewer


class Shapes:
    """One event's record in JSON form, computed once and cut down per reader; ``stored``: the record
    is in its table as given (not deleted)."""

    def __init__(self, entity: Entity, record: dict, old: dict | None, *, stored: bool):
        self.entity, self.record, self.old, self.stored = entity, record, old, stored
        self._dumped: dict | None = None
        self._changes: dict | None = None

    def dumped(self, access: Access | None) -> dict:
        if self._dumped is None:
            self._dumped = dump_record(self.entity, self.record)
        return _readable(self._dumped, self.entity, access)

    def changes(self, access: Access | None) -> dict:
        if self._changes is None:
            self._changes = changed_fields(self.entity, self.old, self.record)
        return _readable(self._changes, self.entity, access)


def _readable(values: dict, entity: Entity, access: Access | None) -> dict:
    if access is None:
        return dict(values)
    readable = set(access.readable(entity))
    return {k: v for k, v in values.items() if k in readable}


def record_in_rows(conn, store: Store, entity: Entity, record: dict, rows: RowFilter | None) -> bool:
    """Whether ``record`` (as given, stored or not: a deleted record too) is among ``rows``.

    The row filter's SQL runs over a one-row SELECT of the record's values, so the same condition that
    guards the API decides here; only the columns it reads are sent.
    """
    if rows is None:
        return True
    table = store.tables[entity.name]
    read = {c.name for c in visitors.iterate(rows.condition(table)) if isinstance(c, sa.Column) and c.table is table}
    by_column = {f.column: f.name for f in entity.column_fields}
    cast = sa.cast if conn.dialect.name == "postgresql" else sa.type_coerce  # SQLite's CAST changes values
    columns = [cast(sa.literal(record.get(by_column.get(name, name)), table.c[name].type), table.c[name].type)
               .label(name) for name in sorted(read)]
    values = sa.select(*(columns or [sa.literal(1).label("one")])).subquery()
    stmt = sa.select(sa.literal(1)).select_from(values).where(rows.condition(values))
    return conn.execute(stmt, rows.params).first() is not None
