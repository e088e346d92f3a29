"""One pluggy PluginManager per app: built-ins first, then installed, listed and local plugins;
and calling hooks so that a failing plugin is named and never leaves a half-done write."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from loomcrm.plugins import DEFAULT_PLUGINS

from . import hookspecs
from .errors import ConfigError, ConfigErrors, Location, Problem
from .fieldtypes import FieldType

__all__ = ["AdminPage", "PluginCommand", "make_plugin_manager", "field_types", "call_hook", "emit_event", "describe_plugins", "ENTRY_POINT_GROUP",
           "LOCAL_PLUGINS"]

ENTRY_POINT_GROUP = "loomcrm.plugins"
#: A project's own plugins: every ``*.py`` in this folder beside loom.yaml is loaded.
LOCAL_PLUGINS = "plugins"
log = logging.getLogger("loomcrm.plugins")


def make_plugin_manager(
    plugins: Iterable[str | object] = (), *, entry_points: bool = True, where: Location | None = None,
    project_dirs: Iterable[str | Path] = (),
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-in plugins, installed entry points, ``plugins`` and the
    modules in the ``plugins/`` folder of each of ``project_dirs`` (a base config's, then the project's).

    ``plugins`` holds module paths (as written under ``plugins:`` in loom.yaml) or plugin objects.
    A module that cannot be imported stops here with a config error naming it.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    errors = []
    dirs = [Path(d) for d in project_dirs]
    for i, project_dir in enumerate(dirs):  # a base's plugins are named after its folder: sales/plugins/x.py
        errors += _load_local(pm, project_dir, "" if i == len(dirs) - 1 else f"{project_dir.name}/")
    for plugin in plugins:
        if isinstance(plugin, str):
            if pm.has_plugin(plugin):
                continue
            try:
                module = importlib.import_module(plugin)
            except Exception as exc:  # any import failure stops startup with the plugin's name
                errors.append(
                    ConfigError(
                        where or Location("loom.yaml"),
                        "E130",
                        f"plugin '{plugin}' could not be imported: {type(exc).__name__}: {exc}",
                        _import_hint(plugin, exc),
                    )
                )
                continue
            pm.register(module, name=plugin)
        else:
            pm.register(plugin)
    if errors:
        raise ConfigErrors(errors)
    return pm


def _load_local(pm: pluggy.PluginManager, project_dir: Path, prefix: str = "") -> list[ConfigError]:
    """Register every module of ``<project>/plugins/`` under the name ``<prefix>plugins/<file>``."""
    errors = []
    folder = project_dir / LOCAL_PLUGINS
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        if path.name.startswith("_"):
            continue
        name = f"{prefix}{LOCAL_PLUGINS}/{path.name}"
        module_name = f"loom_local_plugins.{abs(hash(str(folder)))}.{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:  # stop startup, naming the file
            sys.modules.pop(module_name, None)
            errors.append(ConfigError(Location(name), "E130", f"plugin '{name}' could not be loaded: "
                                      f"{type(exc).__name__}: {exc}", f"python {path} shows where"))
            continue
        if not pm.has_plugin(name):
            pm.register(module, name=name)
    return errors


def _import_hint(plugin: str, exc: Exception) -> str:
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing and not (plugin == missing or plugin.startswith(f"{missing}.")):
        top = missing.split(".")[0]
        return f"the plugin imports '{missing}', which is not installed: install it, e.g. pip install {top}"
    if missing:
        return ("check the module path under 'plugins:': it names an installed package, or a module "
                f"in the project directory ({plugin.split('.')[0]}.py beside loom.yaml)")
    return f"the error is in the plugin's own code: python -c 'import {plugin}' shows where"


def field_types(pm: pluggy.PluginManager) -> dict[str, FieldType]:
    """All registered field types by name; the first implementation to name a type wins."""
    types: dict[str, FieldType] = {}
    for result in pm.hook.loom_field_types():
        for field_type in result or []:
            types.setdefault(field_type.name, field_type)
    return types


def action_types(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Action types by name: the built-ins, then the plugins' (a plugin's replaces a built-in)."""
    from .actions import BUILTIN_ACTIONS

    types: dict[str, Any] = dict(BUILTIN_ACTIONS)
    for result in reversed(pm.hook.loom_action_types()):  # the first plugin to name a type wins
        types.update(result or {})
    return types


# --- calling hooks --------------------------------------------------------------------------------


def call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> list[Any]:
    """Call hook ``name`` and return its results, awaiting those of ``async def`` implementations.

    A ``Problem`` raised by a plugin passes through (it is the plugin's answer); any other exception
    becomes a 500 ``Problem`` naming the plugin and the hook, so the caller's transaction rolls back
    and the person reading the log knows where to look.
    """
    caller = getattr(pm.hook, name)
    try:
        results = caller(**kwargs)
        if results is None or not isinstance(results, list):
            return [_resolved(results)] if results is not None else []
        return [_resolved(r) for r in results]
    except Problem:
        raise
    except Exception as exc:
        plugin = culprit(pm, name, exc)
        log.exception("plugin %s failed in %s", plugin, name)
        raise Problem(500, "Plugin failed", detail=f"plugin '{plugin}' failed in {name}: {type(exc).__name__}: "
                      f"{exc}; nothing was changed") from exc


def emit_event(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> None:
    """Call an after-commit event hook: failures are logged with the plugin's name, never raised
    (the write is stored for good)."""
    caller = getattr(pm.hook, name)
    if not caller.get_hookimpls():
        return
    try:
        call_hook(pm, name, **kwargs)
    except Problem as problem:
        log.error("event %s: %s", name, problem.detail or problem.title)


def culprit(pm: pluggy.PluginManager, hook: str, exc: BaseException) -> str:
    """The name of the plugin whose implementation of ``hook`` raised ``exc`` (from the traceback)."""
    codes = {impl.function.__code__: impl.plugin_name for impl in getattr(pm.hook, hook).get_hookimpls()
             if hasattr(impl.function, "__code__")}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found or "unknown"


def _resolved(value: Any) -> Any:
    """The value of an awaitable result of an ``async def`` implementation; other values as they are."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a worker thread, or the command line: no loop here
        return asyncio.run(wait())
    with ThreadPoolExecutor(1) as pool:  # this thread runs a loop: await on another thread's loop
        return pool.submit(asyncio.run, wait()).result()


# --- commands plugins add ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginCommand:
    """A ``loom`` sub-command a plugin adds (returned by ``loom_commands``).

    :ivar run: ``run(args, loom) -> exit code`` (None means 0); ``loom`` is the project's app, its
        database closed afterwards.
    :ivar arguments: ``arguments(parser)`` adds the command's options to its argparse parser
        (``--database`` is always there).
    """

    name: str
    help: str
    run: Any
    arguments: Any = None


# --- pages plugins add to the admin app ------------------------------------------------------------------


@dataclass(frozen=True)
class AdminPage:
    """A page a plugin adds to the admin app, with its entry in the side nav (returned by
    ``loom_admin_pages``). Only signed-in users see it; visitors are sent to the sign-in page.

    :ivar path: where it is, below the admin app: ``"forecast"`` is ``/admin/forecast``. Letters, digits,
        ``-``, ``_`` and ``/``; neither an entity's plural nor one of the app's own paths (``login``,
        ``logout``, ``locale``, ``static``).
    :ivar title: the menu entry's text: a string, or ``{locale: text}`` like a config label.
    :ivar template: the jinja2 template rendered, by its full name (``"acme/forecast.html"``), found through
        the same loader chain as Loom's own (give its folder with ``loom_template_dirs``). It gets the
        context of every admin page (docs/templates.md) plus ``title`` and what ``context`` returns;
        extend ``admin/base.html`` to get the header and the menu.
    :ivar context: ``context(request, ctx) -> dict`` of template variables, called for every request
        with litestar's request and the caller's :class:`~loomcrm.engine.runtime.context.Context` (read
        through ``loom.records`` with it, so the caller's roles apply). Raise ``Problem(403)`` or
        ``Problem(404)`` for the admin app's error page; return a litestar ``Response`` to answer yourself.
    :ivar allowed: ``allowed(ctx) -> bool``: who may open the page (default: every signed-in user);
        for others the menu leaves the entry out and the page answers 403.
    :ivar menu: False to serve the page without a menu entry.
    """

    path: str
    title: str | dict[str, str]
    template: str
    context: Any = None
    allowed: Any = None
    menu: bool = True


# --- what is loaded ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str  # built-in | entry point | loom.yaml | plugins/ folder | Python
    where: str  # module file or object
    hooks: tuple[str, ...]


def describe_plugins(pm: pluggy.PluginManager, listed: Iterable[str] = ()) -> list[PluginInfo]:
    """Every registered plugin: where it came from and which hooks it implements, in calling order."""
    entry_points = {name for name, _ in pm.list_name_plugin() if any(
        dist_plugin is pm.get_plugin(name) for dist_plugin, _ in pm.list_plugin_distinfo())}
    listed = set(listed)
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        origin = ("built-in" if name in DEFAULT_PLUGINS else "entry point" if name in entry_points else
                  "loom.yaml" if name in listed else f"{LOCAL_PLUGINS}/ folder" if f"{LOCAL_PLUGINS}/" in name
                  else "Python")
        where = getattr(plugin, "__file__", None) or type(plugin).__name__
        infos.append(PluginInfo(name, origin, str(where), hooks))
    return infos
