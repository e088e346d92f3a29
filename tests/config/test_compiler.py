"""What the compiler puts in the Manifest: fields in order, defaults, labels, relations, params."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import textwrap

import pytest

from loomcrm.engine.compiler import compile_manifest
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.loader import load_config_text
from loomcrm.engine.manifest import SYSTEM_FIELDS, Manifest, Relation
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import project_files

APP = "app: {name: Acme, locales: [en, zh], phone_region: CN}"


def compile_entities(entities_yaml: str, *, app: str = APP) -> Manifest:
    loaded = load_config_text(project_files(entities_yaml, app=app))
    return compile_manifest(loaded, make_plugin_manager(loaded.project.plugins))


# --- fields and titles --------------------------------------------------------------------------------


def test_system_fields_surround_the_user_fields_in_order():
    entity = compile_entities("""\
        entities:
          account:
            fields:
              name: {type: string}
              city: {type: string}
        """).entities["account"]
    assert list(entity.fields) == ["id", "name", "city", "created_at", "updated_at", "created_by",
                                   "updated_by", "owner", "version"]
    assert [f.name for f in entity.fields.values() if f.system] == list(SYSTEM_FIELDS)
    assert all(not f.writable for f in entity.fields.values() if f.system)
    assert [f.name for f in entity.user_fields] == ["name", "city"]
    assert {f.name for f in entity.fields.values() if f.system and f.required} == {
        "id", "created_at", "updated_at", "version"}


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ("{city: {type: string}, name: {type: string}}", "name"),
        ("{subject: {type: string}, title: {type: string}}", "title"),
        ("{code: {type: integer}, city: {type: string}}", "city"),
        ("{amount: {type: integer}}", "id"),
    ],
)
def test_title_defaults_to_name_title_subject_then_the_first_string(fields, title):
    manifest = compile_entities(f"entities:\n  account:\n    fields: {fields}\n")
    assert manifest.entities["account"].title == title


def test_explicit_title_wins_over_the_default():
    manifest = compile_entities("entities:\n  account:\n    title: code\n"
                                "    fields: {name: {type: string}, code: {type: string}}\n")
    assert manifest.entities["account"].title == "code"


def test_plural_defaults_follow_english_spelling():
    names = ["activity", "address", "company", "day", "box", "match", "wish", "contact"]
    manifest = compile_entities("entities:\n" + "".join(f"  {n}: {{}}\n" for n in names)
                                + "  person: {plural: people}\n")
    assert {n: e.plural for n, e in manifest.entities.items() if n not in ("user", "team")} == {
        "activity": "activities", "address": "addresses", "company": "companies", "day": "days",
        "box": "boxes", "match": "matches", "wish": "wishes", "contact": "contacts", "person": "people",
    }


# --- labels and Unicode ---------------------------------------------------------------------------------


def test_labels_are_given_in_every_app_locale_in_the_apps_order():
    manifest = compile_entities("""\
        entities:
          account: {label: Account}
          contact: {label: {zh: 联系人}}
          lead: {label: {zh: 线索, en: Lead}}
          annual_report:
            fields:
              page_count: {type: integer}
        """)
    entities = manifest.entities
    assert entities["account"].label == {"en": "Account", "zh": "Account"}
    assert entities["contact"].label == {"en": "联系人", "zh": "联系人"}
    assert list(entities["lead"].label.items()) == [("en", "Lead"), ("zh", "线索")]
    assert entities["annual_report"].label == {"en": "Annual report", "zh": "Annual report"}
    assert entities["annual_report"].plural_label == {"en": "Annual reports", "zh": "Annual reports"}
    assert entities["annual_report"].fields["page_count"].label == {"en": "Page count", "zh": "Page count"}


def test_chinese_labels_help_and_option_values_survive_into_the_manifest():
    manifest = compile_entities("""\
        entities:
          property:
            label: {en: Property, zh: 楼盘}
            fields:
              name: {type: string, label: {en: Name, zh: 名称}, help: 项目全称，例如“滨江花园”}
              status:
                type: enum
                label: {en: Status, zh: 状态}
                default: 在售
                options: [在售, 已认购, {value: 已售, label: {en: Sold, zh: 已售出}}]
        """)
    entity = manifest.entities["property"]
    status = entity.fields["status"]
    assert entity.label == {"en": "Property", "zh": "楼盘"}
    assert entity.fields["name"].help == {"en": "项目全称，例如“滨江花园”", "zh": "项目全称，例如“滨江花园”"}
    assert status.default == "在售"
    assert status.params["options"] == [
        {"value": "在售", "label": {"en": "在售", "zh": "在售"}},
        {"value": "已认购", "label": {"en": "已认购", "zh": "已认购"}},
        {"value": "已售", "label": {"en": "Sold", "zh": "已售出"}},
    ]
    assert "已认购" in json.dumps(manifest.to_json(), ensure_ascii=False)


def test_unquoted_yaml_dates_are_read_as_dates():
    field = compile_entities("""\
        entities:
          contact:
            fields:
              birthday: {type: date, min: 1900-01-01, default: 2000-01-01}
        """).entities["contact"].fields["birthday"]
    assert (field.min, field.default) == (dt.date(1900, 1, 1), dt.date(2000, 1, 1))


# --- relations --------------------------------------------------------------------------------------------


def test_ref_gives_its_target_a_reverse_list_named_after_the_referring_entity():
    manifest = compile_entities("""\
        entities:
          account: {}
          contact:
            fields:
              account: {type: ref, to: account}
        """)
    assert manifest.entities["account"].relations == {
        "contacts": Relation("contacts", "contact", "account", "one_to_many")}
    assert manifest.entities["contact"].fields["account"].column == "account_id"


def test_second_ref_to_the_same_entity_needs_a_related_name():
    with pytest.raises(ConfigErrors) as info:
        compile_entities("""\
            entities:
              account: {}
              contact:
                fields:
                  account: {type: ref, to: account}
                  billing_account: {type: ref, to: account}
            """)
    assert info.value.render() == textwrap.dedent("""\
        entities.yaml:6:7 E123 field 'contact.billing_account' gives entity 'account' the reverse list 'contacts', which clashes with the reverse list of field 'contact.account'
            hint: set a different 'related_name:' on field 'contact.billing_account', e.g. related_name: contacts_as_billing_account
        1 error in the config.""")


def test_related_name_names_the_reverse_list():
    manifest = compile_entities("""\
        entities:
          account: {}
          contact:
            fields:
              account: {type: ref, to: account}
              billing_account: {type: ref, to: account, related_name: billed_contacts}
        """)
    assert manifest.entities["account"].relations == {
        "contacts": Relation("contacts", "contact", "account", "one_to_many"),
        "billed_contacts": Relation("billed_contacts", "contact", "billing_account", "one_to_many"),
    }


def test_many_to_many_relation_appears_on_both_sides():
    manifest = compile_entities("""\
        entities:
          tag: {}
          contact:
            fields:
              tags: {type: refs, to: tag}
        """)
    assert manifest.entities["tag"].relations == {
        "contacts": Relation("contacts", "contact", "tags", "many_to_many")}
    assert manifest.entities["contact"].relations == {
        "tags": Relation("tags", "tag", "tags", "many_to_many", owner_side=True)}
    assert manifest.entities["contact"].fields["tags"].column is None
    assert manifest.entities["contact"].join_table("tags") == "contact__tags"


# --- the Manifest as data ---------------------------------------------------------------------------------

DEAL = """\
    entities:
      deal:
        label: {en: Deal, zh: 商机}
        fields:
          name: {type: string, required: true}
          amount: {type: money, currency: cny, default: 1250.5}
          close_date: {type: date, default: 2024-06-30}
          stage: {type: enum, options: [open, won], default: open}
          opened_at: {type: datetime, default: now}
    """


def test_manifest_json_is_plain_json_and_its_hash_is_stable():
    first, second = compile_entities(DEAL), compile_entities(DEAL)
    data = first.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["entities"]["deal"]["fields"]["amount"]["default"] == "1250.50"
    assert data["entities"]["deal"]["fields"]["close_date"]["default"] == "2024-06-30"
    assert first.hash() == second.hash()
    assert compile_entities(DEAL.replace("商机", "机会")).hash() != first.hash()


def test_dynamic_default_is_kept_apart_from_literal_defaults():
    field = compile_entities(DEAL).entities["deal"].fields["opened_at"]
    assert (field.dynamic_default, field.default) == ("now", None)


def test_field_params_resolve_their_defaults():
    fields = compile_entities("""\
        entities:
          account:
            fields:
              name: {type: string}
              code: {type: string, max_length: 12}
              ratio: {type: decimal}
              revenue: {type: money, currency: eur, precision: 12}
              phone: {type: phone}
              email: {type: email}
              parent: {type: ref, to: account}
        """).entities["account"].fields
    assert fields["name"].params == {"max_length": 255}
    assert fields["code"].params == {"max_length": 12}
    assert fields["ratio"].params == {"precision": 18, "scale": 2}
    assert fields["revenue"].params == {"precision": 12, "scale": 2, "currency": "EUR"}
    assert fields["phone"].params == {"max_length": 32, "region": "CN"}
    assert fields["email"].params == {"max_length": 254}
    assert fields["parent"].params == {"to": "account", "on_delete": "restrict", "related_name": None}


def test_phone_region_is_none_when_the_app_sets_none():
    manifest = compile_entities("entities:\n  account:\n    fields: {phone: {type: phone}}\n",
                                app="app: {name: Acme}")
    assert manifest.entities["account"].fields["phone"].params["region"] is None


def test_decimal_default_is_quantized_to_the_scale():
    field = compile_entities(DEAL).entities["deal"].fields["amount"]
    assert field.default == decimal.Decimal("1250.50")


def test_index_the_table_has_already_is_left_out():
    entity = compile_entities("""\
        entities:
          contact:
            fields:
              name: {type: string, indexed: true}
              email: {type: email, unique: true}
              city: {type: string}
            indexes:
              - fields: [name]
              - {fields: [email], unique: true}
              - fields: [city, name]
              - fields: [city, name]
            unique_together:
              - [email]
              - [name, city]
        """).entities["contact"]
    assert [(i.fields, i.unique) for i in entity.indexes] == [(("city", "name"), False), (("name", "city"), True)]
