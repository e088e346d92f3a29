"""Webhook subscriptions made through the API (``/api/webhooks``).

Each belongs to the user who made it and runs as that user: its payloads hold only what their roles
let them read, and only events of records they may read. Making one needs the right to read *every*
record of each entity its events name (scope ``all``, no row rule): a subscription is a standing
export, and one with a narrower scope would still learn from the record ids and timings it is sent.

Its URL must lead to a public address, when made and at each delivery, so that nobody makes the server
call into its own network (its database, a cloud's metadata service) and read the answers in the
delivery log; the operator lifts this with ``LOOM_WEBHOOKS_ALLOW_PRIVATE=1``. A user has at most
:data:`MAX_PER_USER` subscriptions.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from ..errors import Problem
from ..webhooks import ALLOW_PRIVATE_ENV, check_address, check_event, check_url, event_entity, private_allowed
from .access import forbidden
from .auth import _iso
from .context import Context
from .outbox import api_subscription_name
from .pipeline import _error, invalid

__all__ = ["Subscriptions", "SECRET_PREFIX", "MAX_PER_USER"]

SECRET_PREFIX = "whsec_"
FIELDS = ("url", "events")
#: Subscriptions one user may have through the API.
MAX_PER_USER = 20


class Subscriptions:
    """Create, list and delete one app's API subscriptions, and read their delivery log."""

    def __init__(self, records):
        self.records = records
        tables = records.store.metadata.tables
        self.table, self.outbox = tables["loom_webhook"], tables["loom_outbox"]
        self.deliveries = tables["loom_webhook_delivery"]

    def create(self, ctx: Context, data: Any) -> dict[str, Any]:
        """A new subscription of the caller; the answer holds its signing secret, shown this once."""
        actor = _signed_in(ctx)
        url, events = self._checked(data)
        self._check_access(ctx, events)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self.records.writing(ctx) as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(self.table)
                                 .where(self.table.c.run_as == actor)).scalar_one()
            if count >= MAX_PER_USER:
                raise invalid([_error("", "limit", f"you have {count} webhook subscriptions, the most one user "
                                      f"may have ({MAX_PER_USER}); delete one you no longer need, or subscribe "
                                      "one URL to several events")])
            row = {"url": url, "events": events, "secret": secret, "run_as": actor, "created_at": ctx.now,
                   "active": True}
            row["id"] = conn.execute(self.table.insert().values(**row).returning(self.table.c.id)).scalar_one()
        self.records.outbox.forget()
        return {**_public(row), "secret": secret}

    def list(self, ctx: Context) -> list[dict[str, Any]]:
        """The caller's subscriptions, oldest first, without their secrets."""
        actor = _signed_in(ctx)
        with self.records.reading() as conn:
            rows = conn.execute(sa.select(self.table).where(self.table.c.run_as == actor)
                                .order_by(self.table.c.id)).mappings().all()
        return [_public(r) for r in rows]

    def delete(self, ctx: Context, subscription_id: int) -> None:
        """Delete one of the caller's subscriptions, with its undelivered events and its log."""
        actor = _signed_in(ctx)
        with self.records.writing(ctx) as conn:
            self._find(conn, actor, subscription_id)
            conn.execute(self.outbox.delete().where(self.outbox.c.subscription == api_subscription_name(subscription_id)))
            conn.execute(self.table.delete().where(self.table.c.id == subscription_id))
        self.records.outbox.forget()

    def delivery_log(self, ctx: Context, subscription_id: int, *, limit: int, before: int | None) -> dict[str, Any]:
        """Attempts to deliver the subscription's events, newest first, a page at a time."""
        actor = _signed_in(ctx)
        log, outbox = self.deliveries, self.outbox
        stmt = (sa.select(log.c.id, outbox.c.event, outbox.c.record_id, outbox.c.key, outbox.c.status,
                          log.c.attempt, log.c.at, log.c.status_code, log.c.error, log.c.duration_ms)
                .join(outbox, outbox.c.id == log.c.outbox_id)
                .where(outbox.c.subscription == api_subscription_name(subscription_id)))
        if before is not None:
            stmt = stmt.where(log.c.id < before)
        with self.records.reading() as conn:
            self._find(conn, actor, subscription_id)
            rows = conn.execute(stmt.order_by(log.c.id.desc()).limit(limit + 1)).mappings().all()
        data = [{"id": r["id"], "event": r["event"], "record_id": r["record_id"], "key": r["key"],
                 "attempt": r["attempt"], "at": _iso(r["at"]), "ok": r["error"] is None,
                 "status_code": r["status_code"], "error": r["error"], "duration_ms": r["duration_ms"],
                 "event_status": r["status"]} for r in rows[:limit]]
        return {"data": data, "next_cursor": str(data[-1]["id"]) if len(rows) > limit else None}

    # --- checks -------------------------------------------------------------------------------------
    def _checked(self, data: Any) -> tuple[str, list[str]]:
        """``url`` and ``events`` of a request body; one 422 names every problem."""
        if not isinstance(data, dict):
            raise invalid([_error("", "type", "the body must be a JSON object with url and events")])
        errors = [_error(key, "unknown_field", f"unknown field '{key}' (a subscription takes url and events)")
                  for key in data if key not in FIELDS]
        url, events = data.get("url"), data.get("events")
        problem = "is required" if url is None else check_url(url)
        if problem:
            errors.append(_error("url", "required" if url is None else "url", problem))
        elif not private_allowed() and (problem := check_address(url)):
            errors.append(_error("url", "address", f"{problem}; subscriptions made through the API send to public "
                                 f"addresses only (the server's operator may allow others with {ALLOW_PRIVATE_ENV}=1)"))
        if not isinstance(events, list) or not events:
            errors.append(_error("events", "required" if events is None else "type",
                                 "give a list of events, e.g. [\"account.created\", \"opportunity.*\"]"))
        else:
            for i, event in enumerate(events):
                found = check_event(event, self.records.manifest.entities)
                if found:
                    message, hint = found
                    errors.append(_error(f"events[{i}]", "unknown_event", f"{message} ({hint})"))
        if errors:
            raise invalid(errors)
        return url, list(dict.fromkeys(events))

    def _check_access(self, ctx: Context, events: list[str]) -> None:
        """403 unless the caller may read every record of each entity the events name."""
        access = ctx.access
        if access is None:
            return
        entities = self.records.manifest.entities
        refused = [name for name in dict.fromkeys(event_entity(e) for e in events)
                   if not access.can(entities[name], "read") or access.rows(entities[name], "read") is not None]
        if refused:
            raise forbidden(f"subscribing to events of {', '.join(refused)} needs the right to read every such "
                            "record (read: all, without a row rule); your roles do not give it",
                            [_error("events", "forbidden", f"you may not read every {name} record")
                             for name in refused])

    def _find(self, conn, actor: int, subscription_id: int) -> None:
        found = conn.execute(sa.select(self.table.c.id).where(self.table.c.id == subscription_id,
                                                              self.table.c.run_as == actor)).first()
        if found is None:
            raise Problem(404, "Not found", detail=f"you have no webhook subscription with id {subscription_id}")


def _signed_in(ctx: Context) -> int:
    if ctx.actor is None:
        raise Problem(401, "Unauthorized", detail="sign in to manage webhook subscriptions")
    return ctx.actor


def _public(row) -> dict[str, Any]:
    return {"id": row["id"], "url": row["url"], "events": list(row["events"]), "active": row["active"],
            "created_at": _iso(row["created_at"])}
