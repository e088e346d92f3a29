"""Overlays: a company config that ``extends:`` a base config adds, overrides and removes explicitly,
and every error still points at the file (and line) that said it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from loomcrm.engine.cli import main
from loomcrm.engine.compiler import compile_project
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.explain import explain_config, render_config
from loomcrm.engine.loader import load_config, load_config_text, parse_yaml
from loomcrm.engine.testing import compile_files, config_errors

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "examples" / "acme"

BASE = {
    "../base/loom.yaml": """\
        app: {name: Base CRM, locales: [en, zh], timezone: Europe/Berlin}
        include: [entities.yaml, roles.yaml]
        plugins: [loomcrm.plugins.audit]
        auth: {session_hours: 8, max_failures: 3}
        database: {url: sqlite:///base.db}
        """,
    "../base/entities.yaml": """\
        entities:
          account:
            label: {en: Account, zh: 客户}
            plural: accounts
            fields:
              name: {type: string, required: true, max_length: 200}
              phone: {type: phone, label: Phone}
              fax: {type: phone}
              rating:
                type: enum
                help: How likely to buy
                options:
                  - {value: hot, label: Hot}
                  - {value: warm, label: Warm}
                  - {value: cold, label: Cold}
              stage: {type: enum, options: [new, won], default: new}
          contact:
            fields:
              last_name: {type: string, required: true}
              account: {type: ref, to: account}
          lead:
            fields:
              name: {type: string}
        """,
    "../base/roles.yaml": """\
        roles:
          sales_rep:
            label: Sales rep
            entities:
              account: {read: all, create: true, update: own}
              contact: {read: all, create: true, update: own}
            fields:
              account.phone: read
          marketing:
            entities:
              account: {read: all}
        """,
}


def overlay(loom: str = "extends: ../base\n", entities: str | None = None, **more: str) -> dict[str, str]:
    """The base above, and an overlay project: loom.yaml plus (when given) entities.yaml."""
    files = {name: textwrap.dedent(text) for name, text in BASE.items()}
    files["loom.yaml"] = textwrap.dedent(loom)
    if entities is not None:
        files["loom.yaml"] += "include: [entities.yaml]\n"
        files["entities.yaml"] = textwrap.dedent(entities)
    files.update({name: textwrap.dedent(text) for name, text in more.items()})
    return files


def golden(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def options(manifest, entity: str, field: str) -> list:
    """``(value, English label)`` of each option, in order."""
    return [(o["value"], o["label"]["en"]) for o in manifest.entities[entity].fields[field].params["options"]]


# --- adding --------------------------------------------------------------------------------------------


def test_overlay_adds_an_entity_that_refers_to_a_base_entity():
    manifest = compile_files(overlay(entities="""\
        entities:
          installation:
            fields:
              serial: {type: string, required: true}
              account: {type: ref, to: account}
        """))
    assert {"account", "contact", "lead", "installation"} <= set(manifest.entities)
    assert manifest.entities["account"].relations["installations"].entity == "installation"


def test_overlay_adds_a_field_to_a_base_entity_after_its_own():
    manifest = compile_files(overlay(entities="""\
        entities:
          account:
            fields:
              customer_number: {type: string, max_length: 20}
        """))
    account = manifest.entities["account"]
    assert [f.name for f in account.user_fields][-2:] == ["stage", "customer_number"]
    assert account.fields["customer_number"].params["max_length"] == 20
    assert account.fields["name"].required  # the base field is untouched


def test_new_enum_options_are_appended_after_the_base_options():
    manifest = compile_files(overlay(entities="""\
        entities:
          account:
            fields:
              rating:
                options: [frozen]
              stage:
                options: [lost, new]
        """))
    assert options(manifest, "account", "rating") == [("hot", "Hot"), ("warm", "Warm"), ("cold", "Cold"),
                                                      ("frozen", "frozen")]
    assert [value for value, _ in options(manifest, "account", "stage")] == ["new", "won", "lost"]


def test_option_with_a_base_value_is_relabelled_in_its_place():
    manifest = compile_files(overlay(entities="""\
        entities:
          account:
            fields:
              rating:
                options:
                  - {value: warm, label: {en: Lukewarm, zh: 温}}
        """))
    assert options(manifest, "account", "rating") == [("hot", "Hot"), ("warm", "Lukewarm"), ("cold", "Cold")]


def test_overlay_overrides_labels_help_defaults_and_field_options():
    manifest = compile_files(overlay(entities="""\
        entities:
          account:
            label: {en: Customer, zh: 客户}
            plural_label: Customers
            fields:
              name: {label: Customer name, max_length: 120, help: As registered}
              rating: {help: Hot or warm, default: warm, required: true}
        """))
    account = manifest.entities["account"]
    assert account.label == {"en": "Customer", "zh": "客户"}
    assert account.plural_label["en"] == "Customers" and account.plural == "accounts"
    name, rating = account.fields["name"], account.fields["rating"]
    assert (name.label["en"], name.params["max_length"], name.help["en"], name.required) == (
        "Customer name", 120, "As registered", True)
    assert (rating.help["en"], rating.default, rating.required, rating.type) == ("Hot or warm", "warm", True, "enum")


def test_a_role_grant_merges_key_by_key_with_the_base_grant():
    manifest = compile_files(overlay(**{"roles.yaml": """\
        roles:
          sales_rep:
            entities:
              contact: {update: none}
              lead: {read: own}
        """}, loom="extends: ../base\ninclude: [roles.yaml]\n"))
    rep = manifest.roles["sales_rep"]
    assert (rep.grant("contact").read, rep.grant("contact").create, rep.grant("contact").update) == ("all", True, "none")
    assert rep.grant("account").update == "own"  # untouched
    assert rep.grant("lead").read == "own"  # added
    assert rep.label == "Sales rep"


def test_field_levels_override_the_base_and_new_roles_are_added():
    manifest = compile_files(overlay(**{"roles.yaml": """\
        roles:
          sales_rep:
            label: Account manager
            fields:
              account.phone: hidden
              account.fax: read
          field_engineer:
            entities:
              account: {read: all}
        """}, loom="extends: ../base\ninclude: [roles.yaml]\n"))
    rep = manifest.roles["sales_rep"]
    assert (rep.level("account", "phone"), rep.level("account", "fax"), rep.label) == ("hidden", "read",
                                                                                      "Account manager")
    assert manifest.roles["field_engineer"].grant("account").read == "all"
    assert list(manifest.roles) == ["sales_rep", "marketing", "field_engineer"]


def test_app_keys_are_overridden_one_by_one():
    manifest = compile_files(overlay("extends: ../base\napp: {name: Acme CRM, locales: [en, zh, de]}\n"))
    assert (manifest.app_name, manifest.locales, manifest.timezone) == ("Acme CRM", ("en", "zh", "de"),
                                                                        "Europe/Berlin")


def test_database_is_replaced_and_auth_merges_key_by_key():
    loaded = load_config_text(overlay("extends: ../base\ndatabase: {url: sqlite:///acme.db}\n"
                                      "auth: {max_failures: 10}\naudit: {retain_days: 90}\n"))
    assert loaded.project.database.url == "sqlite:///acme.db"
    assert (loaded.project.auth.session_hours, loaded.project.auth.max_failures) == (8, 10)
    assert loaded.project.audit.retain_days == 90


def test_plugins_are_appended_to_the_base_plugins_once():
    loaded = load_config_text(overlay("extends: ../base\nplugins: [acme_scoring, loomcrm.plugins.audit]\n"))
    assert loaded.project.plugins == ["loomcrm.plugins.audit", "acme_scoring"]


def test_an_overlay_project_file_may_leave_out_app():
    assert compile_files(overlay()).app_name == "Base CRM"


def test_a_base_may_itself_extend_another_base():
    files = overlay("extends: ../middle\napp: {name: Top}\n", **{
        "../middle/loom.yaml": "extends: ../base\napp: {name: Middle}\ninclude: [more.yaml]\n",
        "../middle/more.yaml": "entities:\n  account:\n    label: Client\n    fields:\n      vat: {type: string}\n",
    })
    manifest = compile_files(files)
    assert (manifest.app_name, manifest.entities["account"].label["en"]) == ("Top", "Client")
    assert "vat" in manifest.entities["account"].fields
    assert manifest.entities["account"].fields["vat"].source == "../middle/more.yaml:5:7"


# --- removing --------------------------------------------------------------------------------------------


def test_remove_takes_out_a_whole_entity():
    manifest = compile_files(overlay("extends: ../base\nremove: [entities.lead]\n"))
    assert "lead" not in manifest.entities


def test_remove_takes_out_a_field():
    manifest = compile_files(overlay("extends: ../base\nremove: [entities.account.fields.fax]\n"))
    assert "fax" not in manifest.entities["account"].fields


def test_remove_takes_out_an_enum_option():
    manifest = compile_files(overlay("extends: ../base\nremove: [entities.account.fields.rating.options.warm]\n"))
    assert options(manifest, "account", "rating") == [("hot", "Hot"), ("cold", "Cold")]


def test_remove_takes_out_a_role():
    manifest = compile_files(overlay("extends: ../base\nremove: [roles.marketing]\n"))
    assert list(manifest.roles) == ["sales_rep"]


def test_remove_takes_out_a_grant_of_a_role():
    manifest = compile_files(overlay("extends: ../base\nremove: [roles.sales_rep.entities.contact]\n"))
    assert manifest.roles["sales_rep"].grant("contact").read == "none"


def test_remove_takes_out_a_field_level_of_a_role():
    manifest = compile_files(overlay("extends: ../base\nremove: [roles.sales_rep.fields.account.phone]\n"))
    assert manifest.roles["sales_rep"].level("account", "phone") == "write"  # the grant's default again


def test_remove_then_redefine_changes_a_field_type():
    manifest = compile_files(overlay("extends: ../base\nremove: [entities.account.fields.phone]\n", entities="""\
        entities:
          account:
            fields:
              phone: {type: string, max_length: 40}
        """))
    assert manifest.entities["account"].fields["phone"].type == "string"


def test_removed_entity_still_granted_by_a_base_role_is_reported_in_the_base():
    assert config_errors(overlay("extends: ../base\nremove: [entities.contact]\n")) == golden("""
        ../base/roles.yaml:6:7 E124 role 'sales_rep' grants access to 'contact', which is not an entity
        1 error in the config.
        """)


def test_remove_entries_that_name_nothing_in_the_base_suggest_what_exists():
    assert config_errors(overlay("""\
        extends: ../base
        remove:
          - entities.acount.fields.fax
          - entities.account.fields.rating.options.cool
          - roles.marketting
          - roles.sales_rep.entities.lead
          - roles.sales_rep.fields.account.phnoe
          - entities.account.label
          - entities.lead
          - entities.lead
          - entities.account.fields.name.options.x
        """)) == golden("""
        loom.yaml:3:5 E133 cannot remove 'entities.acount.fields.fax': the base has no entity 'acount'
            hint: did you mean 'entities.account.fields.fax'?
        loom.yaml:4:5 E133 cannot remove 'entities.account.fields.rating.options.cool': field 'account.rating' has no option 'cool'
            hint: did you mean 'entities.account.fields.rating.options.cold'?
        loom.yaml:5:5 E133 cannot remove 'roles.marketting': the base has no role 'marketting'
            hint: did you mean 'roles.marketing'?
        loom.yaml:6:5 E133 cannot remove 'roles.sales_rep.entities.lead': role 'sales_rep' has no grant for 'lead'
            hint: the base has: account, contact
        loom.yaml:7:5 E133 cannot remove 'roles.sales_rep.fields.account.phnoe': role 'sales_rep' sets no level for 'account.phnoe'
            hint: did you mean 'roles.sales_rep.fields.account.phone'?
        loom.yaml:8:5 E133 'remove' cannot take 'entities.account.label'
            hint: write one of: entities.<entity>, entities.<entity>.fields.<field>, entities.<entity>.rules.<rule>, entities.<entity>.fields.<field>.options.<value>, roles.<role>, roles.<role>.entities.<entity>, roles.<role>.fields.<entity>.<field>, workflows.<workflow>, workflows.<workflow>.transitions.<transition>, workflows.<workflow>.states.<state>, automations.<automation>, schedules.<schedule>, webhooks.<webhook>
        loom.yaml:10:5 E133 'entities.lead' is listed twice in 'remove' (first at item 7)
            hint: list each once
        loom.yaml:11:5 E133 cannot remove 'entities.account.fields.name.options.x': field 'account.name' has no options
            hint: only enum and multi_enum fields have options
        8 errors in the config.
        """)


def test_remove_without_extends_is_refused():
    assert config_errors({"loom.yaml": "app: {name: X}\nremove: [entities.lead]\n"}) == golden("""
        loom.yaml:2:1 E133 'remove' takes things out of the base config, and there is none
            hint: name the base with 'extends:', or delete what you do not want
        1 error in the config.
        """)


# --- conflicts -------------------------------------------------------------------------------------------


def test_changing_the_type_of_a_base_field_names_both_places():
    assert config_errors(overlay(entities="""\
        entities:
          account:
            fields:
              phone: {type: string}
        """)) == golden("""
        entities.yaml:4:21 E132 field 'account.phone' is a phone in ../base/entities.yaml:7:21 and cannot become a string here
            hint: add a new field instead, or remove the base field with remove: [entities.account.fields.phone] and define it again
        1 error in the config.
        """)


def test_changing_the_target_of_a_base_ref_names_both_places():
    assert config_errors(overlay(entities="""\
        entities:
          contact:
            fields:
              account: {type: ref, to: lead}
        """)) == golden("""
        entities.yaml:4:32 E132 field 'contact.account' refers to 'account' in ../base/entities.yaml:20:32 and cannot refer to 'lead' here
            hint: add a new field instead, or remove the base field with remove: [entities.contact.fields.account] and define it again
        1 error in the config.
        """)


def test_plural_of_a_base_entity_cannot_change_and_a_new_entity_cannot_take_it():
    assert config_errors(overlay(entities="""\
        entities:
          account:
            plural: clients
          prospect:
            plural: accounts
            fields: {name: {type: string}}
          contct:
            label: Person
        """)) == golden("""
        entities.yaml:3:13 E132 entity 'account' has the plural 'accounts' in ../base/entities.yaml:4:13 and cannot change it here
            hint: the plural is the entity's URL (/api/accounts); keep it, or remove the entity with remove: [entities.account] and define it again
        entities.yaml:5:13 E132 entity 'prospect' has the plural 'accounts', which entity 'account' uses in ../base/entities.yaml:4:13
            hint: set a different 'plural:' on 'prospect'
        entities.yaml:7:3 E124 entity 'contct' is not in the base config, and has no fields of its own
            hint: did you mean 'contact'? (a new entity needs 'fields:')
        3 errors in the config.
        """)


def test_extends_in_a_circle_names_the_files():
    files = overlay("extends: ../base\n")
    files["../base/loom.yaml"] = "extends: ../top\napp: {name: Base}\n"
    files["../top/loom.yaml"] = "extends: ../base\n"
    assert config_errors(files) == golden("""
        ../top/loom.yaml:1:10 E129 configs extend each other in a circle: loom.yaml -> ../base/loom.yaml -> ../top/loom.yaml -> ../base/loom.yaml
            hint: remove the 'extends:' of one of them
        1 error in the config.
        """)


def test_a_missing_base_is_reported_at_extends():
    assert config_errors({"loom.yaml": "extends: ../nowhere\nentities:\n  account:\n    label: Client\n"}) \
        == golden("""
        loom.yaml:1:10 E102 base config '../nowhere' not found
            hint: 'extends' takes a directory holding loom.yaml or a loom.yaml path, relative to this file, or the name of an installed Python package holding loom.yaml
        1 error in the config.
        """)


def test_extends_is_only_allowed_in_the_project_file():
    files = overlay(entities="extends: ../base\nentities: {}\n")
    assert "entities.yaml:1:1 E113 'extends' is only allowed in loom.yaml" in config_errors(files)


# --- errors point at the file that said it ---------------------------------------------------------------


def test_errors_in_overlay_values_point_at_the_overlay_and_in_base_values_at_the_base():
    files = overlay("extends: ../base\napp: {name: Acme, timezone: Mars/Base}\n", entities="""\
        entities:
          account:
            label: {en: Customer, zn: 客户}
            fields:
              phone: {label: Tel, default: 42x}
              rating: {max_length: 10}
              size: {type: integr}
          installation:
            fields:
              account: {type: ref, to: acount}
        """)
    files["../base/entities.yaml"] = files["../base/entities.yaml"].replace("fax: {type: phone}",
                                                                            "fax: {type: phone, max_length: 3}")
    assert config_errors(files) == golden("""
        ../base/entities.yaml:8:26 E126 option 'max_length' does not apply to phone field 'account.fax'
            hint: phone fields take: backfill, compute, default, default_expr, help, indexed, label, read_only, renamed_from, required, rollup, unique
        entities.yaml:3:27 E110 unknown locale 'zn' in 'label' of entity 'account'
            hint: remove it, or add it to app.locales (the app's locales: en, zh)
        entities.yaml:5:36 E127 default '42x' of field 'account.phone' is not a phone number (write it with its country code, e.g. +49 30 1234567)
        entities.yaml:6:16 E126 option 'max_length' does not apply to enum field 'account.rating'
            hint: enum fields take: backfill, compute, default, default_expr, help, indexed, label, map, options, read_only, renamed_from, required, rollup, unique
        entities.yaml:7:20 E120 unknown field type 'integr'
            hint: did you mean 'integer'?
        entities.yaml:10:32 E124 field 'installation.account' refers to entity 'acount', which does not exist
            hint: did you mean 'account'?
        loom.yaml:2:29 E112 'app.timezone' is not an IANA time zone (got 'Mars/Base')
            hint: e.g. Europe/Berlin, Asia/Shanghai or UTC
        7 errors in the config.
        """)


def test_shape_errors_in_the_base_are_reported_with_the_base_file():
    files = overlay()
    files["../base/entities.yaml"] = files["../base/entities.yaml"].replace("required: true, max_length",
                                                                            "requird: true, max_length")
    assert config_errors(files) == golden("""
        ../base/entities.yaml:6:28 E110 unknown key 'requird' in field 'account.name'
            hint: did you mean 'required'?
        1 error in the config.
        """)


def test_partial_override_of_a_field_the_base_lacks_asks_for_a_type():
    assert config_errors(overlay(entities="""\
        entities:
          account:
            fields:
              phnoe: {label: Tel}
        """)) == golden("""
        entities.yaml:4:7 E111 missing required key 'type' in field 'account.phnoe'
            hint: add 'type:', e.g. type: string
        1 error in the config.
        """)


def test_sources_of_base_and_overlay_fields_are_their_own_files():
    manifest = compile_files(overlay(entities="""\
        entities:
          account:
            fields:
              name: {label: Customer name}
              vat: {type: string}
        """))
    account = manifest.entities["account"]
    assert (account.source, account.fields["name"].source, account.fields["vat"].source) == (
        "../base/entities.yaml:2:3", "../base/entities.yaml:6:7", "entities.yaml:5:7")


def test_base_on_disk_is_shown_relative_to_the_overlay_directory(tmp_path):
    for name, text in BASE.items():
        path = tmp_path / "acme" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "acme" / "loom.yaml").write_text("extends: ../base/loom.yaml\n", encoding="utf-8")
    base_file = tmp_path / "base" / "entities.yaml"
    base_file.write_text(base_file.read_text().replace("type: phone}", "type: phon}"), encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        compile_project(tmp_path / "acme")
    assert info.value.render().splitlines()[0] == "../base/entities.yaml:8:19 E120 unknown field type 'phon'"


def test_base_may_be_an_installed_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "acme_base_config"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, text in BASE.items():
        (package / Path(name).name).write_text(textwrap.dedent(text), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "loom.yaml").write_text("extends: acme_base_config\napp: {name: Acme}\n")
    loaded = load_config(tmp_path / "acme")
    assert set(loaded.entities) == {"account", "contact", "lead"}
    assert loaded.where("lead").file == "../site/acme_base_config/entities.yaml"


# --- explain-config --------------------------------------------------------------------------------------


def test_explain_config_follows_every_value_with_its_file_and_line():
    loaded = load_config_text(overlay("extends: ../base\napp: {name: Acme CRM}\n", entities="""\
        entities:
          account:
            label: Customer
            fields:
              rating:
                options: [{value: warm, label: Lukewarm}, frozen]
        """))
    lines = [" ".join(line.split()) for line in render_config(loaded).splitlines()]
    for expected in [
        "name: Acme CRM # loom.yaml:2:13",
        "locales: [en, zh] # ../base/loom.yaml:1:32",
        "label: Customer # entities.yaml:3:12",
        "plural: accounts # ../base/entities.yaml:4:13",
        "- {value: hot, label: Hot} # ../base/entities.yaml:13:13",
        "- {value: warm, label: Lukewarm} # entities.yaml:6:19",
        "- {value: cold, label: Cold} # ../base/entities.yaml:15:13",
        "- frozen # entities.yaml:6:51",
        "help: How likely to buy # ../base/entities.yaml:11:15",
        'database: {url: "sqlite:///base.db"} # ../base/loom.yaml:5:11',
        "account: {read: all, create: true, update: own} # ../base/roles.yaml:5:16",
    ]:
        assert expected in lines
    assert lines[:8] == ["# The merged config: every value is followed by the file:line:col it was written at.",
                         "# Files read, base configs first:", "# ../base/loom.yaml",
                         "# ../base/entities.yaml", "# ../base/roles.yaml", "# loom.yaml", "# entities.yaml",
                         "app: # ../base/loom.yaml:1:1"]
    assert "entities:" in lines  # gathered from several files: no one place to name


def test_explain_config_output_reads_back_as_the_merged_config():
    text = explain_config(ACME)
    assert parse_yaml("explained", text, []).data == load_config(ACME).tree
    assert "    label: {en: Customer, zh: 客户}                               # entities/account.yaml:7:12" in text


# --- the acme example ------------------------------------------------------------------------------------


def test_acme_example_relabels_adds_tightens_and_removes(monkeypatch):
    monkeypatch.delenv("LOOM_DATABASE_URL", raising=False)
    manifest, _ = compile_project(ACME)
    account = manifest.entities["account"]
    assert (manifest.app_name, account.label["zh"], account.label["en"]) == ("Acme CRM", "客户", "Customer")
    assert "customer_number" in account.fields and "installation" in manifest.entities
    assert "birthday" not in manifest.entities["contact"].fields
    assert manifest.roles["sales_rep"].grant("contact").update == "none"
    assert manifest.roles["marketing"].level("account", "phone") == "hidden"
    assert manifest.database_url.endswith("examples/acme/acme.db")


def test_acme_example_migrates(db_url, monkeypatch, capsys):
    monkeypatch.delenv("LOOM_DATABASE_URL", raising=False)
    assert main(["-p", str(ACME), "migrate", "--database", db_url]) == 0
    assert "create table installation" in capsys.readouterr().out
    assert main(["-p", str(ACME), "plan", "--database", db_url]) == 0


def test_rules_merge_by_name_and_can_be_removed():
    base_rules = """
entities:
  deal:
    fields:
      amount: {type: money}
    rules:
      positive: {check: "record.amount == null || record.amount > 0.0", message: Positive.}
      small: {check: "record.amount == null || record.amount < 1000.0", message: Small.}
"""
    manifest = compile_files({
        "../base/loom.yaml": "app: {name: Base}\ninclude: [entities.yaml]\n",
        "../base/entities.yaml": base_rules,
        "loom.yaml": "extends: ../base\napp: {name: Top}\ninclude: [entities.yaml]\nremove: [entities.deal.rules.small]\n",
        "entities.yaml": "entities:\n  deal:\n    rules:\n      positive: {message: Must be positive.}\n"
                         "      named: {check: \"record.amount != null\", message: Needs an amount.}\n",
    })
    rules = {r.name: r for r in manifest.entities["deal"].rules}
    assert set(rules) == {"positive", "named"}
    assert rules["positive"].message["en"] == "Must be positive." and "> 0.0" in rules["positive"].check.text
