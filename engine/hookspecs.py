"""Hook specifications: the places where a plugin changes what Loom does.

Hooks are grouped by the stage they run in. Write an implementation with the same name and any
subset of the parameters, decorate it with :data:`hookimpl`, and list the module under
``plugins:`` in ``loom.yaml`` (or publish it under the ``loomcrm.plugins`` entry-point group)::

    from loomcrm.engine.hookspecs import hookimpl

    @hookimpl
    def loom_before_create(ctx, entity, data):
        if entity.name == "account":
            data.setdefault("rating", "warm")

Built-in behaviour is registered the same way with ``trylast=True``, so a plugin's
implementation runs first and can override it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from litestar.config.app import AppConfig

    from .fieldtypes import FieldType
    from .manifest import Entity, Manifest
    from .runtime.context import Context

__all__ = ["hookimpl", "hookspec", "PROJECT_NAME"]

PROJECT_NAME = "loomcrm"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------------------
# compile: while the YAML is turned into a Manifest
# -------------------------------------------------------------------------------------------------


@hookspec
def loom_field_types() -> list[FieldType]:
    """Register field types that YAML can name in ``type:``.

    Called once per app, before the config is compiled. Results of all implementations are
    combined; when two register the same ``name``, the one that runs first wins (plugins run
    before the trylast built-ins, so a plugin can replace a built-in type).

    :return: a list of :class:`~loomcrm.engine.fieldtypes.FieldType` instances.
    """


# -------------------------------------------------------------------------------------------------
# generate: while the web application is built from the Manifest
# -------------------------------------------------------------------------------------------------


@hookspec
def loom_configure_app(app_config: AppConfig, manifest: Manifest) -> None:
    """Change the litestar application before it is created.

    Called once per app after Loom has added its own routes, so an implementation can append
    route handlers, middleware, exception handlers or lifespan callbacks to ``app_config``.

    :param app_config: litestar's ``AppConfig``, mutable.
    :param manifest: the compiled CRM.
    """


# -------------------------------------------------------------------------------------------------
# runtime: while a record is written, inside the write's database transaction
# -------------------------------------------------------------------------------------------------
# Every channel (REST API, admin forms, imports, the Python API) goes through the same pipeline:
# validate input -> loom_before_* -> write -> loom_after_* -> commit. Raising in any of these hooks
# rolls the whole write back; raise ``loomcrm.engine.errors.Problem`` for a clear 4xx answer.


@hookspec
def loom_before_create(ctx: Context, entity: Entity, data: dict[str, Any]) -> None:
    """Called before a record is inserted, after its input passed type validation.

    :param ctx: who is writing, through which channel, with the open connection (``ctx.conn``).
    :param entity: the entity being written.
    :param data: field values to insert (validated Python values); mutate it to change them.
        Values a hook sets are validated again before they are stored.
    """


@hookspec
def loom_after_create(ctx: Context, entity: Entity, record: dict[str, Any]) -> None:
    """Called after a record was inserted, in the same transaction (raising rolls it back).

    :param record: the stored record, including ``id`` and system fields.
    """


@hookspec
def loom_before_update(ctx: Context, entity: Entity, old: dict[str, Any], changes: dict[str, Any]) -> None:
    """Called before a record is updated.

    :param old: the stored record before the change.
    :param changes: the fields being changed (validated values); mutate it to change them.
    """


@hookspec
def loom_after_update(ctx: Context, entity: Entity, old: dict[str, Any], record: dict[str, Any]) -> None:
    """Called after a record was updated, in the same transaction.

    :param old: the record before the change.
    :param record: the record after the change.
    """


@hookspec
def loom_before_delete(ctx: Context, entity: Entity, record: dict[str, Any]) -> None:
    """Called before a record is deleted; raise to refuse the deletion."""


@hookspec
def loom_after_delete(ctx: Context, entity: Entity, record: dict[str, Any]) -> None:
    """Called after a record was deleted, in the same transaction.

    :param record: the record as it was before deletion.
    """
