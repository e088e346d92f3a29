"""One pluggy PluginManager per app: built-ins first, then the project's plugins."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import pluggy

from loomcrm.plugins import DEFAULT_PLUGINS

from . import hookspecs
from .errors import ConfigError, ConfigErrors, Location
from .fieldtypes import FieldType

__all__ = ["make_plugin_manager", "field_types", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "loomcrm.plugins"


def make_plugin_manager(
    plugins: Iterable[str | object] = (), *, entry_points: bool = True, where: Location | None = None
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-in plugins, installed entry points and ``plugins``.

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
