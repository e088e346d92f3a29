"""Where plugins come from: the project's ``plugins/`` folder, ``plugins:`` in loom.yaml, entry points;
``loom plugins`` lists them with their origin and hooks; a plugin that cannot load stops startup."""

from __future__ import annotations

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main
from loomcrm.engine.runtime.context import Context

LOOM_YAML = "app: {name: Local}\ninclude: [entities.yaml]\ndatabase: {url: sqlite:///local.db}\n"
ENTITIES = "entities:\n  lead:\n    fields:\n      name: {type: string, required: true}\n      score: {type: integer}\n"
SCORING = '''
from loomcrm.engine.hookspecs import hookimpl


@hookimpl
def loom_before_create(entity, data):
    if entity.name == "lead":
        data["score"] = 10 * len(data["name"])
'''


def project(tmp_path, plugin_text: str = SCORING):
    (tmp_path / "loom.yaml").write_text(LOOM_YAML)
    (tmp_path / "entities.yaml").write_text(ENTITIES)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "scoring.py").write_text(plugin_text)
    return tmp_path


def test_modules_in_the_projects_plugins_folder_are_loaded(tmp_path):
    path = project(tmp_path)
    assert main(["-p", str(path), "migrate"]) == 0
    loom = Loom.from_project(path)
    try:
        assert loom.records.create(loom.entity("lead"), {"name": "Ada"}, Context())["score"] == 30
    finally:
        loom.close()


def test_loom_plugins_lists_origin_and_hooks(tmp_path, capsys):
    assert main(["-p", str(project(tmp_path)), "plugins"]) == 0
    out = capsys.readouterr().out
    assert "plugins/scoring.py  [plugins/ folder]" in out and "hooks: loom_before_create" in out
    assert "loomcrm.plugins.audit  [built-in]" in out


def test_a_local_plugin_that_fails_to_load_stops_startup_naming_it(tmp_path, capsys):
    path = project(tmp_path, "import not_a_module_anyone_has\n")
    assert main(["-p", str(path), "validate"]) == 1
    err = capsys.readouterr().err
    assert "plugins/scoring.py E130 plugin 'plugins/scoring.py' could not be loaded: ModuleNotFoundError" in err
