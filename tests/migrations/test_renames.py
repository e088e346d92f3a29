"""Field renames (``renamed_from:``): the column, and every index and constraint named after it, get
the new name; every row keeps every value; the audit trail shows older entries under the new name."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import (
    api_token,
    compile_entities,
    config_errors,
    make_loom,
    project_files,
)
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

BEFORE = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      rating: {type: enum, options: [hot, warm, cold], indexed: true}
      email: {type: email, unique: true}
      parent: {type: ref, to: account, on_delete: set_null, related_name: children}
      region: {type: string}
      notes: {type: text}
    indexes:
      - fields: [region, rating]
    unique_together:
      - [name, region]
"""
#: Every kind of column renamed at once: indexed, unique, a ref (column parent_id), one in a composite
#: index and a unique_together, and a plain one.
AFTER = (BEFORE.replace("rating: {", "temperature: {renamed_from: rating, ")
         .replace("email: {", "mail: {renamed_from: email, ")
         .replace("parent: {", "boss: {renamed_from: parent, ")
         .replace("region: {", "area: {renamed_from: region, ")
         .replace("[region, rating]", "[area, temperature]").replace("[name, region]", "[name, area]"))
COLUMNS_BEFORE = "id, name, rating, email, parent_id, region, notes, created_at, updated_at, owner, version"
COLUMNS_AFTER = "id, name, temperature, mail, boss_id, area, notes, created_at, updated_at, owner, version"


def with_field(entities_yaml: str, field_yaml: str) -> str:
    return entities_yaml.replace("      notes: {type: text}\n", f"      notes: {{type: text}}\n      {field_yaml}\n")


def errors_of(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["code"] for e in response.json()["errors"]}


def current_plan(url: str, entities_yaml: str):
    return plan_manifest(compile_entities(entities_yaml), database_url=url).plan


def schema_names(url: str) -> set[str]:
    """Every column, index and constraint name of the account table."""
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        names = {c["name"] for c in inspector.get_columns("account")}
        names |= {i["name"] for i in inspector.get_indexes("account")}
        names |= {u["name"] for u in inspector.get_unique_constraints("account")}
        names |= {f["name"] for f in inspector.get_foreign_keys("account")}
        return names
    finally:
        engine.dispose()


@pytest.fixture
def populated(db_url):
    """The BEFORE schema with 50 accounts, every other one pointing at a parent, and an update each."""
    loom = make_loom(project_files(BEFORE), db_url)
    try:
        account = loom.entity("account")
        ids = []
        for i in range(50):
            record = loom.records.create(account, {
                "name": f"Account {i}", "rating": ("hot", "warm", "cold", None)[i % 4],
                "email": f"a{i}@example.com" if i % 5 else None, "parent": ids[i // 2] if i % 2 else None,
                "region": f"r{i % 3}", "notes": f"note {i}" * (i % 3)}, Context(actor=1))
            ids.append(record["id"])
        loom.records.update(account, ids[0], {"rating": "cold"}, Context(actor=2))
    finally:
        loom.close()
    return db_url, ids


def test_rename_plan_names_every_column_index_and_constraint():
    plan = plan_migration(manifest_of(BEFORE).to_json(), manifest_of(AFTER))
    assert not plan.refused, plan.render()
    assert plan.render().splitlines() == [
        "  + rename column account.rating -> account.temperature (data kept)",
        "  + rename column account.email -> account.mail (data kept)",
        "  + rename column account.parent_id -> account.boss_id (data kept)",
        "  + rename column account.region -> account.area (data kept)",
        "  + rename foreign key fk_account_parent_id_account -> fk_account_boss_id_account on account",
        "  + rename unique constraint uq_account_email -> uq_account_mail on account",
        "  + rename unique constraint uq_account_name_region -> uq_account_name_area on account",
        "  + rename index ix_account_parent_id -> ix_account_boss_id on account",
        "  + rename index ix_account_rating -> ix_account_temperature on account",
        "  + rename index ix_account_region_rating -> ix_account_area_temperature on account",
    ]
    pg, lite = render_sql(plan.steps, "postgresql"), render_sql(plan.steps, "sqlite")
    assert "ALTER TABLE account RENAME rating TO temperature;" in pg
    assert "ALTER TABLE account RENAME COLUMN rating TO temperature;" in lite
    assert "ALTER TABLE account ADD CONSTRAINT uq_account_mail UNIQUE (mail);" in pg
    assert "-- copy table account (SQLite batch mode) to: rename foreign key" in lite
    assert "CREATE INDEX ix_account_temperature ON account (temperature);" in lite


def test_a_renamed_field_keeps_every_row_and_value_under_its_new_name(populated):
    url, ids = populated
    before = rows(url, f"SELECT {COLUMNS_BEFORE} FROM account ORDER BY id")
    assert len(before) == 50 and sum(1 for r in before if r[4] is not None) == 25
    plan = migrate_manifest(manifest_of(AFTER), database_url=url)
    assert "rename column account.rating -> account.temperature (data kept)" in plan.render()
    assert rows(url, f"SELECT {COLUMNS_AFTER} FROM account ORDER BY id") == before
    names = schema_names(url)
    assert {"temperature", "mail", "boss_id", "area", "ix_account_temperature", "ix_account_boss_id",
            "ix_account_area_temperature", "uq_account_mail", "uq_account_name_area",
            "fk_account_boss_id_account"} <= names
    assert not names & {"rating", "email", "parent_id", "region", "ix_account_rating", "uq_account_email",
                        "ix_account_region_rating", "fk_account_parent_id_account", "uq_account_name_region"}
    assert current_plan(url, AFTER).empty
    assert current_plan(url, AFTER).render() == "The database is up to date."


def test_the_api_reads_and_writes_the_new_names_and_keeps_the_constraints(populated):
    url, ids = populated
    migrate_manifest(manifest_of(AFTER), database_url=url)
    loom = make_loom(project_files(AFTER), url, migrate=False)
    try:
        with TestClient(loom.asgi()) as client:
            client.headers["Authorization"] = f"Bearer {api_token(loom)}"
            first = client.get(f"/api/accounts/{ids[1]}").json()
            assert (first["temperature"], first["mail"], first["boss"], first["area"]) == \
                ("warm", "a1@example.com", ids[0], "r1")
            assert "rating" not in first and "parent" not in first
            hot = client.get("/api/accounts", params={"filter[temperature]": "hot", "limit": 100}).json()["data"]
            assert sorted(r["id"] for r in hot) == [ids[i] for i in range(4, 50, 4)]
            changed = client.patch(f"/api/accounts/{ids[1]}", json={"temperature": "hot", "boss": ids[2]})
            assert changed.status_code == 200 and changed.json()["boss"] == ids[2]
            created = client.post("/api/accounts", json={"name": "New", "mail": "new@example.com", "boss": ids[0]})
            assert created.status_code == 201, created.text
            duplicate = client.post("/api/accounts", json={"name": "Dup", "mail": "a1@example.com"})
            assert errors_of(duplicate) == {"mail": "unique"}  # found by the constraint's new name
            assert errors_of(client.patch(f"/api/accounts/{ids[3]}", json={"boss": 999999})).keys() == {"boss"}
            assert client.patch(f"/api/accounts/{ids[3]}", json={"rating": "hot"}).status_code == 422
            children = client.get(f"/api/accounts/{ids[0]}/children").json()["data"]
            assert {c["id"] for c in children} == {created.json()["id"]}  # ids[1] has another boss now
    finally:
        loom.close()


def test_history_written_before_the_rename_shows_the_new_name(populated):
    url, ids = populated
    migrate_manifest(manifest_of(AFTER), database_url=url)
    loom = make_loom(project_files(AFTER), url, migrate=False)
    try:
        account = loom.entity("account")
        loom.records.update(account, ids[0], {"temperature": "hot"}, Context(actor=3))
        history = loom.records.history(account, ids[0], Context(), limit=10, before=None)["data"]
        assert [e["action"] for e in history] == ["update", "update", "create"]
        assert history[0]["changes"] == {"temperature": ["cold", "hot"]}
        assert history[1]["changes"] == {"temperature": ["hot", "cold"]}  # written as 'rating'
        assert history[2]["changes"] == {"name": [None, "Account 0"], "temperature": [None, "hot"],
                                         "area": [None, "r0"]}
        child = loom.records.history(account, ids[1], Context(), limit=10, before=None)["data"]
        assert child[0]["changes"]["boss"] == [None, ids[0]] and child[0]["changes"]["mail"] == [None, "a1@example.com"]
    finally:
        loom.close()
    raw = rows(url, f"SELECT changes FROM loom_audit WHERE record_id = {ids[0]} ORDER BY id")
    assert "rating" in str(raw[0][0])  # the rows stay as written


def test_renamed_from_left_in_the_config_is_harmless(populated):
    url, _ = populated
    migrate_manifest(manifest_of(AFTER), database_url=url)
    assert migrate_manifest(manifest_of(AFTER), database_url=url).empty
    assert rows(url, "SELECT count(*) FROM loom_migrations") == [(2,)]
    without = AFTER.replace("renamed_from: rating, ", "")
    assert current_plan(url, without).empty
    # a renamed_from newly added to a field the database has renames nothing, and says so
    plan = current_plan(url, without.replace("notes: {", "notes: {renamed_from: remarks, "))
    assert plan.empty and plan.notes == ["account.notes exists already: renamed_from 'remarks' renames nothing"]


def test_renamed_from_naming_no_stored_field_adds_the_field(db_url):
    migrate_manifest(manifest_of(BEFORE), database_url=db_url)
    plan = current_plan(db_url, with_field(BEFORE, "score: {type: integer, renamed_from: points}"))
    assert not plan.refused
    assert [s.description for s in plan.steps] == ["add column account.score (BIGINT, optional)"]
    assert plan.notes == ["account.score is renamed from 'points', which the database does not have: "
                          "score is added as a new field"]
    initial = plan_migration(None, manifest_of(AFTER))  # a new database: renamed_from plays no part
    assert not initial.refused and not initial.notes and "create table account" in initial.render()


@pytest.mark.parametrize("change, reason", [
    (AFTER.replace("notes: {type: text}", "memo: {type: string, renamed_from: notes}"),
     "rename account.notes -> account.memo also changes type, max_length: rename first"),
    (AFTER.replace("notes: {type: text}", "memo: {type: text, required: true, renamed_from: notes}"),
     "rename account.notes -> account.memo also changes required: rename first"),
    (AFTER.replace("mail: {renamed_from: email, type: email, unique: true}", "mail: {renamed_from: email, type: email}"),
     "rename account.email -> account.mail also changes unique"),
])
def test_a_rename_with_another_change_is_refused_and_changes_nothing(populated, change, reason):
    url, _ = populated
    before = rows(url, f"SELECT {COLUMNS_BEFORE} FROM account ORDER BY id")
    names = schema_names(url)
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(change), database_url=url)
    assert any(r.startswith(reason) for r in info.value.plan.refused), info.value.plan.refused
    assert not any("field account." in r for r in info.value.plan.refused)  # not "removed", "changed"
    assert rows(url, f"SELECT {COLUMNS_BEFORE} FROM account ORDER BY id") == before
    assert schema_names(url) == names
    assert rows(url, "SELECT count(*) FROM loom_migrations") == [(1,)]


def test_renaming_a_many_to_many_field_is_refused(db_url):
    base = with_field(BEFORE, "tags: {type: refs, to: tag}") + "  tag:\n    fields:\n      name: {type: string}\n"
    migrate_manifest(manifest_of(base), database_url=db_url)
    plan = current_plan(db_url, base.replace("tags: {", "labels: {renamed_from: tags, "))
    assert plan.refused == ["rename account.tags -> account.labels: renaming a many-to-many field (its join table) "
                            "is not supported yet; remove 'renamed_from:' and keep the old name for now"]


def test_renamed_from_that_cannot_be_a_rename_is_an_error_with_its_place():
    errors = config_errors(project_files("""
        entities:
          account:
            fields:
              name: {type: string, renamed_from: name}
              rating: {type: string}
              temperature: {type: string, renamed_from: rating}
              mail: {type: email, renamed_from: E-Mail}
              owner_name: {type: string, renamed_from: owner}
              a: {type: string, renamed_from: old}
              b: {type: string, renamed_from: old}
        """))
    assert errors.splitlines() == [
        "entities.yaml:5:42 E146 field 'account.name' is renamed from itself",
        "    hint: remove 'renamed_from:', or write the field's previous name",
        "entities.yaml:7:49 E146 field 'account.temperature' is renamed from 'rating', which is still a field of "
        "'account'",
        "    hint: remove field 'rating' (its column becomes 'temperature'), or remove 'renamed_from:' to keep both",
        "entities.yaml:8:41 E146 renamed_from 'E-Mail' of field 'account.mail' is not a field name",
        "    hint: write the previous name exactly as it was: snake_case ASCII",
        "entities.yaml:9:48 E146 field 'account.owner_name' is renamed from 'owner', which is still a field of "
        "'account'",
        "    hint: remove field 'owner' (its column becomes 'owner_name'), or remove 'renamed_from:' to keep both",
        "entities.yaml:11:39 E146 fields 'account.a' and 'account.b' are both renamed from 'old'",
        "    hint: one column can get one new name: remove one 'renamed_from:'",
        "5 errors in the config.",
    ]
