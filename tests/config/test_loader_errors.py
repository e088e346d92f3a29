"""Config errors as a person reads them: place, code, message and hint, checked as golden text."""

from __future__ import annotations

import textwrap

import pytest

from loomcrm.engine.compiler import compile_project
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.loader import load_config, load_config_text
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import compile_files, config_errors, project_files


def errors_in(entities_yaml: str, **kwargs) -> str:
    """The rendered errors of a project whose entities.yaml holds ``entities_yaml``."""
    return config_errors(project_files(entities_yaml, **kwargs))


def golden(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# --- YAML ---------------------------------------------------------------------------------------------


def test_yaml_syntax_error_points_at_the_unclosed_bracket():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: {type: string
        """) == golden("""
        entities.yaml:5:1 E100 invalid YAML: expected ',' or '}', but got '<stream end>'
            hint: close the '{' opened at line 4, column 13
        1 error in the config.
        """)


def test_tab_indentation_is_explained():
    assert errors_in("entities:\n\taccount: {}\n") == golden("""
        entities.yaml:2:1 E100 invalid YAML: found character '\\t' that cannot start any token
            hint: indent with spaces; YAML does not allow tabs
        1 error in the config.
        """)


def test_every_duplicate_key_is_reported_with_the_line_of_the_first():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: {type: string}
              name: {type: text}
          account:
            label: Account
        """) == golden("""
        entities.yaml:5:7 E101 duplicate key 'name' (first written at line 4)
            hint: a key may appear once per mapping; remove one of them or merge them
        entities.yaml:6:3 E101 duplicate key 'account' (first written at line 2)
            hint: a key may appear once per mapping; remove one of them or merge them
        2 errors in the config.
        """)


# --- includes and project keys -----------------------------------------------------------------------


def test_include_matching_nothing_suggests_an_existing_file():
    files = {
        "loom.yaml": "app: {name: Acme}\ninclude:\n  - entities/*.yaml\n  - entites/extra.yaml\n  - '*.yaml'\n",
        "entities/account.yaml": "entities:\n  account: {}\n",
        "entities/extra.yaml": "entities: {}\n",
    }
    with pytest.raises(ConfigErrors) as info:
        compile_files(files)
    assert info.value.render() == golden("""
        loom.yaml:4:5 E102 include pattern 'entites/extra.yaml' matched no file
            hint: did you mean 'entities/extra.yaml'?
        loom.yaml:5:5 E102 include pattern '*.yaml' matched no file
            hint: patterns are relative to loom.yaml, e.g. 'entities/*.yaml'
        2 errors in the config.
        """)


def test_include_patterns_match_the_same_files_on_disk_and_in_memory(tmp_path):
    files = {
        "loom.yaml": "app: {name: Acme}\ninclude: ['*.yaml', 'deep/**/*.yaml']\n",
        "top.yaml": "entities:\n  account: {}\n",
        "deep/a/b/contact.yaml": "entities:\n  contact: {}\n",
        "deep/lead.yaml": "entities:\n  lead: {}\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    on_disk = load_config(tmp_path)
    in_memory = load_config_text(files)
    assert list(on_disk.entities) == list(in_memory.entities) == ["account", "contact", "lead"]
    assert on_disk.where("contact") == in_memory.where("contact")


def test_project_without_app_is_told_what_to_add():
    assert errors_in("entities: {}\n", app="") == golden("""
        loom.yaml:1:1 E111 missing required key 'app'
            hint: add 'app: {name: My CRM}'
        1 error in the config.
        """)


def test_project_only_key_in_an_included_file_is_refused_once():
    assert errors_in("""\
        app: {name: 42}
        entities: {}
        """) == golden("""
        entities.yaml:1:1 E113 'app' is only allowed in loom.yaml
            hint: move 'app:' to loom.yaml; included files may hold 'entities:'
        1 error in the config.
        """)


# --- shape: unknown, missing and mistyped keys --------------------------------------------------------


def test_misspelt_key_suggests_the_closest():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: {type: string, requird: true}
        """) == golden("""
        entities.yaml:4:28 E110 unknown key 'requird' in field 'account.name'
            hint: did you mean 'required'?
        1 error in the config.
        """)


def test_unknown_key_in_app_names_its_section():
    assert errors_in("entities: {}\n", app="app: {name: Acme, timezon: UTC}") == golden("""
        loom.yaml:1:19 E110 unknown key 'timezon' in 'app'
            hint: did you mean 'timezone'?
        1 error in the config.
        """)


def test_field_without_type_says_what_to_add():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: {label: Name}
        """) == golden("""
        entities.yaml:4:7 E111 missing required key 'type' in field 'account.name'
            hint: add 'type:', e.g. type: string
        1 error in the config.
        """)


def test_non_boolean_names_the_key_and_the_value():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: {type: string, required: maybe}
        """) == golden("""
        entities.yaml:4:38 E112 'required' of field 'account.name' must be true or false (got 'maybe')
        1 error in the config.
        """)


def test_label_of_the_wrong_shape_gives_one_message_each():
    assert errors_in("""\
        entities:
          account:
            label: [Account, Accounts]
            fields:
              name: {type: string, label: 5}
        """) == golden("""
        entities.yaml:3:12 E112 'label' of entity 'account' must be text or one text per locale (got a list)
            hint: e.g. 'label: Account' or 'label: {en: Account, zh: 客户}'
        entities.yaml:5:35 E112 'label' of field 'account.name' must be text or one text per locale (got 5)
            hint: put it in quotes to use it as text: '5'
        2 errors in the config.
        """)


def test_wrong_enum_option_items_give_one_message_each():
    assert errors_in("""\
        entities:
          deal:
            fields:
              stage:
                type: enum
                options:
                  - [won]
                  - {value: lost, lable: Lost}
                  - 3
        """) == golden("""
        entities.yaml:7:13 E112 'options[0]' of field 'deal.stage' must be an option value (text) or a mapping with 'value' and 'label' (got a list)
            hint: e.g. '- won' or '- {value: won, label: {en: Won, zh: 赢单}}'
        entities.yaml:8:27 E110 unknown key 'lable' in 'options[1]' of field 'deal.stage'
            hint: did you mean 'label'?
        entities.yaml:9:13 E112 'options[2]' of field 'deal.stage' must be an option value (text) or a mapping with 'value' and 'label' (got 3)
            hint: put it in quotes to use it as text: '3'
        3 errors in the config.
        """)


def test_choice_outside_the_allowed_ones_suggests_the_closest():
    assert errors_in("""\
        entities:
          contact:
            fields:
              account: {type: ref, to: contact, on_delete: set null}
        """) == golden("""
        entities.yaml:4:52 E112 'on_delete' of field 'contact.account' must be one of restrict, cascade, set_null (got 'set null')
            hint: did you mean 'set_null'?
        1 error in the config.
        """)


def test_field_written_as_a_bare_type_shows_the_mapping_form():
    assert errors_in("""\
        entities:
          account:
            fields:
              name: string
              notes:
        """) == golden("""
        entities.yaml:4:13 E112 field 'account.name' must be a mapping of keys (got 'string')
            hint: write it as 'name: {type: string}'
        entities.yaml:5:7 E112 field 'account.notes' must be a mapping of keys (got null)
            hint: write it as 'notes: {type: string}'
        2 errors in the config.
        """)


def test_out_of_range_and_misshapen_values_say_what_to_write():
    assert errors_in("""\
        entities:
          account:
            fields:
              code: {type: string, max_length: 0}
            indexes:
              - [code, name]
            unique_together: [[]]
        """) == golden("""
        entities.yaml:4:40 E112 'max_length' of field 'account.code' must be at least 1 (got 0)
        entities.yaml:6:9 E112 'indexes[0]' of entity 'account' must be a mapping of keys (got a list)
            hint: write it as '- {fields: [code, name]}'
        entities.yaml:7:23 E112 'unique_together[0]' of entity 'account' must not be empty (got an empty list)
        3 errors in the config.
        """)


def test_shape_errors_in_every_file_are_reported_together_in_file_order():
    files = {
        "loom.yaml": "app: {name: Acme, locale: [en]}\ninclude: [entities/*.yaml]\n",
        "entities/b.yaml": "entities:\n  contact:\n    fields:\n      name: {type: string, uniqe: true}\n",
        "entities/a.yaml": "entities:\n  account:\n    titel: name\n    fields: {name: {}}\n",
    }
    with pytest.raises(ConfigErrors) as info:
        compile_files(files)
    assert info.value.render() == golden("""
        entities/a.yaml:3:5 E110 unknown key 'titel' in entity 'account'
            hint: did you mean 'title'?
        entities/a.yaml:4:14 E111 missing required key 'type' in field 'account.name'
            hint: add 'type:', e.g. type: string
        entities/b.yaml:4:28 E110 unknown key 'uniqe' in field 'contact.name'
            hint: did you mean 'unique'?
        loom.yaml:1:19 E110 unknown key 'locale' in 'app'
            hint: did you mean 'locales'?
        4 errors in the config.
        """)


# --- plugins -----------------------------------------------------------------------------------------


def test_plugin_that_fails_to_import_is_named_at_its_place(tmp_path):
    (tmp_path / "loom.yaml").write_text("app: {name: Acme}\nplugins:\n  - acme_missing_scoring\n")
    with pytest.raises(ConfigErrors) as info:
        compile_project(tmp_path)
    assert info.value.render() == golden("""
        loom.yaml:2:1 E130 plugin 'acme_missing_scoring' could not be imported: ModuleNotFoundError: No module named 'acme_missing_scoring'
            hint: check the module path under 'plugins:': it names an installed package, or a module in the project directory (acme_missing_scoring.py beside loom.yaml)
        1 error in the config.
        """)


def test_plugin_missing_a_dependency_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "acme_needy_plugin.py").write_text("import acme_not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigErrors) as info:
        make_plugin_manager(["acme_needy_plugin"], entry_points=False)
    [error] = info.value.errors
    assert (error.code, error.hint) == (
        "E130",
        "the plugin imports 'acme_not_installed_dependency', which is not installed: "
        "install it, e.g. pip install acme_not_installed_dependency",
    )


def test_yaml_1_2_plain_scalars_with_colons_load_in_flow_mappings():
    from loomcrm.engine.loader import load_config_text

    loaded = load_config_text({"loom.yaml": "app: {name: X}\ndatabase: {url: sqlite:///x.db}\n"})
    assert loaded.project.database.url == "sqlite:///x.db"
