"""The audit trail as a built-in plugin: every create, update and delete writes one row to
``loom_audit`` inside the write's transaction, so a rolled-back write leaves no trace and a
committed one always has its row.

Its hooks are ``trylast``: a plugin's own after-hooks run first and may still veto the write.
"""

from __future__ import annotations

from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.runtime.audit import TRANSITION_KEY, changed_fields, write_entry

__all__ = ["loom_after_create", "loom_after_update", "loom_after_delete"]


def _write(ctx, entity, action, record, changes) -> None:
    write_entry(ctx.conn, at=ctx.now, actor=ctx.actor, channel=ctx.channel, action=action, entity=entity,
                record=record, changes=changes)


@hookimpl(trylast=True)
def loom_after_create(ctx, entity, record):
    _write(ctx, entity, "create", record, changed_fields(entity, None, record))


@hookimpl(trylast=True)
def loom_after_update(ctx, entity, old, record):
    changes = changed_fields(entity, old, record)
    if ctx.transition is not None:  # a workflow transition: its entry names it
        changes[TRANSITION_KEY] = list(ctx.transition)
    _write(ctx, entity, "transition" if ctx.transition else "update", record, changes)


@hookimpl(trylast=True)
def loom_after_delete(ctx, entity, record):
    _write(ctx, entity, "delete", record, changed_fields(entity, record, None))
