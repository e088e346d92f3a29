"""Migrations: a ref field deleting differently (``on_delete``) or pointing at another entity (``to``), on
a populated table. The foreign key is replaced; a new ``on_delete`` keeps every value, a new target clears
them, which needs ``--allow-data-loss`` (and is refused for a required ref)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import migrated, replaced, sql_execute
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

ACCOUNT = "account: {type: ref, to: account, on_delete: set_null}"
OWNER = "owner_contact: {type: ref, to: contact, on_delete: restrict, required: true}"
BASE = f"""
entities:
  account:
    fields:
      name: {{type: string, required: true}}
  company:
    fields:
      name: {{type: string, required: true}}
  contact:
    fields:
      name: {{type: string, required: true}}
      {ACCOUNT}
  deal:
    fields:
      title: {{type: string, required: true}}
      {OWNER}
"""
CONTACTS = "SELECT id, name, account_id, version, created_at, updated_at FROM contact ORDER BY id"
DEALS = "SELECT id, title, owner_contact_id, version FROM deal ORDER BY id"
ACCOUNT_OF = {i: None if i % 4 == 0 else i % 3 + 1 for i in range(1, 13)}  # contacts 4, 8, 12 have none


def changed(yaml: str = BASE, **replacements: tuple[str, str]) -> str:
    return replaced(yaml, **replacements)


@pytest.fixture
def populated(db_url):
    """3 accounts, 2 companies, 12 contacts (9 with an account), 3 deals owned by contacts 10, 11, 12."""
    with migrated(manifest_of(BASE), db_url) as loom:
        for i in range(1, 4):
            loom.records.create(loom.entity("account"), {"name": f"A{i}"}, Context())
        for i in range(1, 3):
            loom.records.create(loom.entity("company"), {"name": f"Co{i}"}, Context())
        for i in range(1, 13):
            loom.records.create(loom.entity("contact"), {"name": f"P{i}", "account": ACCOUNT_OF[i]}, Context())
        for i in range(1, 4):
            loom.records.create(loom.entity("deal"), {"title": f"D{i}", "owner_contact": 9 + i}, Context())
    return db_url


def foreign_keys(url: str, table: str) -> list[tuple]:
    """(name, column, referred table, ON DELETE) of each foreign key of ``table``."""
    engine = create_db_engine(url)
    try:
        return sorted((f["name"], *f["constrained_columns"], f["referred_table"], f["options"].get("ondelete"))
                      for f in sa.inspect(engine).get_foreign_keys(table))
    finally:
        engine.dispose()


def schema(url: str) -> dict:
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {t: (sorted(c["name"] for c in inspector.get_columns(t)),
                    sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(t)))
                for t in inspector.get_table_names()}
    finally:
        engine.dispose()


def snapshot(url: str) -> tuple:
    return (schema(url), foreign_keys(url, "contact"), foreign_keys(url, "deal"), rows(url, CONTACTS),
            rows(url, DEALS), rows(url, "SELECT count(*) FROM loom_migrations"))


@pytest.mark.parametrize(("on_delete", "ondelete", "left_of_account_1"), [
    ("cascade", "CASCADE", []),
    ("restrict", "RESTRICT", None),  # None: the delete is refused
])
def test_on_delete_change_keeps_every_value_and_deleting_a_parent_has_the_new_effect(
        populated, on_delete, ondelete, left_of_account_1):
    before = rows(populated, CONTACTS)
    yaml = changed(account=(ACCOUNT, f"account: {{type: ref, to: account, on_delete: {on_delete}}}"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert [s.description for s in the_plan.steps] == [
        "replace foreign key fk_contact_account_id_account with fk_contact_account_id_account on contact "
        f"(contact.account: ON DELETE SET NULL -> {ondelete})"]
    assert rows(populated, CONTACTS) == before
    assert foreign_keys(populated, "contact") == [("fk_contact_account_id_account", "account_id", "account", ondelete)]
    assert ("ix_contact_account_id", ("account_id",)) in schema(populated)["contact"][1]  # the index stays
    assert plan_manifest(manifest_of(yaml), database_url=populated).plan.empty

    holding = [r for r in before if r[2] == 1]
    assert holding
    if left_of_account_1 is None:
        with pytest.raises(sa.exc.IntegrityError):
            sql_execute(populated, "DELETE FROM account WHERE id = 1")
        assert rows(populated, CONTACTS) == before
    else:
        sql_execute(populated, "DELETE FROM account WHERE id = 1")
        assert rows(populated, CONTACTS) == [r for r in before if r[2] != 1]


def test_on_delete_restrict_to_set_null_lets_a_parent_go_and_empties_the_refs(populated):
    sql_execute(populated, "DELETE FROM deal WHERE id = 3")
    before = rows(populated, DEALS)
    with pytest.raises(sa.exc.IntegrityError):  # restrict, as created
        sql_execute(populated, "DELETE FROM contact WHERE id = 10")
    yaml = changed(owner=(OWNER, "owner_contact: {type: ref, to: contact, on_delete: set_null}"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    text = the_plan.render()
    assert "drop NOT NULL of deal.owner_contact_id" in text
    assert ("replace foreign key fk_deal_owner_contact_id_contact with fk_deal_owner_contact_id_contact on deal "
            "(deal.owner_contact: ON DELETE RESTRICT -> SET NULL)") in text
    assert rows(populated, DEALS) == before
    sql_execute(populated, "DELETE FROM contact WHERE id = 10")
    assert rows(populated, DEALS) == [(1, "D1", None, before[0][3]), before[1]]


def test_new_target_over_values_is_refused_without_the_flag_and_nothing_changes(populated):
    before = snapshot(populated)
    yaml = changed(account=(ACCOUNT, "account: {type: ref, to: company, on_delete: set_null}"))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    copied = " (the SQLite database is copied first)" if populated.startswith("sqlite") else ""
    assert info.value.plan.refused == [
        "contact.account now points at company instead of account, but 9 rows (ids 1, 2, 3, 5, 6 ...) "
        "hold account ids, which mean nothing for company: run 'loom migrate --allow-data-loss' to clear them"
        f"{copied}, or add a new ref field to company instead and keep this one"]
    assert snapshot(populated) == before
    planned = plan_manifest(manifest_of(yaml), database_url=populated)
    assert planned.plan.refused == info.value.plan.refused
    assert ("clear contact.account_id (ids of account, not company) (destructive: loses the values of 9 rows)"
            in planned.plan.render())


def test_new_target_with_data_loss_allowed_clears_only_the_ref_and_points_at_the_new_entity(populated):
    before = rows(populated, CONTACTS)
    deals = rows(populated, DEALS)
    yaml = changed(account=(ACCOUNT, "account: {type: ref, to: company, on_delete: cascade}"))
    manifest = manifest_of(yaml)
    the_plan = migrate_manifest(manifest, database_url=populated, allow_data_loss=True)
    assert [s.description for s in the_plan.steps] == [
        "clear contact.account_id (ids of account, not company) (destructive: loses the values of 9 rows)",
        "replace foreign key fk_contact_account_id_account with fk_contact_account_id_company on contact "
        "(contact.account: to account -> company, ON DELETE SET NULL -> CASCADE)"]
    assert rows(populated, CONTACTS) == [(i, name, None, *rest) for i, name, _account, *rest in before]
    assert rows(populated, DEALS) == deals
    assert rows(populated, "SELECT count(*) FROM account") == [(3,)]
    assert foreign_keys(populated, "contact") == [("fk_contact_account_id_company", "account_id", "company", "CASCADE")]
    assert plan_manifest(manifest, database_url=populated).plan.empty

    with pytest.raises(sa.exc.IntegrityError):  # account 3 exists, company 3 does not
        sql_execute(populated, "UPDATE contact SET account_id = 3 WHERE id = 1")
    loom = Loom.from_manifest(manifest, make_plugin_manager(), database_url=populated)
    try:  # the API takes company ids now, and a company's delete cascades to its contacts
        contact = loom.entity("contact")
        assert loom.records.update(contact, 5, {"account": 2}, Context())["account"] == 2
    finally:
        loom.close()
    sql_execute(populated, "DELETE FROM company WHERE id = 2")
    assert 5 not in [r[0] for r in rows(populated, CONTACTS)] and len(rows(populated, CONTACTS)) == 11


def test_new_target_of_an_empty_column_swaps_the_foreign_key_without_the_flag(populated):
    sql_execute(populated, "UPDATE contact SET account_id = NULL")
    before = rows(populated, CONTACTS)
    yaml = changed(account=(ACCOUNT, "account: {type: ref, to: company, on_delete: set_null}"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert "clear contact.account_id (ids of account, not company) (no row has a value to lose)" in the_plan.render()
    assert rows(populated, CONTACTS) == before
    assert foreign_keys(populated, "contact") == [("fk_contact_account_id_company", "account_id", "company",
                                                   "SET NULL")]
    sql_execute(populated, "UPDATE contact SET account_id = 2 WHERE id = 5")
    sql_execute(populated, "DELETE FROM company WHERE id = 2")
    assert rows(populated, "SELECT account_id FROM contact WHERE id = 5") == [(None,)]


def test_new_target_of_a_required_ref_with_values_is_refused_even_with_the_flag(populated):
    before = snapshot(populated)
    yaml = changed(owner=(OWNER, OWNER.replace("to: contact", "to: account")))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated, allow_data_loss=True)
    assert info.value.plan.refused == [
        "deal.owner_contact now points at account instead of contact, but 3 rows (ids 1, 2, 3) hold contact ids, "
        "which mean nothing for account, and the field is required, so they cannot be cleared: add a new ref "
        "field to account instead (and drop this one once it is no longer used), or point it back at contact"]
    assert snapshot(populated) == before


def test_new_target_of_a_self_reference_finds_the_old_key(db_url):
    tree = "parent: {type: ref, to: account, on_delete: cascade}"
    yaml = BASE.replace("      name: {type: string, required: true}\n  company:",
                        f"      name: {{type: string, required: true}}\n      {tree}\n  company:")
    migrate_manifest(manifest_of(yaml), database_url=db_url)
    the_plan = migrate_manifest(manifest_of(yaml.replace(tree, "parent: {type: ref, to: company}")),
                                database_url=db_url)
    assert ("replace foreign key fk_account_parent_id_account with fk_account_parent_id_company on account "
            "(account.parent: to account -> company, ON DELETE CASCADE -> RESTRICT)") in the_plan.render()
    assert foreign_keys(db_url, "account") == [("fk_account_parent_id_company", "parent_id", "company", "RESTRICT")]


def test_sql_of_the_plan_clears_then_replaces_the_key():
    yaml = changed(account=(ACCOUNT, "account: {type: ref, to: company, on_delete: cascade}"))
    the_plan = plan_migration(manifest_of(BASE).to_json(), manifest_of(yaml))
    postgresql = render_sql(the_plan.steps, "postgresql")
    clear = "UPDATE contact SET account_id=NULL WHERE contact.account_id IS NOT NULL;"
    drop = "ALTER TABLE contact DROP CONSTRAINT fk_contact_account_id_account;"
    add = ("ALTER TABLE contact ADD CONSTRAINT fk_contact_account_id_company FOREIGN KEY(account_id) "
           "REFERENCES company (id) ON DELETE CASCADE;")
    assert postgresql.index(clear) < postgresql.index(drop) < postgresql.index(add)
    sqlite = render_sql(the_plan.steps, "sqlite")
    assert clear.replace(";", "") in sqlite
    assert ("-- copy table contact (SQLite batch mode) to: replace foreign key fk_contact_account_id_account with "
            "fk_contact_account_id_company on contact") in sqlite


LONG_A = "a_very_long_entity_name_for_testing_things_xx"
LONG_B = "another_long_entity_name_for_testing_more_yy"
LONG_REF = "a_quite_long_reference_field_name_for_test"


def long_names(ref: str = "") -> str:
    return (f"entities:\n  {LONG_A}:\n    fields:\n      name: {{type: string}}\n"
            f"  {LONG_B}:\n    fields:\n      name: {{type: string}}\n{ref}")


def test_a_ref_added_later_with_long_names_gets_a_foreign_key_a_later_change_finds(db_url):
    migrate_manifest(manifest_of(long_names()), database_url=db_url)
    added = f"      {LONG_REF}: {{type: ref, to: {LONG_A}, on_delete: cascade}}\n"
    migrate_manifest(manifest_of(long_names(added)), database_url=db_url)  # the name is over 63 characters
    sql_execute(db_url, f"INSERT INTO {LONG_A} (name, version, created_at, updated_at) "
                        "VALUES ('a', 1, '2026-01-01', '2026-01-01')")
    sql_execute(db_url, f"INSERT INTO {LONG_B} (name, {LONG_REF}_id, version, created_at, updated_at) "
                        "VALUES ('b', 1, 1, '2026-01-01', '2026-01-01')")
    the_plan = migrate_manifest(manifest_of(long_names(added.replace("cascade", "restrict"))), database_url=db_url)
    assert any("on_delete" in step.description or "foreign key" in step.description for step in the_plan.steps)
    with pytest.raises(sa.exc.IntegrityError):  # restrict now: the parent cannot go while the child points at it
        sql_execute(db_url, f"DELETE FROM {LONG_A} WHERE id = 1")
