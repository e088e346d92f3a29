"""Config errors the compiler finds (types, names, references, options), checked as golden text."""

from __future__ import annotations

import textwrap

import pytest

from loomcrm.engine.compiler import compile_manifest
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.loader import load_config_text
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import compile_entities, compile_files, config_errors, project_files


def errors_in(entities_yaml: str, **kwargs) -> str:
    """The rendered errors of a project whose entities.yaml holds ``entities_yaml``."""
    return config_errors(project_files(entities_yaml, **kwargs))


def golden(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# --- meaning: types, names, references ---------------------------------------------------------------


def test_misspelt_field_type_suggests_the_closest():
    assert errors_in("""\
        entities:
          contact:
            fields:
              email: {type: emial}
        """) == golden("""
        entities.yaml:4:21 E120 unknown field type 'emial'
            hint: did you mean 'email'?
        1 error in the config.
        """)


def test_names_that_are_not_snake_case_ascii_get_a_suggestion():
    assert errors_in("""\
        entities:
          客户:
            fields:
              Annual Revenue: {type: money}
        """) == golden("""
        entities.yaml:2:3 E121 entity name '客户' must be snake_case ASCII: lower-case letters, digits and '_', starting with a letter
            hint: choose an ASCII name, e.g. 'my_entity', and keep '客户' in 'label:'
        entities.yaml:4:7 E121 field name 'Annual Revenue' must be snake_case ASCII: lower-case letters, digits and '_', starting with a letter
            hint: try 'annual_revenue'; put the text people read in 'label:'
        2 errors in the config.
        """)


def test_reserved_names_are_refused_with_the_reason():
    assert errors_in("""\
        entities:
          session:
            fields:
              owner: {type: string}
          select:
            fields:
              version: {type: integer}
        """) == golden("""
        entities.yaml:2:3 E122 entity name 'session' is reserved: Loom keeps it for its own records
            hint: choose another name, e.g. 'crm_session'; 'label:' can still say 'Session'
        entities.yaml:4:7 E122 field name 'owner' is reserved: every entity has a system field of that name
            hint: choose another name, e.g. 'session_owner'; 'label:' can still say 'Owner'
        entities.yaml:5:3 E122 entity name 'select' is reserved: it is an SQL keyword
            hint: choose another name, e.g. 'crm_select'; 'label:' can still say 'Select'
        entities.yaml:7:7 E122 field name 'version' is reserved: every entity has a system field of that name
            hint: choose another name, e.g. 'select_version'; 'label:' can still say 'Version'
        4 errors in the config.
        """)


def test_entity_defined_in_two_files_names_both_places():
    files = {
        "loom.yaml": "app: {name: Acme}\ninclude: [entities/*.yaml]\n",
        "entities/a.yaml": "entities:\n  account: {}\n",
        "entities/b.yaml": "entities:\n  contact: {}\n  account:\n    label: Client\n",
    }
    with pytest.raises(ConfigErrors) as info:
        compile_files(files)
    assert info.value.render() == golden("""
        entities/b.yaml:3:3 E123 entity 'account' is defined twice (first at entities/a.yaml:2:3)
            hint: rename one of them, or merge them into one definition
        1 error in the config.
        """)


def test_ref_to_a_missing_entity_suggests_the_closest():
    assert errors_in("""\
        entities:
          account: {}
          contact:
            fields:
              account: {type: ref, to: acount}
        """) == golden("""
        entities.yaml:5:32 E124 field 'contact.account' refers to entity 'acount', which does not exist
            hint: did you mean 'account'?
        1 error in the config.
        """)


def test_title_index_and_unique_together_must_name_existing_fields():
    assert errors_in("""\
        entities:
          account:
            title: nmae
            fields:
              name: {type: string}
              city: {type: string}
            indexes:
              - fields: [cty]
            unique_together:
              - [name, citi]
        """) == golden("""
        entities.yaml:3:12 E125 title field 'nmae' does not exist in entity 'account'
            hint: did you mean 'name'?
        entities.yaml:8:18 E125 field 'cty' does not exist in entity 'account'
            hint: did you mean 'city'?
        entities.yaml:10:16 E125 field 'citi' does not exist in entity 'account'
            hint: did you mean 'city'?
        3 errors in the config.
        """)


def test_option_of_another_type_lists_the_options_that_apply():
    assert errors_in("""\
        entities:
          account:
            fields:
              employees: {type: integer, max_length: 10}
        """) == golden("""
        entities.yaml:4:34 E126 option 'max_length' does not apply to integer field 'account.employees'
            hint: integer fields take: backfill, compute, default, default_expr, help, indexed, label, max, min, read_only, renamed_from, required, rollup, unique
        1 error in the config.
        """)


def test_invalid_defaults_say_what_would_fit():
    assert errors_in("""\
        entities:
          account:
            fields:
              employees: {type: integer, default: abc}
              founded: {type: date, default: now}
              rating: {type: enum, options: [hot, cold], default: warm}
        """) == golden("""
        entities.yaml:4:43 E127 default 'abc' of field 'account.employees' must be a whole number
        entities.yaml:5:38 E127 default 'now' of field 'account.founded' must be a date in ISO form, e.g. 2024-01-05
            hint: 'now' works on datetime fields; on a date field use 'today'
        entities.yaml:6:59 E127 default 'warm' of field 'account.rating' 'warm' is not one of the options: hot, cold
        3 errors in the config.
        """)


def test_enum_options_must_be_given_and_distinct():
    assert errors_in("""\
        entities:
          deal:
            fields:
              stage: {type: enum}
              source: {type: multi_enum, options: [web, fair, web]}
        """) == golden("""
        entities.yaml:4:7 E128 enum needs at least one option (field 'deal.stage')
            hint: e.g. options: [new, won, lost]
        entities.yaml:5:43 E128 duplicate options: web (field 'deal.source')
            hint: list each option once
        2 errors in the config.
        """)


def test_contradictory_options_are_reported_with_their_values():
    assert errors_in("""\
        entities:
          deal:
            fields:
              probability: {type: integer, min: 100, max: 0}
              amount: {type: decimal, precision: 4, scale: 6}
        """) == golden("""
        entities.yaml:4:41 E129 min 100 is greater than max 0 (field 'deal.probability')
            hint: swap them
        entities.yaml:5:52 E129 scale 6 cannot exceed precision 4 (field 'deal.amount')
            hint: lower 'scale' or raise 'precision' (the total number of digits)
        2 errors in the config.
        """)


def test_unknown_locale_in_a_label_is_reported():
    assert errors_in("""\
        entities:
          account:
            label: {en: Account, zn: 客户}
        """) == golden("""
        entities.yaml:3:26 E110 unknown locale 'zn' in 'label' of entity 'account'
            hint: remove it, or add it to app.locales (the app's locales: en, zh)
        1 error in the config.
        """)


def test_app_settings_the_runtime_relies_on_are_checked():
    app = "app: {name: Acme, timezone: Europe/Berln, phone_region: cn, locales: [en, EN, en]}"
    assert errors_in("entities: {}\n", app=app) == golden("""
        loom.yaml:1:29 E112 'app.timezone' is not an IANA time zone (got 'Europe/Berln')
            hint: did you mean 'Europe/Berlin'?
        loom.yaml:1:57 E112 'app.phone_region' is not a phone number region (got 'cn')
            hint: write it in capitals: CN
        loom.yaml:1:75 E112 'app.locales[1]' is not a language tag (got 'EN')
            hint: e.g. en, zh, de or pt-BR
        loom.yaml:1:79 E123 locale 'en' is listed twice in 'app.locales'
            hint: list each once
        4 errors in the config.
        """)



def test_names_that_would_break_tables_or_urls_are_refused():
    assert errors_in("""\
        entities:
          account:
            title: tags
            fields:
              tags: {type: refs, to: account, related_name: Tagged By}
            indexes:
              - {fields: [tags], name: by_name}
          contact:
            fields:
              name: {type: string}
            indexes:
              - {fields: [name], name: by_name}
          regional_distribution_partner:
            fields:
              preferred_manufacturers_and_suppliers: {type: refs, to: account}
        """) == golden("""
        entities.yaml:3:12 E126 title field 'tags' is a refs field, which cannot name a record
            hint: choose a field with one value per record, e.g. a string field
        entities.yaml:5:39 E121 reverse list name 'Tagged By' must be snake_case ASCII: lower-case letters, digits and '_', starting with a letter
            hint: try 'tagged_by'
        entities.yaml:7:19 E126 field 'tags' (refs) cannot be indexed
            hint: its links live in a join table, which is indexed already
        entities.yaml:12:32 E123 index name 'by_name' is already used (at entities.yaml:7:32)
            hint: index names must be unique across all entities; rename one
        entities.yaml:15:7 E121 field 'regional_distribution_partner.preferred_manufacturers_and_suppliers' needs the join table 'regional_distribution_partner__preferred_manufacturers_and_suppliers', which is longer than the 63 characters a table name may have
            hint: shorten the field name or the entity name
        5 errors in the config.
        """)


def test_unreadable_database_url_is_reported_at_its_place(monkeypatch):
    monkeypatch.delenv("LOOM_DATABASE_URL", raising=False)
    app = "app: {name: Acme}\ndatabase: {url: 'not a url'}"
    assert errors_in("entities: {}\n", app=app) == golden("""
        loom.yaml:2:17 E112 'database.url' is not a database URL SQLAlchemy can read (got 'not a url')
            hint: e.g. sqlite:///crm.db or postgresql+psycopg://user:password@host/crm
        1 error in the config.
        """)


def test_all_errors_are_reported_together_sorted_by_place():
    files = {
        "loom.yaml": "app: {name: Acme}\ninclude: [entities/*.yaml]\n",
        "entities/b.yaml": "entities:\n  contact:\n    fields:\n      account: {type: ref, to: acount}\n",
        "entities/a.yaml": "entities:\n  account:\n    fields:\n      email: {type: emial}\n      Name: {type: string}\n",
    }
    with pytest.raises(ConfigErrors) as info:
        compile_files(files)
    assert [str(e.location) + " " + e.code for e in info.value.errors] == [
        "entities/a.yaml:4:21 E120",
        "entities/a.yaml:5:7 E121",
        "entities/b.yaml:4:32 E124",
    ]
    assert info.value.render().endswith("\n3 errors in the config.")


def test_invalid_json_schema_on_a_json_field_is_a_config_error():
    from loomcrm.engine.errors import ConfigErrors
    from loomcrm.engine.testing import project_files

    files = project_files("entities:\n  a:\n    fields:\n      x: {type: json, json_schema: {type: 5}}\n")
    loaded = load_config_text(files)
    with pytest.raises(ConfigErrors) as info:
        compile_manifest(loaded, make_plugin_manager())
    [error] = info.value.errors
    assert error.code == "E129" and "json_schema is not a valid JSON Schema" in error.message
    assert str(error.location) == "entities.yaml:4:36"  # the value's opening brace


def test_history_cannot_name_a_related_list():
    errors = errors_in("""\
        entities:
          account: {}
          note:
            fields:
              account: {type: ref, to: account, related_name: history}
        """)
    assert "E122 'history' cannot name a related list: /api/<plural>/{id}/history is Loom's own" in errors


SCREENS = """
entities:
  account:
    list: [name, region]
    layout:
      - {label: {en: Main, zh: 主要}, fields: [name]}
      - {label: Where, fields: [region]}
    search: [name]
    fields:
      name: {type: string}
      region: {type: enum, options: [east, west]}
"""


def test_list_layout_and_search_compile_into_the_entity():
    account = compile_entities(SCREENS).entities["account"]
    assert account.list_fields == ("name", "region") and account.search_fields == ("name",)
    assert [(s.label["zh"], s.fields) for s in account.layout] == [("主要", ("name",)), ("Where", ("region",))]


def test_list_layout_and_search_naming_no_field_a_field_twice_or_a_non_text_search_are_e148():
    bad = (SCREENS.replace("list: [name, region]", "list: [nme, region]")
           .replace("fields: [region]}", "fields: [region, name]}").replace("search: [name]", "search: [region]"))
    text = config_errors(project_files(bad))
    assert "E148 'nme' is not a field of entity 'account'" in text and "did you mean 'name'?" in text
    assert "E148 field 'name' is in two sections of the layout of 'account'" in text
    assert "E148 search looks in text, and 'account.region' has type enum" in text
    assert text.count("E148") == 3 and "entities.yaml:4:12" in text
