"""Who is acting, through which channel, and the connection of the running transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

__all__ = ["Context", "CHANNELS", "utcnow", "zone"]

CHANNELS = ("api", "admin", "import", "python", "seed", "cli", "worker")


def zone(name: str) -> dt.tzinfo:
    """The time zone ``name`` (the app's ``timezone``, checked when the config compiles), else UTC."""
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:
        return dt.UTC


def utcnow() -> dt.datetime:
    """Now, timezone-aware in UTC: the one clock of writes, sessions and audit rows."""
    return dt.datetime.now(dt.UTC)


@dataclass
class Context:
    """Passed to every runtime hook.

    :ivar actor: id of the acting user, or None (system, or no authentication configured yet).
    :ivar channel: one of :data:`CHANNELS`.
    :ivar locale: the reader's locale for messages, or None for the app's default.
    :ivar conn: the open connection of the current write transaction (set by the pipeline).
    :ivar now: the timestamp the write records as ``created_at``/``updated_at``.
    :ivar access: what the actor may see and change (:class:`~loomcrm.engine.runtime.access.Access`);
        None for unrestricted callers: Loom's own code, and everyone in a project without ``roles:``.
    :ivar transition: while a workflow transition is being stored, ``(workflow, transition)`` names
        (the audit trail records it); None otherwise.
    :ivar depth: how deep in actions' writes this write is (0: the caller's own write).
    """

    actor: int | None = None
    channel: str = "python"
    locale: str | None = None
    conn: sa.Connection | None = None
    now: dt.datetime = field(default_factory=utcnow)
    access: Any = None
    transition: tuple[str, str] | None = None
    depth: int = 0
    deferred: list | None = field(default=None, repr=False)  # after-commit events of the running write

    def acting(self) -> Context:
        """A context for an action's own writes: the same actor, clock and transaction, with Loom's
        rights (the implementer wrote the action; as in Salesforce's record-triggered flows)."""
        return Context(actor=self.actor, channel=self.channel, locale=self.locale, conn=self.conn, now=self.now,
                       depth=self.depth + 1, deferred=self.deferred)
