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

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import jinja2
    from litestar.config.app import AppConfig

    from .actions import ActionType
    from .app import Loom
    from .errors import Problem
    from .fieldtypes import FieldType
    from .manifest import Entity, Manifest
    from .plugins import AdminPage, PluginCommand
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


@hookspec
def loom_action_types() -> Mapping[str, ActionType] | None:
    """Register action types that workflows, automations and schedules can name.

    Called once per app, before the config is compiled. An action written ``{notify_slack:
    {channel: sales}}`` is run by the type registered as ``notify_slack``; a plugin's type may
    replace a built-in one (``set``, ``assign``, ``update``, ``create``, ``webhook``). Subclass
    :class:`~loomcrm.engine.actions.ActionType`: ``compile(params, scope)`` checks the parameters
    when the config compiles (raise :class:`~loomcrm.engine.actions.ActionError`, reported with
    file:line as E137), ``run(run, params)`` acts inside the write's transaction.

    :return: ``{type name: ActionType instance}``.
    """


@hookspec
def loom_contribute_config() -> dict[str, Any] | None:
    """Contribute config: new entities, fields of existing entities, roles, as a fragment shaped like
    an included YAML file (``{"entities": {...}, "roles": {...}}``).

    Fragments are merged beneath the project's own files, like a base config an overlay
    ``extends:``: the project may override what a plugin contributes (labels, options, grants), and
    a project's own values win. Errors in a fragment are reported at ``plugin <name>``.

    :return: the fragment, or None.
    """


@hookspec
def loom_check_config(manifest: Manifest) -> list[dict[str, str]] | None:
    """Add the project's own rules about its config, checked by ``loom validate`` and at every start.

    Called once the config compiled without errors. Problems are reported like Loom's own config
    errors (code E134), at the file and line of the entity or field they name.

    :param manifest: the compiled CRM.
    :return: problems as ``{"entity": ..., "field": ... (optional), "message": ..., "hint": ...
        (optional)}``, or None.
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


@hookspec
def loom_routes(loom: Loom) -> list[Any]:
    """Add HTTP routes to the app, beside Loom's own.

    Called once per app while it is built. Handlers get the caller with ``loom.context(request)``
    (401 when sign-in is required and missing) and read and write through ``loom.records`` with
    that context, so roles, validation, hooks and the audit trail apply as for the REST API.

    :param loom: the app (:class:`~loomcrm.engine.app.Loom`): manifest, records, engine.
    :return: litestar route handlers or routers.
    """


@hookspec
def loom_template_dirs() -> list[str]:
    """Folders of jinja2 templates, searched after the project's ``templates/`` and before Loom's
    own, so a plugin can override a built-in template by giving one of the same name.

    :return: folder paths.
    """


@hookspec
def loom_jinja_environment(env: jinja2.Environment, manifest: Manifest) -> None:
    """Change the app's jinja2 environment: add filters, tests and globals for templates.

    Called once per app when the environment is built.

    :param env: the environment (mutable).
    """


@hookspec
def loom_admin_pages(loom: Loom) -> list[AdminPage] | None:
    """Add pages to the admin app, each with an entry in its side nav after the entities.

    Called once per app while its routes are built. The pages of all implementations are served,
    under the admin path, to signed-in users only (visitors are sent to the sign-in page), with the
    admin app's Content-Security-Policy; the menu lists them in the order they come.

    :param loom: the app (:class:`~loomcrm.engine.app.Loom`): its manifest, records and templates.
    :return: :class:`~loomcrm.engine.plugins.AdminPage` objects (path, title per locale, template,
        context function), or None.
    """


@hookspec
def loom_handle_exception(exc: Exception) -> Problem | None:
    """Turn an exception no one else handled into an answer, instead of a 500.

    Called when a request raised something that is not a Loom ``Problem``, e.g. a domain error of
    a library a plugin uses. The first implementation that returns a ``Problem`` decides.

    :return: a :class:`~loomcrm.engine.errors.Problem`, or None to leave it to the next one.
    """


@hookspec
def loom_commands() -> list[PluginCommand]:
    """Add sub-commands to ``loom`` for this project (``loom -p acme recalculate-scores``).

    Looked up only when a command line names a command Loom does not have. A plugin command may
    not replace one of Loom's own.

    :return: :class:`~loomcrm.engine.plugins.PluginCommand` objects.
    """


# -------------------------------------------------------------------------------------------------
# runtime: who is calling
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def loom_current_user(headers: Mapping[str, str], cookies: Mapping[str, str]) -> int | None:
    """Identify the caller of a request by other means than Loom's sessions and tokens (single
    sign-on behind a trusted proxy, client certificates...).

    Called for every API request before Loom looks at its own cookie and token; the first
    implementation that returns a user id decides. The user must exist and be active, else the
    request is a 401. Return None to let Loom authenticate as usual.

    :param headers: the request headers (case-insensitive keys).
    :param cookies: the request cookies.
    :return: the id of an active user, or None.
    """


# -------------------------------------------------------------------------------------------------
# runtime: while a record is written, inside the write's database transaction
# -------------------------------------------------------------------------------------------------
# Every channel (REST API, admin forms, imports, the Python API) goes through the same pipeline:
# validate input -> loom_before_* -> loom_permission_veto -> loom_validate_record -> write ->
# loom_after_* -> commit -> loom_record_* events. Raising in any hook before the commit rolls the
# whole write back: raise ``loomcrm.engine.errors.Problem`` for a clear 4xx answer; any other
# exception answers 500 naming the plugin and the hook, and nothing is written.
#
# Implementations may be ``async def``: Loom awaits them (on a loop of their own, so they must not
# share loop-bound objects such as connections created on another loop).


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


@hookspec(firstresult=True)
def loom_write(ctx: Context, entity: Entity, operation: str, write: Callable[[], Any]) -> Any:
    """Wrap the statements that store a record, inside the transaction (after every check and
    ``loom_before_*`` hook, before the ``loom_after_*`` hooks).

    Implement it as a pluggy wrapper; the innermost implementation (Loom's own) runs ``write()``::

        @hookimpl(wrapper=True)
        def loom_write(ctx, entity, operation):
            started = time.perf_counter()
            result = yield          # the INSERT / UPDATE / DELETE and its link rows
            log.info("%s %s took %.1f ms", operation, entity.name, 1000 * (time.perf_counter() - started))
            return result

    Raising before or after the ``yield`` rolls the write back.

    :param operation: ``create``, ``update`` or ``delete``.
    :param write: runs the statements; returns the stored record (None for ``delete``).
    """


@hookspec
def loom_permission_veto(ctx: Context, entity: Entity, operation: str, record: dict[str, Any]) -> str | None:
    """Refuse a write the caller's roles allow, for a reason of your own (e.g. won deals cannot be
    deleted; nobody edits last year's invoices).

    Called inside the transaction after the ``loom_before_*`` hooks, before anything is written.
    Any implementation returning a reason refuses the write with a 403 whose detail is that reason.

    :param operation: ``create``, ``update`` or ``delete``.
    :param record: the record as it would be after the write (for ``delete``: as it is).
    :return: a reason for a person ("won deals cannot be deleted"), or None to allow.
    """


@hookspec
def loom_validate_record(ctx: Context, entity: Entity, record: dict[str, Any],
                         old: dict[str, Any] | None) -> list[dict[str, str]] | None:
    """Check a whole record before it is stored, after type validation and the ``loom_before_*``
    hooks. Every implementation's errors are reported together in one 422.

    :param record: the record as it would be stored (for an update: old values with the changes).
    :param old: the stored record before an update; None on create.
    :return: errors as ``{"field": ..., "message": ...}`` (``code`` optional, default ``invalid``),
        or None / an empty list.
    """


# -------------------------------------------------------------------------------------------------
# runtime: after the transaction committed
# -------------------------------------------------------------------------------------------------
# Events: the write is stored for good. Use them for notifications, caches, outside systems. An
# exception here is logged with the plugin's name and does not change the answer (the write stands).


@hookspec
def loom_record_created(ctx: Context, entity: Entity, record: dict[str, Any]) -> None:
    """A record was created and committed.

    :param record: the stored record (Python values).
    """


@hookspec
def loom_record_updated(ctx: Context, entity: Entity, old: dict[str, Any], record: dict[str, Any]) -> None:
    """A record was changed and committed."""


@hookspec
def loom_record_transitioned(ctx: Context, entity: Entity, old: dict[str, Any], record: dict[str, Any],
                             workflow: str, transition: str) -> None:
    """A workflow transition was fired and committed (after ``loom_record_updated`` for the same change).

    :param workflow: the workflow's name; ``transition``: the transition's name. The state field's
        old and new values are in ``old`` and ``record``.
    """


@hookspec
def loom_record_deleted(ctx: Context, entity: Entity, record: dict[str, Any]) -> None:
    """A record was deleted and committed.

    :param record: the record as it was.
    """
