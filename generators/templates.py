"""The jinja2 environment of an app: templates are looked up in the project's ``templates/`` folder
(an overlay's before its base's), then in the folders plugins name (``loom_template_dirs``), then in
Loom's own ``generators/templates/``; so a project or plugin overrides any template by its name, and
its override can extend the built-in one as ``loom/<name>`` (``{% extends "loom/admin/list.html" %}``).
Plugins add filters, globals and tests through ``loom_jinja_environment``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jinja2
import pluggy

from loomcrm.engine.manifest import Manifest
from loomcrm.engine.plugins import call_hook

__all__ = ["template_environment", "BUILT_IN"]

BUILT_IN = Path(__file__).resolve().parent / "templates"
PROJECT_TEMPLATES = "templates"


def template_environment(manifest: Manifest, pm: pluggy.PluginManager,
                         project_dirs: Iterable[str | Path] = ()) -> jinja2.Environment:
    """The environment, with the loader chain project > plugins > built-in and HTML autoescaping."""
    dirs = [Path(d) / PROJECT_TEMPLATES for d in project_dirs]
    dirs += [Path(d) for result in call_hook(pm, "loom_template_dirs") for d in result or ()]
    loaders = [jinja2.FileSystemLoader(str(d)) for d in dirs if d.is_dir()]
    built_in = jinja2.FileSystemLoader(str(BUILT_IN))
    # "loom/<name>" always reaches Loom's own template, so an override can extend the one it replaces
    env = jinja2.Environment(loader=jinja2.ChoiceLoader([*loaders, built_in, jinja2.PrefixLoader({"loom": built_in})]),
                             autoescape=jinja2.select_autoescape(("html", "xml")), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.globals["app_name"] = manifest.app_name
    call_hook(pm, "loom_jinja_environment", env=env, manifest=manifest)
    return env
